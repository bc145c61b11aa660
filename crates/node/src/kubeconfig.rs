//! `flotilla kubeconfig`: a kubeconfig for kubectl (or any Kubernetes client) with the admin's
//! API bearer token instead of the client certificate, printed on stdout.

use crate::client::KubeconfigArg;

#[derive(clap::Args)]
pub struct KubeconfigArgs {
    #[command(flatten)]
    kubeconfig: KubeconfigArg,
    /// The API server to name, `https://HOST:PORT` (default: the admin kubeconfig's).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
}

pub fn run(args: KubeconfigArgs) -> Result<(), String> {
    let admin = args.kubeconfig.load()?;
    let server = args.server.unwrap_or_else(|| admin.server.clone());
    if !server.starts_with("https://") {
        return Err(format!(
            "--server {server:?}: must be an https:// URL (kubectl sends tokens only over TLS)"
        ));
    }
    let text = admin
        .token_only_json(&server)
        .ok_or("this kubeconfig has no API token (it was written by a version without tokens)")?;
    println!("{text}");
    Ok(())
}
