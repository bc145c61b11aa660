//! `flotilla-chaos`: the failover harness (DESIGN.md §6). This far, the checker of recorded
//! histories: [`history`] reads Jepsen's register logs and key-value histories,
//! [`linearizability`] decides whether they are linearizable (a Wing–Gong–Lowe search with
//! memoised states, one key at a time) and, when not, finds a small set of operations that
//! shows it; [`models`] are the objects the operations act on.

pub mod check;
pub mod history;
pub mod linearizability;
pub mod models;
pub mod run;
