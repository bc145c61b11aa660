//! A local cluster lab on one machine: each node a real `flotilla node` process in its own
//! network namespace on a shared bridge, with its own address; partitions with nftables inside
//! those namespaces. `flotilla up` and the end-to-end tests both use it.

pub mod net;
pub mod up;

pub use net::{LabError, LabNet, LAB_SUPERNET, MAX_NODES};
pub use up::{clean_pods, down, up, Up, UpConfig, UpError, KUBECONFIG_FILE, STATE_FILE};
