//! `flotilla snapshot save FILE` and `flotilla snapshot restore FILE --data-dir D`: backups of
//! the cluster state and new clusters from them (see `flotilla_raft::restore`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_rpc::StoreClient;

use crate::client::{tls_of, KubeconfigArg};

#[derive(clap::Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(clap::Subcommand)]
enum SnapshotCommand {
    /// Save a consistent snapshot of the cluster state to FILE (admin credentials). It holds
    /// every write acknowledged before the command started.
    Save(SaveArgs),
    /// Make a new single-node cluster's data dir from a snapshot file; start it with
    /// `flotilla node --data-dir D` and join other nodes to it as usual.
    Restore(RestoreArgs),
}

#[derive(clap::Args)]
struct SaveArgs {
    /// Where to write the snapshot (written beside it first, renamed when verified).
    file: PathBuf,
    /// The node to take it from (its name, as `flotilla members` shows it; default: the
    /// first node of the kubeconfig that answers).
    #[arg(long)]
    node: Option<String>,
    /// How long the transfer may take.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    kubeconfig: KubeconfigArg,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The snapshot file (from `flotilla snapshot save`).
    file: PathBuf,
    /// The new node's data dir; it must not exist or be empty.
    #[arg(long)]
    data_dir: PathBuf,
    /// The new node's name.
    #[arg(long)]
    name: String,
    /// The IP address other nodes will reach it at (as `flotilla node --advertise`).
    #[arg(long)]
    advertise: IpAddr,
    /// Its peer port (as `flotilla node --peer-port`).
    #[arg(long, default_value_t = 7443)]
    peer_port: u16,
    /// Its gossip port (as `flotilla node --gossip-port`; 0: the peer port's number).
    #[arg(long, default_value_t = 7946)]
    gossip_port: u16,
}

pub async fn run(args: SnapshotArgs) -> Result<(), String> {
    match args.command {
        SnapshotCommand::Save(a) => save(a).await,
        SnapshotCommand::Restore(a) => restore(a),
    }
}

async fn save(args: SaveArgs) -> Result<(), String> {
    let (kubeconfig, first) = args.kubeconfig.connect().await?;
    let client = match &args.node {
        None => StoreClient::new(first.addr(), args.timeout, &tls_of(&kubeconfig)),
        Some(name) => {
            let status = first.status().await.map_err(|e| e.to_string())?;
            let member = status
                .members
                .iter()
                .find(|m| &m.name == name)
                .ok_or_else(|| format!("--node {name}: no such member"))?;
            StoreClient::new(&member.addr, args.timeout, &tls_of(&kubeconfig))
        }
    }
    .map_err(|e| e.to_string())?;
    let dir = match args.file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.partial",
        args.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "snapshot".into())
    ));
    let result = async {
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        let bytes = client
            .save_snapshot(&mut out)
            .await
            .map_err(|e| format!("the snapshot did not arrive: {e}"))?;
        out.sync_all()
            .await
            .map_err(|e| format!("cannot sync {}: {e}", tmp.display()))?;
        let verify = tmp.clone();
        let (revision, keys) =
            tokio::task::spawn_blocking(move || flotilla_raft::verify_snapshot(&verify))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("the received snapshot does not verify: {e}"))?;
        std::fs::rename(&tmp, &args.file)
            .map_err(|e| format!("cannot move the snapshot to {}: {e}", args.file.display()))?;
        Ok::<_, String>((bytes, revision, keys))
    }
    .await;
    match result {
        Ok((bytes, revision, keys)) => {
            println!(
                "saved the cluster state at revision {revision} ({keys} keys, {bytes} bytes) to {}",
                args.file.display()
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn restore(args: RestoreArgs) -> Result<(), String> {
    let restored = flotilla_raft::restore(&flotilla_raft::RestoreConfig {
        file: args.file.clone(),
        data_dir: args.data_dir.clone(),
        name: args.name.clone(),
        advertise: args.advertise,
        peer_port: args.peer_port,
        gossip_port: args.gossip_port,
    })
    .map_err(|e| e.to_string())?;
    println!(
        "restored revision {} ({} keys) into {} as node {} of the new cluster {}; start it with:\n  flotilla node --name {} --data-dir {} --advertise {}",
        restored.revision,
        restored.keys,
        args.data_dir.display(),
        args.name,
        restored.cluster_id,
        args.name,
        args.data_dir.display(),
        args.advertise,
    );
    Ok(())
}
