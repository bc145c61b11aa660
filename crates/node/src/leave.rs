//! `flotilla leave NODE`: a node leaves the cluster for good.

use std::time::Duration;

use flotilla_rpc::StoreClient;

use crate::client::{tls_of, KubeconfigArg};

#[derive(clap::Args)]
pub struct LeaveArgs {
    /// The node that leaves (its name, as `flotilla members` shows it).
    node: String,
    #[command(flatten)]
    kubeconfig: KubeconfigArg,
}

pub async fn run(args: LeaveArgs) -> Result<(), String> {
    let (kubeconfig, client) = args.kubeconfig.connect().await?;
    let status = client.status().await.map_err(|e| e.to_string())?;
    let Some(member) = status.members.iter().find(|m| m.name == args.node) else {
        let names: Vec<&str> = status.members.iter().map(|m| m.name.as_str()).collect();
        return Err(format!(
            "no member named {:?}; the members are {}",
            args.node,
            names.join(", ")
        ));
    };
    let node = StoreClient::new(&member.addr, Duration::from_secs(30), &tls_of(&kubeconfig))
        .map_err(|e| e.to_string())?;
    node.leave()
        .await
        .map_err(|e| format!("{} did not leave: {e}", args.node))?;
    println!(
        "{} left the cluster: it is no longer a member and its process exits",
        args.node
    );
    Ok(())
}
