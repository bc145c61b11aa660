//! The Kubernetes object model as Flotilla stores and serves it: which resources exist (for
//! discovery and routing), where an object lives in the store, label and field selectors, and
//! the three PATCH formats, and the validation shared by every resource.
//! Pure code, no I/O: the API server (issue 4) builds on it.

pub mod cluster;
pub mod deletion;
pub mod kinds;
pub mod meta;
pub mod patch;
pub mod quantity;
pub mod resources;
pub mod selector;
pub mod services;
pub mod validation;

pub use patch::{json_patch, merge_patch, strategic_merge_patch, PatchError};
pub use resources::{find, find_kind, store_key, store_prefix, Resource, RESOURCES};
pub use selector::{FieldSelector, LabelSelector, Requirement, SelectorError};
pub use validation::FieldError;
