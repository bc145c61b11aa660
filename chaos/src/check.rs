//! `flotilla-chaos check`: a recorded history's verdict, key by key.

use crate::history::{self, ParseError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::linearizability::{linearizable_unless, witness, History, Model};
use crate::models::{KvKey, Register};

/// The formats `check` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Jepsen's register log (`INFO  jepsen.util - PROCESS TYPE F VALUE`).
    Jepsen,
    /// Key-value operations in EDN, one map per line.
    Kv,
    /// Integer registers in EDN, one per key (what `flotilla-chaos run` records).
    Register,
}

/// What a check found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub operations: usize,
    pub keys: usize,
    /// The first key whose operations are not linearizable, with a witness (each operation
    /// as text, in call order).
    pub violation: Option<(String, Vec<String>)>,
}

fn check_keys<M>(model: &M, keys: Vec<(String, History<M>)>, witness_time: Duration) -> Verdict
where
    M: Model + Sync,
    M::Input: Send + Sync,
    M::Output: Send + Sync,
{
    let operations = keys.iter().map(|(_, ops)| ops.len()).sum();
    let count = keys.len();
    // Every key at once, as porcupine does: the first that fails stops the others (a key
    // that is not linearizable may take long to prove so, another one little).
    let stop = AtomicBool::new(false);
    let failed: Mutex<Option<usize>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for (i, (_, ops)) in keys.iter().enumerate() {
            let (stop, failed) = (&stop, &failed);
            scope.spawn(move || {
                let give_up = || stop.load(Ordering::Relaxed);
                if linearizable_unless(model, ops, &give_up) == Some(false) {
                    stop.store(true, Ordering::Relaxed);
                    failed.lock().expect("the failed key").get_or_insert(i);
                }
            });
        }
    });
    let failed = failed.into_inner().expect("the failed key");
    let violation = failed.map(|i| {
        let (key, ops) = &keys[i];
        let mut w = witness(model, ops, Instant::now() + witness_time);
        w.sort_by_key(|o| o.call);
        (key.clone(), w.iter().map(ToString::to_string).collect())
    });
    Verdict {
        operations,
        keys: count,
        violation,
    }
}

/// Checks the history `text` in `format`, spending at most `witness_time` on making the
/// witness of a violation small.
pub fn check(format: Format, text: &str, witness_time: Duration) -> Result<Verdict, ParseError> {
    Ok(match format {
        Format::Jepsen => check_keys(
            &Register,
            vec![("register".into(), history::jepsen(text)?)],
            witness_time,
        ),
        Format::Kv => check_keys(
            &KvKey,
            history::kv(text)?.into_iter().collect(),
            witness_time,
        ),
        Format::Register => check_keys(
            &Register,
            history::register(text)?.into_iter().collect(),
            witness_time,
        ),
    })
}
