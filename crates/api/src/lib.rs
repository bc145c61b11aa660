//! The Kubernetes object model as Flotilla stores and serves it: which resources exist (for
//! discovery and routing), where an object lives in the store, and label and field selectors.
//! Pure code, no I/O: the API server (issue 4) builds on it.

pub mod resources;
pub mod selector;

pub use resources::{find, store_key, store_prefix, Resource, RESOURCES};
pub use selector::{FieldSelector, LabelSelector, Requirement, SelectorError};
