//! Whether a failed call may have reached the other side. A proposal that may have been
//! applied must not be sent again (a create would answer AlreadyExists although it succeeded,
//! an unconditional update or delete would apply twice): only a call that certainly never left
//! is retried, and any other failure is answered as an unknown outcome.

use std::error::Error;
use std::sync::Arc;

use tonic::Status;

/// The request never left this process.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotSent(pub String);

/// An `Unavailable` status for a request that never left this process.
pub fn not_sent(message: impl Into<String>) -> Status {
    let message = message.into();
    let mut status = Status::unavailable(message.clone());
    status.set_source(Arc::new(NotSent(message)));
    status
}

/// Whether the call that failed with `status` certainly did not reach the server: no
/// connection could be made, or the request was never handed to one. A reset, a timeout or an
/// error in the middle of the call may come after the server acted.
pub fn never_sent(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() || e.is::<NotSent>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_was_never_sent_and_a_reset_may_have_been() {
        // A port nothing listens on: bind one, then close it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let mut client = crate::pb::store_client::StoreClient::new(channel);
        let status = client
            .read_index(crate::pb::ReadIndexRequest {})
            .await
            .unwrap_err();
        assert!(never_sent(&status), "{status:?}");

        assert!(never_sent(&not_sent("queue closed")));
        assert!(!never_sent(&Status::unavailable("connection reset")));
        assert!(!never_sent(&Status::deadline_exceeded("no answer in time")));
    }
}
