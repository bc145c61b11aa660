//! Cluster identity: the CA, node and admin certificates, join tokens, and the files they live
//! in. Pure logic and files; no networking.

pub mod api_token;
pub mod ca;
pub mod files;
pub mod kubeconfig;
pub mod mutual;
pub mod pinned;
pub mod token;

pub use api_token::{ApiToken, ApiTokenRecord, API_TOKENS_PREFIX};
pub use ca::{Ca, CaHash, Credential, ADMINS_GROUP, NODES_GROUP, NODE_SERVER_NAME};
pub use files::NodePki;
pub use kubeconfig::Kubeconfig;
pub use token::{JoinToken, TokenRecord, TokenRejected, TOKENS_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("PEM: {0}")]
    Pem(String),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}
