//! The end-to-end tests' library: the cluster builder lives in `flotilla-testkit`, shared with
//! the benchmarks and the chaos harness.

pub use flotilla_testkit::*;
