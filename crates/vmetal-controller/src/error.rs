//! Controller errors: what failed and on which object. BMC and agent failures that belong in a
//! host's status are not errors here — they become `errorType`/`errorMessage`.

/// A reconcile could not complete; the host is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Talking to the Kubernetes API failed.
    #[error("Kubernetes API call failed for {object}: {source}")]
    Kube {
        /// The object (`namespace/name`).
        object: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// An object could not be (de)serialised.
    #[error("cannot encode {object}: {reason}")]
    Encode {
        /// The object.
        object: String,
        /// Why.
        reason: String,
    },
}

impl ControllerError {
    /// Wrap a kube error with the object it concerns.
    pub fn kube(object: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            object: object.into(),
            source,
        }
    }

    /// Whether this is a 409 Conflict (retry at once with fresh data).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Kube { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}
