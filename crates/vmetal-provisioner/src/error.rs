//! The provisioner's one error type: every variant names the object it is about and, where a
//! user can act, what to fix. Tokens and Secret contents never appear in these messages.

/// What went wrong in the provisioner.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionerError {
    /// A Secret named by a BareMetalHost (or owned by the provisioner) does not exist.
    #[error("Secret {namespace}/{name} not found: create it or fix the reference to it")]
    SecretNotFound {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
    },
    /// A Secret exists but lacks the key the provisioner reads.
    #[error("Secret {namespace}/{name} has no key {key:?}{}", fallback_hint(.fallback))]
    SecretKeyMissing {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The key that was expected.
        key: String,
        /// A second key that would also have been accepted, if any.
        fallback: Option<String>,
    },
    /// A Secret reference points into another namespace, which Metal3 rejects too.
    #[error(
        "BareMetalHost {namespace}/{host} refers to Secret {secret_namespace}/{secret}: \
         Secrets must be in the host's namespace"
    )]
    CrossNamespaceSecret {
        /// Namespace of the host.
        namespace: String,
        /// Name of the host.
        host: String,
        /// Namespace named in the reference.
        secret_namespace: String,
        /// Name of the Secret.
        secret: String,
    },
    /// A Secret value could not be parsed (YAML/JSON metaData or networkData, cycle fields).
    #[error("Secret {namespace}/{name} key {key:?} is invalid: {reason}")]
    SecretValueInvalid {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The key holding the bad value.
        key: String,
        /// What is wrong with it (never the value itself).
        reason: String,
    },
    /// An object lacks metadata the provisioner needs (name, namespace, uid).
    #[error("{kind} {name:?} has no {field}")]
    MissingMetadata {
        /// Kind of the object.
        kind: &'static str,
        /// Name of the object, as far as known.
        name: String,
        /// The missing field (`metadata.namespace`, ...).
        field: &'static str,
    },
    /// A Kubernetes API call failed.
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Kube {
        /// What was being done (`get`, `replace`, `list`).
        action: &'static str,
        /// Kind of the object.
        kind: &'static str,
        /// Namespace of the object (empty for cluster-wide lists).
        namespace: String,
        /// Name of the object (empty for lists).
        name: String,
        /// The client error (boxed: it is large and errors travel in `Result`s).
        #[source]
        source: Box<kube::Error>,
    },
    /// Building or reading a config drive failed.
    #[error("config drive: {reason}")]
    ConfigDrive {
        /// What failed.
        reason: String,
    },
    /// Boot configuration (iPXE script input) that iPXE or the kernel would misparse.
    #[error("boot configuration: {field} {value:?} {reason}")]
    InvalidBootConfig {
        /// Which field (`kernel_url`, `extra_kernel_args[2]`, `boot_mac`).
        field: String,
        /// The rejected value.
        value: String,
        /// Why it was rejected and what is accepted.
        reason: &'static str,
    },
    /// The system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
}

fn fallback_hint(fallback: &Option<String>) -> String {
    match fallback {
        Some(f) => format!(" (nor {f:?})"),
        None => String::new(),
    }
}

impl ProvisionerError {
    /// Wraps a kube error with what was being done to which object.
    pub fn kube(
        action: &'static str,
        kind: &'static str,
        namespace: &str,
        name: &str,
        source: kube::Error,
    ) -> Self {
        Self::Kube {
            action,
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        }
    }
}
