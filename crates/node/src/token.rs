//! `flotilla token create|list|revoke`: join tokens, stored in the cluster.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use flotilla_pki::{CaHash, JoinToken, TokenRecord, TOKENS_PREFIX};

use crate::client::KubeconfigArg;

#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    kubeconfig: KubeconfigArg,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token and print it.
    Create {
        /// How long the token admits nodes; 0 for no expiry.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// A note shown by `token list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens (never their secrets).
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Revoke a join token: it admits no node from now on.
    Revoke {
        /// The token's ID (its first six characters).
        id: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub async fn run(args: TokenArgs) -> Result<(), String> {
    let (kubeconfig, client) = args.kubeconfig.connect().await?;
    match args.command {
        TokenCommand::Create { ttl, description } => {
            let ca = CaHash::of_pem(&kubeconfig.ca_pem).map_err(|e| e.to_string())?;
            let token = JoinToken::generate(ca);
            let ttl = (!ttl.is_zero()).then(|| ttl.as_secs().max(1));
            let record = TokenRecord::new(&token, now_unix(), ttl, &description);
            client
                .create(&TokenRecord::key(&token.id), record.to_json())
                .await
                .map_err(|e| e.to_string())?;
            println!("{token}");
        }
        TokenCommand::List { output } => {
            let records = client
                .list_all(TOKENS_PREFIX, true)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(_, r)| TokenRecord::from_json(&r.value).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            print_tokens(&records, output, now_unix());
        }
        TokenCommand::Revoke { id } => match client.delete(&TokenRecord::key(&id), None).await {
            Ok(_) => println!("token {id} revoked"),
            Err(e)
                if e.store()
                    .is_some_and(|s| matches!(s, flotilla_store::StoreError::NotFound { .. })) =>
            {
                return Err(format!("no join token with ID {id}"))
            }
            Err(e) => return Err(e.to_string()),
        },
    }
    Ok(())
}

fn print_tokens(records: &[TokenRecord], output: Output, now: u64) {
    match output {
        Output::Json => {
            let list: Vec<_> = records
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "id": r.id,
                        "created": r.created,
                        "expires": r.expires,
                        "expired": r.expires.is_some_and(|e| now >= e),
                        "description": r.description,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(list));
        }
        Output::Table => {
            println!("{:<8} {:<12} DESCRIPTION", "ID", "TTL");
            for r in records {
                let ttl = match r.expires {
                    None => "<forever>".to_string(),
                    Some(e) if now >= e => "expired".to_string(),
                    Some(e) => humantime::format_duration(Duration::from_secs(e - now)).to_string(),
                };
                println!("{:<8} {:<12} {}", r.id, ttl, r.description);
            }
        }
    }
}
