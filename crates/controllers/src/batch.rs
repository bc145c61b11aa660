//! Many independent writes in few Raft entries. A control loop that makes 500 pods (or binds
//! them) has 500 writes that need not be atomic together; each costs a log entry on every
//! member (append, replicate, apply, answer), which at that count costs more than the writes
//! themselves. [`propose_all`] packs consecutive writes into batches of at most [`MAX_OPS`]
//! operations and [`MAX_BYTES`], each one atomic command, and proposes the batches
//! concurrently. A batch refused because of one of its writes (a pod that changed, a name taken)
//! is proposed again without that write, which gets the refusal as its own answer: each write
//! ends as if it had been proposed alone.

use flotilla_store::{Command, Op, Proposer, Revision, StoreError};

/// Operations in one batch at most.
pub const MAX_OPS: usize = 64;
/// Bytes of keys and values in one batch at most: a follower catching up receives up to
/// 1,000 entries in one message, which must stay under the transport's 64 MiB.
pub const MAX_BYTES: usize = 48 * 1024;

fn size(command: &Command) -> usize {
    command
        .ops
        .iter()
        .map(|op| match op {
            Op::Create { key, value } | Op::Update { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
        })
        .sum()
}

/// Groups `commands` (in order) into runs whose ops and bytes fit in one batch; a command too
/// large for any batch is a run of its own.
fn runs(commands: &[Command]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut ops, mut bytes) = (0, 0, 0);
    for (i, c) in commands.iter().enumerate() {
        let (o, b) = (c.ops.len(), size(c));
        if i > start && (ops + o > MAX_OPS || bytes + b > MAX_BYTES) {
            runs.push(start..i);
            (start, ops, bytes) = (i, 0, 0);
        }
        ops += o;
        bytes += b;
    }
    if start < commands.len() {
        runs.push(start..commands.len());
    }
    runs
}

/// The key a refusal names, if it names one.
fn refused_key(e: &StoreError) -> Option<&str> {
    match e {
        StoreError::AlreadyExists { key }
        | StoreError::NotFound { key }
        | StoreError::Conflict { key, .. } => Some(key),
        _ => None,
    }
}

/// Proposes `commands` (each a write independent of the others) in batches; each one's answer,
/// in order.
pub async fn propose_all(
    proposer: &dyn Proposer,
    commands: Vec<Command>,
) -> Vec<Result<Revision, StoreError>> {
    let batches = runs(&commands).into_iter().map(|range| {
        let batch: Vec<Command> = commands[range].to_vec();
        propose_batch(proposer, batch)
    });
    futures::future::join_all(batches)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One batch: proposed whole; on a refusal naming one of its writes, again without it.
async fn propose_batch(
    proposer: &dyn Proposer,
    commands: Vec<Command>,
) -> Vec<Result<Revision, StoreError>> {
    let mut answers: Vec<Option<Result<Revision, StoreError>>> = vec![None; commands.len()];
    loop {
        let pending: Vec<usize> = (0..commands.len())
            .filter(|i| answers[*i].is_none())
            .collect();
        if pending.is_empty() {
            break;
        }
        let ops: Vec<Op> = pending
            .iter()
            .flat_map(|i| commands[*i].ops.iter().cloned())
            .collect();
        match proposer.propose(Command::batch(ops)).await {
            Ok(revision) => {
                for i in pending {
                    answers[i] = Some(Ok(revision));
                }
            }
            Err(e) => {
                let culprit = refused_key(&e).and_then(|key| {
                    pending
                        .iter()
                        .copied()
                        .find(|i| commands[*i].ops.iter().any(|op| op.key() == key))
                });
                match culprit {
                    // Alone, it would have been refused the same way.
                    Some(i) if pending.len() > 1 => answers[i] = Some(Err(e)),
                    // Nothing to single out (no leader, a timeout): every write gets the error.
                    _ => {
                        for i in pending {
                            answers[i] = Some(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }
    answers
        .into_iter()
        .map(|a| a.expect("every write answered"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::{Engine, MemoryStore};

    fn create(key: &str) -> Command {
        Command::create(key, b"v".to_vec())
    }

    #[test]
    fn runs_respect_both_limits_and_keep_order() {
        let small: Vec<Command> = (0..150).map(|i| create(&format!("/k/{i}"))).collect();
        let r = runs(&small);
        assert_eq!(r, vec![0..64, 64..128, 128..150]);
        let big = Command::create("/big", vec![0u8; MAX_BYTES + 1]);
        let mixed = vec![create("/a"), big.clone(), create("/b")];
        assert_eq!(runs(&mixed), vec![0..1, 1..2, 2..3]);
        assert!(runs(&[]).is_empty());
    }

    #[tokio::test]
    async fn each_write_ends_as_if_proposed_alone() {
        let store = MemoryStore::new(100);
        store.propose(create("/k/taken")).await.unwrap();
        let (_, taken) = store.get("/k/taken").unwrap();
        let stale = Command::update(
            "/k/taken",
            b"x".to_vec(),
            Some(taken.unwrap().mod_revision + 7),
        );
        let commands = vec![
            create("/k/1"),
            create("/k/taken"),
            create("/k/2"),
            stale,
            create("/k/3"),
        ];
        let answers = propose_all(&store, commands).await;
        assert!(answers[0].is_ok() && answers[2].is_ok() && answers[4].is_ok());
        assert!(matches!(answers[1], Err(StoreError::AlreadyExists { .. })));
        assert!(matches!(answers[3], Err(StoreError::Conflict { .. })));
        // The others went in together, in one write.
        assert_eq!(answers[0].as_ref().unwrap(), answers[4].as_ref().unwrap());
        for k in ["/k/1", "/k/2", "/k/3"] {
            assert!(store.get(k).unwrap().1.is_some(), "{k}");
        }
        assert_eq!(store.get("/k/taken").unwrap().1.unwrap().value, b"v");
    }
}
