//! What can go wrong talking to a BMC, with enough context to act on and no secrets.

use std::time::Duration;

/// A BMC operation failed. Messages name the BMC address and never contain credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BmcError {
    /// No answer: connection refused, no route, TLS handshake failure or similar.
    #[error(
        "BMC {address} is unreachable: {reason}; check the address and that the BMC is on the network"
    )]
    Unreachable {
        /// The BMC address.
        address: String,
        /// What the transport said.
        reason: String,
    },
    /// The BMC did not answer in time.
    #[error("BMC {address} did not answer within {after:?}")]
    Timeout {
        /// The BMC address.
        address: String,
        /// How long we waited.
        after: Duration,
    },
    /// The BMC rejected the credentials.
    #[error(
        "BMC {address} rejected the credentials; check the username and password in the BMC credentials Secret"
    )]
    AuthenticationFailed {
        /// The BMC address.
        address: String,
    },
    /// The BMC (or this driver for it) cannot do the operation.
    #[error("BMC {address} does not support {operation}")]
    NotSupported {
        /// The BMC address.
        address: String,
        /// What was asked.
        operation: &'static str,
    },
    /// The BMC understood the request and refused or failed it.
    #[error("BMC {address} failed {operation}: {message}")]
    Rejected {
        /// The BMC address.
        address: String,
        /// What was asked.
        operation: &'static str,
        /// The BMC's own message (Redfish `@Message.ExtendedInfo`, IPMI completion code).
        message: String,
    },
    /// The BMC answered something this driver cannot parse.
    #[error("BMC {address} sent a malformed response to {operation}: {detail}")]
    MalformedResponse {
        /// The BMC address.
        address: String,
        /// What was asked.
        operation: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// The BMC is temporarily busy (HTTP 503, IPMI node busy); retry later.
    #[error("BMC {address} is busy: {message}")]
    Busy {
        /// The BMC address.
        address: String,
        /// What the BMC said.
        message: String,
    },
}

impl BmcError {
    /// Whether retrying later can succeed without anybody changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Timeout { .. } | Self::Busy { .. }
        )
    }

    /// The address of the BMC the error is about.
    pub fn address(&self) -> &str {
        match self {
            Self::Unreachable { address, .. }
            | Self::Timeout { address, .. }
            | Self::AuthenticationFailed { address }
            | Self::NotSupported { address, .. }
            | Self::Rejected { address, .. }
            | Self::MalformedResponse { address, .. }
            | Self::Busy { address, .. } => address,
        }
    }
}
