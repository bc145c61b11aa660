//! The node agent (the kubelet's job): it runs the pods bound to its node and reports their
//! status. Its decisions are pure functions of the pod's spec, what the runtime observed, what
//! it remembers and the time ([`plan`], [`status`], [`restart`], [`spec`], [`env`],
//! [`volumes::content`]), unit-tested without a runtime; [`agent`] drives
//! `flotilla_runtime::PodRuntime` with them.

pub mod agent;
pub mod env;
pub mod images;
pub mod metrics;
pub mod network;
pub mod node_status;
pub mod plan;
pub mod probe;
pub mod report;
pub mod resources;
pub mod restart;
pub mod spec;
pub mod status;
pub mod streams;
pub mod volumes;

pub use agent::{Agent, Config};
