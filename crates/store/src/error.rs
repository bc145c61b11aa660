//! Typed store errors and the small code enum that gRPC, HTTP and the Kubernetes `Status` map from.

use crate::command::{RejectReason, Rejection, Revision};

/// What went wrong with a store operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("conflict on {key}: expected revision {expected}, current revision {current}")]
    Conflict {
        key: String,
        expected: Revision,
        current: Revision,
    },
    /// This node cannot accept the request and no leader is known to forward it to.
    #[error("no leader: {reason}")]
    NotLeader { reason: String },
    #[error("timed out after {millis} ms waiting for {waiting_for}")]
    Timeout { waiting_for: String, millis: u64 },
    /// A watch asked for changes after a revision that has left the watch window.
    #[error("revision {requested} is compacted; the oldest watchable revision is {oldest}")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    /// The node is shutting down or the watch window was reset.
    #[error("store closed: {reason}")]
    Closed { reason: String },
    /// The storage engine failed (I/O, corruption).
    #[error("storage engine failed: {detail}")]
    Storage { detail: String },
}

/// The small set of error codes every interface maps from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    AlreadyExists,
    NotFound,
    Conflict,
    NotLeader,
    Timeout,
    Compacted,
    Closed,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::AlreadyExists,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::NotLeader,
        ErrorCode::Timeout,
        ErrorCode::Compacted,
        ErrorCode::Closed,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AlreadyExists => "already-exists",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NotLeader => "not-leader",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Compacted => "compacted",
            ErrorCode::Closed => "closed",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The `reason` of the Kubernetes `Status` for this code.
    pub fn k8s_reason(self) -> &'static str {
        match self {
            ErrorCode::AlreadyExists => "AlreadyExists",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::NotLeader | ErrorCode::Closed => "ServiceUnavailable",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::Compacted => "Expired",
            ErrorCode::Internal => "InternalError",
        }
    }

    /// The HTTP status the Kubernetes API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::AlreadyExists | ErrorCode::Conflict => 409,
            ErrorCode::NotFound => 404,
            ErrorCode::NotLeader | ErrorCode::Closed => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Compacted => 410,
            ErrorCode::Internal => 500,
        }
    }
}

impl StoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            StoreError::NotFound { .. } => ErrorCode::NotFound,
            StoreError::Conflict { .. } => ErrorCode::Conflict,
            StoreError::NotLeader { .. } => ErrorCode::NotLeader,
            StoreError::Timeout { .. } => ErrorCode::Timeout,
            StoreError::Compacted { .. } => ErrorCode::Compacted,
            StoreError::Closed { .. } => ErrorCode::Closed,
            StoreError::Storage { .. } => ErrorCode::Internal,
        }
    }

    pub fn storage(err: impl std::fmt::Display) -> Self {
        StoreError::Storage {
            detail: err.to_string(),
        }
    }
}

impl From<Rejection> for StoreError {
    fn from(r: Rejection) -> Self {
        match r.reason {
            RejectReason::AlreadyExists => StoreError::AlreadyExists { key: r.key },
            RejectReason::NotFound => StoreError::NotFound { key: r.key },
            RejectReason::Conflict { expected, current } => StoreError::Conflict {
                key: r.key,
                expected,
                current,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_strings() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("bogus"), None);
    }
}
