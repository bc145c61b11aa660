//! How CLI commands reach the cluster: the admin kubeconfig names the CA, the admin's client
//! certificate and the nodes' peer endpoints.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_pki::{Credential, Kubeconfig};
use flotilla_rpc::{StoreClient, Tls};

/// The `--kubeconfig` flag every cluster command takes.
#[derive(clap::Args, Clone, Debug)]
pub struct KubeconfigArg {
    /// The admin kubeconfig (default: $KUBECONFIG).
    #[arg(long, global = true, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

impl KubeconfigArg {
    pub fn load(&self) -> Result<Kubeconfig, String> {
        let path: &Path = self.kubeconfig.as_deref().ok_or(
            "no kubeconfig: pass --kubeconfig FILE or set KUBECONFIG (bootstrap writes DATA_DIR/admin.kubeconfig)",
        )?;
        Kubeconfig::load(path).map_err(|e| e.to_string())
    }

    /// A client of the first node that answers.
    pub async fn connect(&self) -> Result<(Kubeconfig, StoreClient), String> {
        let kubeconfig = self.load()?;
        let tls = tls_of(&kubeconfig);
        let mut errors = Vec::new();
        for peer in &kubeconfig.peers {
            let client =
                StoreClient::new(peer, Duration::from_secs(10), &tls).map_err(|e| e.to_string())?;
            match client.status().await {
                Ok(_) => return Ok((kubeconfig, client)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() {
            return Err("the kubeconfig names no node (no flotilla peers extension)".into());
        }
        Err(format!("no node answered: {}", errors.join("; ")))
    }
}

/// The admin's TLS credentials from a kubeconfig.
pub fn tls_of(kubeconfig: &Kubeconfig) -> Tls {
    Tls::new(
        &kubeconfig.ca_pem,
        Credential {
            cert_pem: kubeconfig.client.cert_pem.clone(),
            key_pem: kubeconfig.client.key_pem.clone(),
        },
    )
}
