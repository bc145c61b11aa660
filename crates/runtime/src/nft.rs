//! `nft -f -`: one script, one transaction (the kernel applies all of it or none), for the
//! pod masquerade and the service rules alike.

use tokio::io::AsyncWriteExt;

/// How `nft` is run: the program and the arguments before `-f -` (a test runs it in a
/// namespace of its own with `ip netns exec NAME nft`).
#[derive(Clone, Debug)]
pub struct Nft {
    pub command: Vec<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            command: vec!["nft".into()],
        }
    }
}

impl Nft {
    /// Applies `script` as one transaction.
    pub async fn apply(&self, script: &str) -> Result<(), String> {
        let (program, args) = self.command.split_first().ok_or("no nft command")?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {program} (apt-get install nftables): {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|e| format!("nft: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}
