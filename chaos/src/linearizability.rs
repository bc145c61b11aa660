//! Linearizability: whether a history of concurrent operations, each with the instants it was
//! called and returned, can be ordered so that every operation takes effect at one point
//! between its call and its return and the object, run through that order sequentially,
//! returns what each operation returned.
//!
//! The search is Wing and Gong's, with Lowe's memoisation (as the porcupine checker does):
//! walk the calls and returns in time order; linearize a call whose step is legal from the
//! current state and start again from the first event; at a return whose operation is not
//! linearized yet, undo the last choice. A pair (set of linearized operations, state) seen
//! once is never explored again, which bounds the search. Histories are checked one key at
//! a time by the caller (a history is linearizable if and only if each key's is).
//!
//! An operation that never returned (timed out, its client crashed) may have taken effect at
//! any time after its call, or not at all: it returns "at infinity" with an unknown result.
//! Placing it after everything else is the same as it never happening.

use std::collections::HashSet;
use std::fmt::{Debug, Display};
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Clone + Debug + Display;
    type Output: Clone + Debug + Display;

    fn init(&self) -> Self::State;
    /// The state after `input` is applied to `state`, if the operation may return `output`
    /// there (`None`: its result is unknown).
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
    /// Whether the operation may change the state (a read cannot). Only such operations are
    /// needed in a witness; the others may be left out of one.
    fn changes_state(&self, input: &Self::Input, output: Option<&Self::Output>) -> bool;
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    pub client: u64,
    pub input: I,
    /// What it returned; `None` when it never did.
    pub output: Option<O>,
    /// When it was called and returned, in one order for the whole history (`ret` `None`:
    /// never).
    pub call: u64,
    pub ret: Option<u64>,
    /// Its invocation's line in the history file.
    pub line: usize,
}

impl<I: Display, O: Display> Display for Operation<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: client {} {}",
            self.line, self.client, self.input
        )?;
        match (&self.output, self.ret) {
            (Some(out), Some(r)) => {
                write!(f, " -> {out} [called at {}, returned at {r}]", self.call)
            }
            // Never, or (in a witness cut at some instant) not by then.
            (_, None) => write!(f, " -> no answer by then [called at {}]", self.call),
            (None, Some(r)) => write!(f, " -> unknown [called at {}, returned at {r}]", self.call),
        }
    }
}

/// The operations of one key, for model `M`.
pub type History<M> = Vec<Operation<<M as Model>::Input, <M as Model>::Output>>;

const NIL: usize = usize::MAX;

/// A set of operation numbers.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Whether `ops` are linearizable with respect to `model`.
pub fn linearizable<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>]) -> bool {
    linearizable_unless(model, ops, &|| false).expect("never given up")
}

/// [`linearizable`], or `None` when `give_up` (asked now and then) says so first.
pub fn linearizable_unless<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    give_up: &dyn Fn() -> bool,
) -> Option<bool> {
    // An operation that never returned and changes nothing constrains nothing.
    let ops: Vec<&Operation<M::Input, M::Output>> = ops
        .iter()
        .filter(|o| o.ret.is_some() || model.changes_state(&o.input, o.output.as_ref()))
        .collect();
    let n = ops.len();
    if n == 0 {
        return Some(true);
    }
    // Events in time order (a call before a return at the same instant: concurrent); those
    // that never returned last.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, false, i));
        events.push((o.ret.unwrap_or(u64::MAX), true, i));
    }
    events.sort_unstable_by_key(|&(at, is_return, op)| (at, is_return, op));
    // A doubly linked list of events after a head at index 2n.
    let head = 2 * n;
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    let mut partner = vec![NIL; 2 * n];
    let mut call_of = vec![NIL; n];
    let mut last = head;
    for (e, &(_, is_return, op)) in events.iter().enumerate() {
        next[last] = e;
        prev[e] = last;
        last = e;
        if is_return {
            partner[call_of[op]] = e;
        } else {
            call_of[op] = e;
        }
    }
    let is_call = |e: usize| !events[e].1;
    let op_of = |e: usize| events[e].2;

    let mut state = model.init();
    let mut linearized = Bits::new(n);
    let mut seen: HashSet<(Bits, M::State)> = HashSet::new();
    // The calls linearized, with the state before each.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut entry = next[head];
    let mut steps = 0u32;
    while next[head] != NIL {
        steps = steps.wrapping_add(1);
        if steps & 4095 == 0 && give_up() {
            return None;
        }
        if is_call(entry) {
            let op = ops[op_of(entry)];
            if let Some(after) = model.step(&state, &op.input, op.output.as_ref()) {
                let mut with = linearized.clone();
                with.set(op_of(entry));
                if seen.insert((with.clone(), after.clone())) {
                    // Take the call and its return out of the list.
                    let r = partner[entry];
                    for e in [entry, r] {
                        next[prev[e]] = next[e];
                        if next[e] != NIL {
                            prev[next[e]] = prev[e];
                        }
                    }
                    stack.push((entry, std::mem::replace(&mut state, after)));
                    linearized = with;
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A return whose operation could not be placed before it: undo the last choice.
            let Some((call, before)) = stack.pop() else {
                return Some(false);
            };
            let r = partner[call];
            for e in [r, call] {
                next[prev[e]] = e;
                if next[e] != NIL {
                    prev[next[e]] = e;
                }
            }
            linearized.clear(op_of(call));
            state = before;
            entry = next[call];
        }
    }
    Some(true)
}

/// For a history that is not linearizable: a small part of it that is not either, and so
/// shows why. First the shortest prefix in time that is not (operations that had not
/// returned by then count as never returning), then, one by one, every operation that cannot
/// change the state and without which the rest is still not linearizable is left out. Both
/// steps keep the verdict sound: a history whose prefix, or whose part without some reads,
/// cannot be linearized cannot be either. Past `deadline`, the part found so far is returned
/// (each check is exhaustive, so this takes a while on long histories).
pub fn witness<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    deadline: std::time::Instant,
) -> Vec<Operation<M::Input, M::Output>> {
    let late = || std::time::Instant::now() > deadline;
    // Proven not linearizable within the time: only then is a part taken.
    let fails = |part: &[Operation<M::Input, M::Output>]| {
        linearizable_unless(model, part, &late) == Some(false)
    };
    let prefix = |t: u64| -> Vec<Operation<M::Input, M::Output>> {
        ops.iter()
            .filter(|o| o.call <= t)
            .map(|o| {
                let mut o = o.clone();
                if o.ret.is_none_or(|r| r > t) {
                    o.ret = None;
                    o.output = None;
                }
                o
            })
            .collect()
    };
    let mut returns: Vec<u64> = ops.iter().filter_map(|o| o.ret).collect();
    returns.sort_unstable();
    // The first return after which the prefix fails (prefixes fail from some point on).
    let (mut lo, mut hi) = (0, returns.len());
    while lo < hi && !late() {
        let mid = (lo + hi) / 2;
        if fails(&prefix(returns[mid])) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut part = match returns.get(hi) {
        Some(&t) => prefix(t),
        None => ops.to_vec(),
    };
    let mut i = 0;
    while i < part.len() && !late() {
        let o = &part[i];
        if o.ret.is_some() && !model.changes_state(&o.input, o.output.as_ref()) {
            let mut without = part.clone();
            without.remove(i);
            if fails(&without) {
                part = without;
                continue;
            }
        }
        i += 1;
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Register, RegisterOp, RegisterOut};

    fn op(
        client: u64,
        input: RegisterOp,
        output: Option<RegisterOut>,
        call: u64,
        ret: Option<u64>,
    ) -> Operation<RegisterOp, RegisterOut> {
        Operation {
            client,
            input,
            output,
            call,
            ret,
            line: call as usize,
        }
    }

    use RegisterOp::{Read, Write};
    use RegisterOut::{Done, Read as Got};

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [None, Some(1)] {
            let h = [
                op(0, Write(1), Some(Done), 0, Some(3)),
                op(1, Read, Some(Got(seen)), 1, Some(2)),
            ];
            assert!(linearizable(&Register, &h), "read {seen:?}");
        }
    }

    #[test]
    fn a_stale_read_after_a_write_returned_is_caught_and_is_the_witness() {
        let h = [
            op(0, Write(1), Some(Done), 0, Some(1)),
            op(1, Read, Some(Got(Some(1))), 2, Some(3)),
            op(2, Write(2), Some(Done), 4, Some(5)),
            op(1, Read, Some(Got(Some(1))), 6, Some(7)),
            op(0, Read, Some(Got(Some(2))), 8, Some(9)),
        ];
        assert!(!linearizable(&Register, &h));
        let w = witness(
            &Register,
            &h,
            std::time::Instant::now() + std::time::Duration::from_secs(60),
        );
        // The write of 2, and the read after it that returned 1 (the earlier read and the
        // later one are not needed; the write of 1 is, for the stale value to exist).
        let lines: Vec<usize> = w.iter().map(|o| o.line).collect();
        assert_eq!(lines, [0, 4, 6], "{w:#?}");
        assert!(!linearizable(&Register, &w));
    }

    #[test]
    fn a_write_that_never_returned_may_have_happened_or_not() {
        // Its value is read later: it happened.
        let h = [
            op(0, Write(7), None, 0, None),
            op(1, Read, Some(Got(Some(7))), 5, Some(6)),
        ];
        assert!(linearizable(&Register, &h));
        // Never read: it did not (yet).
        let h = [
            op(0, Write(7), None, 0, None),
            op(1, Read, Some(Got(None)), 5, Some(6)),
        ];
        assert!(linearizable(&Register, &h));
        // But not before its call.
        let h = [
            op(1, Read, Some(Got(Some(7))), 0, Some(1)),
            op(0, Write(7), None, 2, None),
        ];
        assert!(!linearizable(&Register, &h));
    }
}
