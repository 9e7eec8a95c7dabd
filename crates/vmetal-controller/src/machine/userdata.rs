//! The cloud-init user data a Machine's server boots with: `#cloud-config` with the hostname,
//! SSH keys, the user's extra cloud-config merged in, and the cluster join step last in `runcmd`.
//!
//! Pure: the caller reads the Secrets; the join token ends up only in the returned document
//! (which goes into a Secret), never in an error message.

use serde_yaml::{Mapping, Value};

/// How the installed server joins its cluster.
#[derive(Clone, PartialEq, Eq)]
pub enum JoinStep {
    /// Do not join anything.
    None,
    /// vCluster private node: fetch and run the join script.
    VCluster {
        /// `host[:port]` of the vCluster API.
        endpoint: String,
        /// `<id>.<secret>` bootstrap token.
        token: String,
    },
    /// `kubeadm join`.
    Kubeadm {
        /// `host:port` of the control plane.
        endpoint: String,
        /// `<id>.<secret>` bootstrap token.
        token: String,
        /// `sha256:<hex>` of the cluster CA's public key.
        ca_cert_hash: String,
    },
}

impl std::fmt::Debug for JoinStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::VCluster { endpoint, .. } => write!(f, "VCluster({endpoint}, token: <redacted>)"),
            Self::Kubeadm { endpoint, .. } => write!(f, "Kubeadm({endpoint}, token: <redacted>)"),
        }
    }
}

/// What goes into the user data.
#[derive(Debug, Clone)]
pub struct UserDataInput<'a> {
    /// The server's hostname (the host's name, so the node is named after it).
    pub hostname: &'a str,
    /// `spec.sshAuthorizedKeys`.
    pub ssh_authorized_keys: &'a [String],
    /// The user's extra cloud-config (`spec.userData` Secret), if any.
    pub extra: Option<&'a str>,
    /// The join step.
    pub join: JoinStep,
}

/// Why user data could not be rendered. No variant carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserDataError {
    /// The extra cloud-config is not YAML.
    #[error("the extra user data is not valid YAML cloud-config: {reason}")]
    InvalidYaml {
        /// Parser message.
        reason: String,
    },
    /// The extra cloud-config is YAML but not a mapping.
    #[error("the extra user data must be a #cloud-config mapping (key: value), not a {found}")]
    NotAMapping {
        /// What it is.
        found: &'static str,
    },
    /// A list key of the extra cloud-config is not a list.
    #[error("the extra user data's {key:?} must be a list")]
    NotAList {
        /// The key.
        key: &'static str,
    },
    /// The token would break out of the join command.
    #[error(
        "the join token contains characters other than letters, digits, '.', '-' and '_'; \
         a bootstrap token looks like abcdef.0123456789abcdef"
    )]
    UnsafeToken,
    /// The endpoint would break out of the join command.
    #[error(
        "join endpoint {endpoint:?} must be host[:port] (letters, digits, '.', '-', ':', '[', ']')"
    )]
    UnsafeEndpoint {
        /// The endpoint.
        endpoint: String,
    },
    /// The CA hash would break out of the join command.
    #[error("caCertHash {value:?} must be sha256:<64 hex digits>")]
    UnsafeCaCertHash {
        /// The value.
        value: String,
    },
}

fn token_ok(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn endpoint_ok(e: &str) -> bool {
    !e.is_empty()
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// The shell line that joins the cluster (the token is in it), or `None` for no join.
pub fn join_command(step: &JoinStep) -> Result<Option<String>, UserDataError> {
    match step {
        JoinStep::None => Ok(None),
        JoinStep::VCluster { endpoint, token } => {
            check(endpoint, token)?;
            Ok(Some(format!(
                "curl -fsSLk \"https://{endpoint}/node/join?token={token}\" | sh -"
            )))
        }
        JoinStep::Kubeadm {
            endpoint,
            token,
            ca_cert_hash,
        } => {
            check(endpoint, token)?;
            let hash_ok = ca_cert_hash
                .strip_prefix("sha256:")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if !hash_ok {
                return Err(UserDataError::UnsafeCaCertHash {
                    value: ca_cert_hash.clone(),
                });
            }
            Ok(Some(format!(
                "kubeadm join {endpoint} --token {token} --discovery-token-ca-cert-hash {ca_cert_hash}"
            )))
        }
    }
}

fn check(endpoint: &str, token: &str) -> Result<(), UserDataError> {
    if !endpoint_ok(endpoint) {
        return Err(UserDataError::UnsafeEndpoint {
            endpoint: endpoint.to_string(),
        });
    }
    if !token_ok(token) {
        return Err(UserDataError::UnsafeToken);
    }
    Ok(())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Sequence(_) => "list",
        Value::Mapping(_) => "mapping",
        Value::Tagged(_) => "tagged value",
    }
}

fn list_of(extra: &mut Mapping, key: &'static str) -> Result<Vec<Value>, UserDataError> {
    match extra.shift_remove(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(s)) => Ok(s),
        Some(_) => Err(UserDataError::NotAList { key }),
    }
}

/// Render the `#cloud-config` document. Key order: `hostname`, `ssh_authorized_keys`, the
/// user's other keys as given, `runcmd` (the user's commands, then the join step).
/// `hostname` is the platform's (the node must be named after its host); SSH keys are the
/// user's followed by `spec.sshAuthorizedKeys`, without duplicates.
pub fn render(input: &UserDataInput<'_>) -> Result<String, UserDataError> {
    let mut extra = match input.extra.map(str::trim) {
        None | Some("") => Mapping::new(),
        Some(text) => match serde_yaml::from_str::<Value>(text) {
            Ok(Value::Mapping(m)) => m,
            Ok(Value::Null) => Mapping::new(),
            Ok(other) => {
                return Err(UserDataError::NotAMapping {
                    found: kind_of(&other),
                });
            }
            Err(e) => {
                return Err(UserDataError::InvalidYaml {
                    reason: e.to_string(),
                });
            }
        },
    };
    extra.shift_remove("hostname");
    let mut keys = list_of(&mut extra, "ssh_authorized_keys")?;
    for key in input.ssh_authorized_keys {
        let v = Value::String(key.clone());
        if !keys.contains(&v) {
            keys.push(v);
        }
    }
    let mut runcmd = list_of(&mut extra, "runcmd")?;
    if let Some(line) = join_command(&input.join)? {
        runcmd.push(Value::String(line));
    }
    let mut doc = Mapping::new();
    doc.insert("hostname".into(), Value::String(input.hostname.to_string()));
    if !keys.is_empty() {
        doc.insert("ssh_authorized_keys".into(), Value::Sequence(keys));
    }
    for (k, v) in extra {
        doc.insert(k, v);
    }
    if !runcmd.is_empty() {
        doc.insert("runcmd".into(), Value::Sequence(runcmd));
    }
    let body =
        serde_yaml::to_string(&Value::Mapping(doc)).map_err(|e| UserDataError::InvalidYaml {
            reason: e.to_string(),
        })?;
    Ok(format!("#cloud-config\n{body}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOKEN: &str = "abcdef.0123456789abcdef";

    fn keys() -> Vec<String> {
        vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample ops@example.com".into()]
    }

    const EXTRA: &str = "#cloud-config\nhostname: ignored\npackages: [htop]\nruncmd:\n  - echo hello\nssh_authorized_keys:\n  - ssh-rsa AAAAB3Nza user@laptop\nwrite_files:\n  - path: /etc/motd\n    content: managed by vmetal\n";

    fn vcluster() -> JoinStep {
        JoinStep::VCluster {
            endpoint: "vc.example.com:8443".into(),
            token: TOKEN.into(),
        }
    }

    fn kubeadm() -> JoinStep {
        JoinStep::Kubeadm {
            endpoint: "10.0.0.1:6443".into(),
            token: TOKEN.into(),
            ca_cert_hash: format!("sha256:{}", "0f".repeat(32)),
        }
    }

    fn render_with(join: JoinStep, extra: Option<&str>) -> String {
        let k = keys();
        render(&UserDataInput {
            hostname: "server-3",
            ssh_authorized_keys: &k,
            extra,
            join,
        })
        .unwrap()
    }

    #[test]
    fn vcluster_user_data_snapshot() {
        insta::assert_snapshot!(render_with(vcluster(), Some(EXTRA)));
    }

    #[test]
    fn kubeadm_user_data_snapshot() {
        insta::assert_snapshot!(render_with(kubeadm(), None));
    }

    #[test]
    fn parses_back_and_the_token_appears_only_in_the_join_step() {
        for (join, expected) in [
            (
                vcluster(),
                format!(
                    "curl -fsSLk \"https://vc.example.com:8443/node/join?token={TOKEN}\" | sh -"
                ),
            ),
            (
                kubeadm(),
                format!(
                    "kubeadm join 10.0.0.1:6443 --token {TOKEN} --discovery-token-ca-cert-hash sha256:{}",
                    "0f".repeat(32)
                ),
            ),
        ] {
            let text = render_with(join.clone(), Some(EXTRA));
            assert!(text.starts_with("#cloud-config\n"));
            let doc: Value = serde_yaml::from_str(&text).unwrap();
            assert_eq!(doc["hostname"], Value::from("server-3"));
            let runcmd = doc["runcmd"].as_sequence().unwrap();
            assert_eq!(runcmd.first().unwrap(), &Value::from("echo hello"));
            assert_eq!(runcmd.last().unwrap(), &Value::from(expected.as_str()));
            let ssh = doc["ssh_authorized_keys"].as_sequence().unwrap();
            assert_eq!(ssh.len(), 2);
            assert_eq!(doc["packages"][0], Value::from("htop"));
            assert_eq!(doc["write_files"][0]["path"], Value::from("/etc/motd"));
            // The token is in exactly one place: the last runcmd entry.
            assert_eq!(text.matches(TOKEN).count(), 1);
            let mut without = doc.clone();
            without["runcmd"].as_sequence_mut().unwrap().pop();
            assert!(
                !serde_yaml::to_string(&without)
                    .unwrap()
                    .contains("0123456789abcdef")
            );
            // Debug output of the join step redacts it.
            assert!(!format!("{join:?}").contains(TOKEN));
        }
    }

    #[test]
    fn no_join_no_extra_is_minimal() {
        let text = render(&UserDataInput {
            hostname: "h",
            ssh_authorized_keys: &[],
            extra: None,
            join: JoinStep::None,
        })
        .unwrap();
        assert_eq!(text, "#cloud-config\nhostname: h\n");
    }

    #[test]
    fn bad_extra_and_unsafe_values_are_errors_without_the_token() {
        let k = keys();
        let input = |extra, join| UserDataInput {
            hostname: "h",
            ssh_authorized_keys: &k,
            extra,
            join,
        };
        assert!(matches!(
            render(&input(Some("- a\n- b\n"), JoinStep::None)),
            Err(UserDataError::NotAMapping { found: "list" })
        ));
        assert!(matches!(
            render(&input(Some("a: [unclosed"), JoinStep::None)),
            Err(UserDataError::InvalidYaml { .. })
        ));
        assert!(matches!(
            render(&input(Some("runcmd: echo"), JoinStep::None)),
            Err(UserDataError::NotAList { key: "runcmd" })
        ));
        let evil = JoinStep::VCluster {
            endpoint: "vc:443".into(),
            token: "abc\"; rm -rf / #".into(),
        };
        let err = render(&input(None, evil)).unwrap_err();
        assert_eq!(err, UserDataError::UnsafeToken);
        assert!(!err.to_string().contains("rm -rf"));
        let evil = JoinStep::VCluster {
            endpoint: "vc/$(id)".into(),
            token: TOKEN.into(),
        };
        assert!(matches!(
            render(&input(None, evil)),
            Err(UserDataError::UnsafeEndpoint { .. })
        ));
    }
}
