//! The node agent: it runs the pods bound to its node and reports their status (issue 15).
//! Its decisions are pure functions of the pod's spec, what the runtime observed and the time,
//! unit-tested without a runtime; the loops around them drive `flotilla_runtime::PodRuntime`.
//!
//! So far: when a container that ended is started again ([`restart`]).

pub mod restart;
