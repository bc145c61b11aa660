//! `flotilla status` and `flotilla members`: the cluster as its leader sees it.

use std::time::Duration;

use std::collections::BTreeMap;

use flotilla_controllers::nodes::{ready_status, NODES_PREFIX};
use flotilla_rpc::{pb, StoreClient, Tls};
use serde::Serialize;

use crate::client::KubeconfigArg;

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    kubeconfig: KubeconfigArg,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Serialize)]
struct Summary {
    cluster_id: String,
    leader: Option<String>,
    term: u64,
    voters: usize,
    members: Vec<Row>,
}

#[derive(Serialize)]
struct Row {
    name: String,
    id: u64,
    address: String,
    /// leader, voter or learner.
    role: &'static str,
    /// Milliseconds since the member last answered the leader.
    last_contact_ms: Option<u64>,
    /// The last log index the leader knows the member has.
    applied: Option<u64>,
    /// alive, dead or unknown, as the leader's gossip sees it.
    gossip: String,
    /// How long the leader's gossip has seen it dead.
    down_ms: Option<u64>,
    /// The Node object's Ready condition (True, Unknown), if it has registered.
    ready: Option<String>,
}

/// Asks any node, then the leader it names (which alone knows replication progress), and
/// reads the Node objects' Ready conditions.
async fn leader_view(
    args: &KubeconfigArg,
) -> Result<(pb::StatusResponse, BTreeMap<String, String>), String> {
    let (kubeconfig, client) = args.connect().await?;
    let ready: BTreeMap<String, String> = client
        .list_all(NODES_PREFIX, false)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|(_, r)| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).ok()?;
            let name = v["metadata"]["name"].as_str()?.to_string();
            Some((name, ready_status(&v)?.to_string()))
        })
        .collect();
    Ok((leader_status(&kubeconfig, &client).await?, ready))
}

async fn leader_status(
    kubeconfig: &flotilla_pki::Kubeconfig,
    client: &StoreClient,
) -> Result<pb::StatusResponse, String> {
    let first = client.status().await.map_err(|e| e.to_string())?;
    let Some(leader) = first.leader_id.filter(|id| *id != first.node_id) else {
        return Ok(first);
    };
    let Some(member) = first.members.iter().find(|m| m.id == leader) else {
        return Ok(first);
    };
    let tls = Tls::new(&kubeconfig.ca_pem, kubeconfig.client.clone());
    let leader_client =
        StoreClient::new(&member.addr, Duration::from_secs(10), &tls).map_err(|e| e.to_string())?;
    // An unreachable leader still leaves the first node's view, without progress figures.
    Ok(leader_client.status().await.unwrap_or(first))
}

fn summary((status, ready): (pb::StatusResponse, BTreeMap<String, String>)) -> Summary {
    let leader_id = status.leader_id;
    let mut members: Vec<Row> = status
        .members
        .into_iter()
        .map(|m| Row {
            role: if Some(m.id) == leader_id {
                "leader"
            } else if m.voter {
                "voter"
            } else {
                "learner"
            },
            ready: ready.get(&m.name).cloned(),
            name: m.name,
            id: m.id,
            address: m.addr,
            last_contact_ms: m.last_contact_ms,
            applied: m.matched,
            gossip: m.gossip.clone(),
            down_ms: m.down_ms,
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Summary {
        cluster_id: status.cluster_id,
        leader: members
            .iter()
            .find(|m| m.role == "leader")
            .map(|m| m.name.clone()),
        term: status.term,
        voters: members.iter().filter(|m| m.role != "learner").count(),
        members,
    }
}

fn print_members(rows: &[Row]) {
    println!(
        "{:<16} {:<22} {:<8} {:<12} {:<8} {:>13} {:>10}",
        "NAME", "ADDRESS", "ROLE", "GOSSIP", "READY", "LAST-CONTACT", "APPLIED"
    );
    for r in rows {
        let contact = r
            .last_contact_ms
            .map_or("-".to_string(), |ms| format!("{ms}ms"));
        let applied = r.applied.map_or("-".to_string(), |a| a.to_string());
        let gossip = match r.down_ms {
            Some(ms) => format!("dead {:.1}s", ms as f64 / 1000.0),
            None => r.gossip.clone(),
        };
        println!(
            "{:<16} {:<22} {:<8} {:<12} {:<8} {:>13} {:>10}",
            r.name,
            r.address,
            r.role,
            gossip,
            r.ready.as_deref().unwrap_or("-"),
            contact,
            applied
        );
    }
}

pub async fn status(args: StatusArgs) -> Result<(), String> {
    let s = summary(leader_view(&args.kubeconfig).await?);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&s).expect("serialises")),
        Output::Table => {
            println!("cluster  {}", s.cluster_id);
            println!(
                "leader   {} (term {})",
                s.leader.as_deref().unwrap_or("<none>"),
                s.term
            );
            println!("voters   {} of {} members", s.voters, s.members.len());
            println!();
            print_members(&s.members);
        }
    }
    Ok(())
}

pub async fn members(args: StatusArgs) -> Result<(), String> {
    let s = summary(leader_view(&args.kubeconfig).await?);
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&s.members).expect("serialises")
        ),
        Output::Table => print_members(&s.members),
    }
    Ok(())
}
