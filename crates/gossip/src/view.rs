//! This node's view of its peers, kept from memberlist's events (memberlist itself does not say
//! whether a node that is gone failed or left). Pure: the time is passed in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use crate::meta::NodeMeta;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Stopped answering: declared dead by the failure detector.
    Dead,
    /// Said goodbye.
    Left,
}

impl Liveness {
    pub fn as_str(&self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Left => "left",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// The gossip id (the Raft id in hex).
    pub id: String,
    pub addr: SocketAddr,
    pub meta: NodeMeta,
    pub liveness: Liveness,
    /// When `liveness` last changed, by this node's clock.
    pub since: Instant,
}

/// Every peer this node has heard of, by gossip id.
pub type View = Vec<PeerView>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A peer joined, or came back.
    Joined(PeerView),
    /// A peer's metadata changed.
    Updated(PeerView),
    /// A peer stopped answering.
    Failed(PeerView),
    /// A peer left gracefully.
    Left(PeerView),
}

impl Event {
    pub fn peer(&self) -> &PeerView {
        match self {
            Event::Joined(p) | Event::Updated(p) | Event::Failed(p) | Event::Left(p) => p,
        }
    }
}

/// What memberlist reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Raw {
    Join,
    Update,
    Leave,
}

#[derive(Default)]
pub(crate) struct Tracker {
    peers: BTreeMap<String, PeerView>,
}

impl Tracker {
    pub fn apply(
        &mut self,
        raw: Raw,
        id: &str,
        addr: SocketAddr,
        meta: NodeMeta,
        now: Instant,
    ) -> Event {
        let previous = self.peers.get(id).cloned();
        let was = previous.as_ref().map(|p| p.liveness);
        let liveness = match raw {
            Raw::Join | Raw::Update => Liveness::Alive,
            // A node that announced it was leaving, and is now gone, left; one that just went
            // silent failed.
            Raw::Leave => {
                let announced = meta.leaving || previous.as_ref().is_some_and(|p| p.meta.leaving);
                if announced {
                    Liveness::Left
                } else {
                    Liveness::Dead
                }
            }
        };
        let since = match previous {
            Some(p) if p.liveness == liveness => p.since,
            _ => now,
        };
        let peer = PeerView {
            id: id.to_string(),
            addr,
            meta,
            liveness,
            since,
        };
        self.peers.insert(id.to_string(), peer.clone());
        match (raw, liveness) {
            (Raw::Update, _) if was == Some(Liveness::Alive) => Event::Updated(peer),
            (Raw::Join | Raw::Update, _) => Event::Joined(peer),
            (Raw::Leave, Liveness::Left) => Event::Left(peer),
            (Raw::Leave, _) => Event::Failed(peer),
        }
    }

    pub fn view(&self) -> View {
        self.peers.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta(name: &str, leaving: bool) -> NodeMeta {
        NodeMeta {
            name: name.into(),
            raft_id: 1,
            peer_addr: "127.0.0.1:7443".into(),
            role: String::new(),
            leaving,
        }
    }

    #[test]
    fn silence_is_a_failure_and_a_goodbye_is_a_leave() {
        let addr: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut t = Tracker::default();
        assert!(matches!(
            t.apply(Raw::Join, "a", addr, meta("a", false), t0),
            Event::Joined(_)
        ));
        match t.apply(Raw::Leave, "a", addr, meta("a", false), t1) {
            Event::Failed(p) => assert_eq!((p.liveness, p.since), (Liveness::Dead, t1)),
            other => panic!("{other:?}"),
        }
        // Back again.
        assert!(matches!(
            t.apply(Raw::Join, "a", addr, meta("a", false), t1),
            Event::Joined(_)
        ));

        t.apply(Raw::Join, "b", addr, meta("b", false), t0);
        assert!(matches!(
            t.apply(Raw::Update, "b", addr, meta("b", true), t0),
            Event::Updated(_)
        ));
        // memberlist's leave event may carry the old metadata: the flag seen before counts.
        match t.apply(Raw::Leave, "b", addr, meta("b", false), t1) {
            Event::Left(p) => assert_eq!(p.liveness, Liveness::Left),
            other => panic!("{other:?}"),
        }
        let view = t.view();
        assert_eq!(view.len(), 2);
        assert_eq!(view[0].liveness, Liveness::Alive);
        assert_eq!(view[0].since, t1);
    }
}
