//! The admin's credentials, written by the node that holds the CA key (the one that
//! bootstrapped): a kubeconfig with an admin client certificate and API token, and a first
//! join token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_pki::files::{load_ca, write_private};
use flotilla_pki::{ApiToken, ApiTokenRecord, JoinToken, Kubeconfig, ADMINS_GROUP};
use flotilla_raft::RaftNode;
use flotilla_store::Proposer;

/// How long the bootstrap token stays valid (as `kubeadm init`'s).
pub const BOOTSTRAP_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.kubeconfig")
}

pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("join-token")
}

/// Writes the admin kubeconfig and a first join token if this node holds the CA key and they
/// are not there yet (so a bootstrap that crashed half-way completes on restart). Returns the
/// token when it was created now.
pub async fn ensure_admin_credentials(
    node: &RaftNode,
    data_dir: &Path,
    api: std::net::SocketAddr,
) -> Result<Option<JoinToken>, String> {
    let Some(ca) = load_ca(data_dir).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let path = kubeconfig_path(data_dir);
    if path.exists() {
        return Ok(None);
    }
    let token = node
        .create_token(ca.hash(), Some(BOOTSTRAP_TOKEN_TTL.as_secs()), "bootstrap")
        .await
        .map_err(|e| e.to_string())?;
    write_private(&token_path(data_dir), format!("{token}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    // The admin's API bearer token; only its hash is in the cluster state.
    let api_token = ApiToken::generate();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let record = ApiTokenRecord::new(&api_token, "admin", &[ADMINS_GROUP], now);
    node.propose(flotilla_store::Command::create(
        ApiTokenRecord::key(&api_token.id),
        record.to_json(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    let kubeconfig = Kubeconfig {
        server: format!("https://{api}"),
        peers: vec![node.addr.clone()],
        ca_pem: ca.cert_pem().to_string(),
        user: "admin".into(),
        client: ca
            .issue_client("admin", &[ADMINS_GROUP])
            .map_err(|e| e.to_string())?,
        token: Some(api_token.to_string()),
    };
    // Last: its presence means everything above is done.
    kubeconfig.save(&path).map_err(|e| e.to_string())?;
    Ok(Some(token))
}
