//! Three gossip members on loopback with real QUIC and certificates from a test CA: they find
//! each other, tell a silent member from one that says goodbye, and refuse a stranger.

use std::time::Duration;

use flotilla_gossip::{Gossip, Liveness, Membership};
use flotilla_pki::Ca;
use flotilla_util::wait_until;

mod common;
use common::member;

async fn liveness_of(observer: &Gossip, name: &str, want: Liveness) -> bool {
    wait_until(Duration::from_secs(15), || {
        let view = observer.view();
        async move {
            view.iter()
                .any(|p| p.meta.name == name && p.liveness == want)
                .then_some(())
        }
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_find_each_other_and_tell_failure_from_leave() {
    let ca = Ca::generate("gossip-test").unwrap();
    let a = member(&ca, 1).await;
    let b = member(&ca, 2).await;
    let c = member(&ca, 3).await;
    b.join(&[a.addr()]).await.unwrap();
    c.join(&[a.addr()]).await.unwrap();
    for observer in [&a, &b, &c] {
        for name in ["g1", "g2", "g3"] {
            assert!(
                liveness_of(observer, name, Liveness::Alive).await,
                "{name} not alive"
            );
        }
    }
    let seen = a.view().into_iter().find(|p| p.meta.name == "g2").unwrap();
    assert_eq!(seen.meta.raft_id, 2);
    assert_eq!(seen.addr, b.addr());

    // A role change spreads in the metadata.
    b.set_role("voter").await.unwrap();
    let role_seen = wait_until(Duration::from_secs(15), || {
        let view = c.view();
        async move {
            view.iter()
                .any(|p| p.meta.name == "g2" && p.meta.role == "voter")
                .then_some(())
        }
    })
    .await;
    assert!(role_seen.is_some(), "g3 never saw g2's new role");

    // Silence: the others declare it dead.
    let mut events = a.subscribe();
    c.shutdown().await;
    assert!(
        liveness_of(&a, "g3", Liveness::Dead).await,
        "g3 not declared dead"
    );
    assert!(liveness_of(&b, "g3", Liveness::Dead).await);
    let mut failed = false;
    while let Ok(e) = events.try_recv() {
        failed |= matches!(e, flotilla_gossip::Event::Failed(ref p) if p.meta.name == "g3");
    }
    assert!(failed, "no Failed event for g3");

    // A goodbye: seen as left, not dead.
    b.leave(Duration::from_secs(2)).await;
    assert!(
        liveness_of(&a, "g2", Liveness::Left).await,
        "g2 not seen as left"
    );

    // A member with a certificate from another CA cannot join.
    let other = Ca::generate("stranger").unwrap();
    let stranger = member(&other, 9).await;
    assert!(stranger.join(&[a.addr()]).await.is_err());
    assert!(!a.view().iter().any(|p| p.meta.name == "g9"));
    stranger.shutdown().await;
    a.shutdown().await;
}
