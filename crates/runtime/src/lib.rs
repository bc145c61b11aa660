//! The local runtime: containers from OCI bundles or images, in new namespaces and cgroups,
//! with their lifecycle (create, start, state, kill, delete, run), logs and exec; pod
//! sandboxes (shared namespaces, veth, address) and the image store. Every system call goes
//! through `flotilla-sys`.

pub mod cgroups;
pub mod container;
mod exec;
mod exit;
pub mod gc;
pub mod images;
pub mod ingest;
pub mod init;
pub mod ipam;
pub mod layers;
pub mod logs;
pub mod mounts;
pub mod net;
pub mod nft;
pub mod pod;
pub mod registry;
pub mod sandbox;
pub mod shim;

pub use container::{CreateOptions, Exit, Runtime, State, Status};
pub use pod::{
    ContainerRequest, ContainerState, Ended, ExecOutput, FakeRuntime, NodeNetwork, PodDns,
    PodRuntime, ProcessRuntime, SandboxRequest,
};
pub use sandbox::{Sandbox, SandboxConfig};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the runtime needs CAP_SYS_ADMIN to create namespaces and mount file systems: run it as root")]
    Privilege,
    #[error("invalid spec: {0}")]
    Spec(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("container setup failed: {0}")]
    Setup(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("sandbox {0} does not exist")]
    NoSandbox(String),
    #[error("sandbox {0} already exists")]
    SandboxExists(String),
    #[error("{0}")]
    State(String),
    #[error("image: {0}")]
    Image(String),
    #[error(transparent)]
    Sys(#[from] flotilla_sys::SysError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
