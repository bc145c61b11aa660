//! `flotilla up`: a local cluster on this machine, each node in its own network namespace.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct UpArgs {
    /// How many nodes to start.
    #[arg(long, default_value_t = 3, conflicts_with = "down")]
    nodes: usize,
    /// Where the lab keeps its nodes' data, logs and the admin kubeconfig.
    #[arg(long, default_value = ".flotilla")]
    dir: PathBuf,
    /// Stop the lab in --dir and remove its namespaces, bridge and files (also after a crash).
    #[arg(long)]
    down: bool,
    /// An extra flag for every node (repeatable): `--node-arg=--stabilization=5s`.
    #[arg(long = "node-arg", value_name = "FLAG", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// An image archive (OCI or `docker save`) for every node's image store (repeatable):
    /// `--image busybox=busybox-oci.tar`.
    #[arg(long = "image", value_name = "NAME=ARCHIVE", value_parser = parse_image)]
    images: Vec<(String, PathBuf)>,
}

fn parse_image(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        .ok_or_else(|| format!("expected NAME=ARCHIVE, got {s:?}"))?;
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    Ok((name.to_string(), path))
}

pub async fn run(args: UpArgs) -> Result<(), String> {
    if args.down {
        return match flotilla_lab::down(&args.dir)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(n) => {
                println!(
                    "stopped {n} nodes and removed the lab in {}",
                    args.dir.display()
                );
                Ok(())
            }
            None => {
                println!("no lab in {}: nothing to stop", args.dir.display());
                Ok(())
            }
        };
    }
    let flotilla =
        std::env::current_exe().map_err(|e| format!("cannot find the flotilla binary: {e}"))?;
    eprintln!(
        "starting {} nodes in network namespaces under {} ...",
        args.nodes,
        args.dir.display()
    );
    let up = flotilla_lab::up(flotilla_lab::UpConfig {
        nodes: args.nodes,
        dir: args.dir.clone(),
        flotilla,
        node_args: args.node_args,
        images: args.images,
    })
    .await
    .map_err(|e| e.to_string())?;
    println!(
        "Flotilla is up: {} nodes on bridge {}, {} voters, leader {}.",
        up.nodes.len(),
        up.bridge,
        up.voters,
        up.leader.as_deref().unwrap_or("(electing)")
    );
    for (name, addr) in &up.nodes {
        println!("  {name:<6} {addr:<15} log {}/{name}.log", up.dir.display());
    }
    println!();
    println!("  export KUBECONFIG={}", up.kubeconfig.display());
    println!("  flotilla status            # leader, voters, Ready");
    println!("  flotilla token create      # a token for another node to join");
    println!(
        "  flotilla up --down --dir {}   # stop and remove it all",
        up.dir.display()
    );
    Ok(())
}
