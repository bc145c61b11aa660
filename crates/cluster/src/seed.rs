//! Talking to a seed before this node has credentials: over TLS pinned to the CA hash that the
//! join token (or this node's own CA) names, to the `Admission` service only.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_pki::pinned::PinnedCaVerifier;
use flotilla_pki::CaHash;
use flotilla_rpc::pb::admission_client::AdmissionClient;
use flotilla_rpc::tls::pinned_channel;
use tonic::transport::Channel;
use tonic::Status;

pub(crate) enum SeedError {
    /// The seed's certificate is not from the pinned CA.
    OtherCa,
    /// The seed answered and refused.
    Refused(Status),
    /// Not reachable (or not answering) before the deadline.
    Unreachable(String),
}

/// Calls `call` on the seed's `Admission` service, retrying while the seed is unreachable or
/// unavailable (no leader yet) until `timeout`.
pub(crate) async fn call<T, F, Fut>(
    seed: &str,
    ca: CaHash,
    timeout: Duration,
    call: F,
) -> Result<T, SeedError>
where
    F: Fn(AdmissionClient<Channel>) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let verifier = PinnedCaVerifier::new(ca);
        let attempt =
            Duration::from_secs(5).min(deadline.saturating_duration_since(Instant::now()));
        let detail = match pinned_channel(
            seed,
            Arc::clone(&verifier),
            attempt.max(Duration::from_millis(100)),
        )
        .await
        {
            Ok(channel) => match call(AdmissionClient::new(channel)).await {
                Ok(v) => return Ok(v),
                Err(s) if is_transient(&s) => s.message().to_string(),
                Err(s) => return Err(SeedError::Refused(s)),
            },
            Err(e) if verifier.saw_other_ca() => {
                tracing::debug!(%seed, error = %e, "seed has another CA");
                return Err(SeedError::OtherCa);
            }
            Err(e) => error_chain(&e),
        };
        if Instant::now() >= deadline {
            return Err(SeedError::Unreachable(detail));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_transient(s: &Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
