//! Access to the API server: a self-signed CA and serving certificate, a bearer token, and a
//! kubeconfig that points kubectl and kube-rs at the server — all created on first start and
//! reused afterwards, so clients keep working across restarts.
//!
//! Authorization is "authenticated means allowed"; anonymous requests get 401.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Access setup failures.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {reason}")]
    Io {
        /// read / write.
        action: &'static str,
        /// File.
        path: String,
        /// OS error.
        reason: String,
    },
    /// Certificate generation or parsing failed.
    #[error(
        "TLS setup failed: {0}; delete the data directory's *.crt/*.key files to regenerate them"
    )]
    Tls(String),
}

/// Credentials and certificates of one server.
#[derive(Clone)]
pub struct Access {
    /// CA certificate (PEM) clients trust.
    pub ca_pem: String,
    /// Serving certificate (PEM).
    pub cert_pem: String,
    /// Serving key (PEM).
    pub key_pem: String,
    /// Bearer token clients present.
    pub token: String,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &"<redacted>")
            .finish()
    }
}

fn read(path: &Path) -> Result<Option<String>, AccessError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AccessError::Io {
            action: "read",
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Write a file readable only by its owner.
pub fn write_private(path: &Path, contents: &str) -> Result<(), AccessError> {
    let io = |e: std::io::Error| AccessError::Io {
        action: "write",
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(contents.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        // An existing file keeps its old mode through open(); force it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    std::fs::write(path, contents).map_err(io)?;
    Ok(())
}

fn random_token() -> Result<String, AccessError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AccessError::Tls(format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Generate a CA and a serving certificate for `hosts` (IPs or DNS names).
pub fn generate(hosts: &[String]) -> Result<Access, AccessError> {
    let tls = |e: rcgen::Error| AccessError::Tls(e.to_string());
    let ca_key = KeyPair::generate().map_err(tls)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "vmetal-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().map_err(tls)?;
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(tls)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "vmetal-apiserver");
    let cert = params.signed_by(&server_key, &issuer).map_err(tls)?;
    Ok(Access {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: server_key.serialize_pem(),
        token: random_token()?,
    })
}

/// Load the access material from `dir`, creating what is missing.
pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Access, AccessError> {
    std::fs::create_dir_all(dir).map_err(|e| AccessError::Io {
        action: "create",
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let files = ["ca.crt", "apiserver.crt", "apiserver.key", "token"].map(|f| dir.join(f));
    let existing: Vec<Option<String>> = files.iter().map(|p| read(p)).collect::<Result<_, _>>()?;
    if let [Some(ca), Some(cert), Some(key), Some(token)] = existing.as_slice() {
        return Ok(Access {
            ca_pem: ca.clone(),
            cert_pem: cert.clone(),
            key_pem: key.clone(),
            token: token.trim().to_string(),
        });
    }
    let access = generate(hosts)?;
    write_private(&files[0], &access.ca_pem)?;
    write_private(&files[1], &access.cert_pem)?;
    write_private(&files[2], &access.key_pem)?;
    write_private(&files[3], &access.token)?;
    Ok(access)
}

impl Access {
    /// rustls server configuration with the ring provider.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, AccessError> {
        let tls = |e: &dyn std::fmt::Display| AccessError::Tls(e.to_string());
        // The chain ends with the CA, as kubeadm's API servers send it: a joining node pins
        // `--discovery-token-ca-cert-hash` against the CA it is shown.
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .chain(CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()))
                .collect::<Result<_, _>>()
                .map_err(|e| tls(&e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| tls(&e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
        // HTTP/1.1 only: over one shared HTTP/2 connection, a watch nobody reads can exhaust the
        // connection-level flow-control window and stall every other request of that client.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// kubeadm's `--discovery-token-ca-cert-hash` of the CA (`sha256:<hex>` of its public key).
    pub fn ca_cert_hash(&self) -> Result<String, AccessError> {
        let der = CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .map_err(|e| AccessError::Tls(format!("the CA certificate is not PEM: {e}")))?;
        vmetal_api::ca_hash::ca_cert_hash(&der).map_err(|e| AccessError::Tls(e.to_string()))
    }

    /// A kubeconfig for `server_url` (context `vmetal`).
    pub fn kubeconfig(&self, server_url: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: vmetal\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: vmetal-admin\n  user:\n    token: {}\ncontexts:\n- name: vmetal\n  context:\n    cluster: vmetal\n    user: vmetal-admin\n    namespace: default\ncurrent-context: vmetal\n",
            self.token
        )
    }

    /// Write the kubeconfig to `path` with mode 0600.
    pub fn write_kubeconfig(&self, path: &Path, server_url: &str) -> Result<PathBuf, AccessError> {
        write_private(path, &self.kubeconfig(server_url))?;
        Ok(path.to_path_buf())
    }

    /// Whether an `Authorization` header value carries our token (constant-time compare).
    pub fn authorizes(&self, header: Option<&str>) -> bool {
        let Some(presented) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let a = presented.trim().as_bytes();
        let b = self.token.as_bytes();
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Kubernetes bootstrap tokens (`<id>.<secret>`, Secret `kube-system/bootstrap-token-<id>`),
/// accepted so a joining node can register itself with the token from its user data.
pub mod bootstrap {
    use base64::Engine;
    use serde_json::Value;

    /// Namespace of bootstrap token Secrets.
    pub const NAMESPACE: &str = "kube-system";

    /// `(id, secret)` of a well-formed token: 6 and 16 characters of `[a-z0-9]`.
    pub fn parse(token: &str) -> Option<(&str, &str)> {
        let (id, secret) = token.split_once('.')?;
        let ok = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        };
        (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
    }

    /// Name of the Secret holding token `id`.
    pub fn secret_name(id: &str) -> String {
        format!("bootstrap-token-{id}")
    }

    fn field(secret: &Value, key: &str) -> Option<String> {
        if let Some(v) = secret
            .pointer(&format!("/data/{key}"))
            .and_then(Value::as_str)
        {
            let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
            return String::from_utf8(bytes).ok();
        }
        secret
            .pointer(&format!("/stringData/{key}"))
            .and_then(Value::as_str)
            .map(String::from)
    }

    /// Whether `secret` (the token's Secret as JSON) accepts `token_secret` now: type
    /// `bootstrap.kubernetes.io/token`, matching `token-secret` (constant-time),
    /// `usage-bootstrap-authentication: "true"`, and an `expiration` (RFC 3339) not passed.
    pub fn accepts(secret: &Value, id: &str, token_secret: &str, now: jiff::Timestamp) -> bool {
        if secret.get("type").and_then(Value::as_str) != Some("bootstrap.kubernetes.io/token") {
            return false;
        }
        if field(secret, "token-id").as_deref() != Some(id) {
            return false;
        }
        if field(secret, "usage-bootstrap-authentication").as_deref() != Some("true") {
            return false;
        }
        if let Some(exp) = field(secret, "expiration") {
            match exp.parse::<jiff::Timestamp>() {
                Ok(t) if t > now => {}
                _ => return false,
            }
        }
        let Some(stored) = field(secret, "token-secret") else {
            return false;
        };
        let (a, b) = (stored.as_bytes(), token_secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// What a bootstrap token may do: discovery reads, Nodes, and Leases in `kube-node-lease`.
    /// (Kubernetes limits bootstrappers to CSRs and lets the kubelet's new certificate do the
    /// rest; this server has no CSR signer, so the token stands in for that certificate.)
    pub fn permits(method: &str, path: &str) -> bool {
        let read = matches!(method, "GET" | "HEAD");
        let discovery = matches!(path, "/api" | "/apis" | "/version" | "/api/v1")
            || path.starts_with("/openapi/");
        let nodes = path == "/api/v1/nodes" || path.starts_with("/api/v1/nodes/");
        let leases = path
            .strip_prefix("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        let writes = matches!(method, "POST" | "PUT" | "PATCH");
        (read && discovery) || ((read || writes) && (nodes || leases))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ca_cert_hash_is_the_hash_of_the_ca_public_key() {
        use sha2::Digest;
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let access = Access {
            ca_pem: ca.pem(),
            cert_pem: String::new(),
            key_pem: String::new(),
            token: String::new(),
        };
        // The key's SubjectPublicKeyInfo, from its PEM ("PUBLIC KEY" is SPKI in DER).
        let pem = key.public_key_pem();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let spki = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let want: String = sha2::Sha256::digest(spki)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(access.ca_cert_hash().unwrap(), format!("sha256:{want}"));
    }

    #[test]
    fn material_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let a = load_or_create(dir.path(), &hosts).unwrap();
        let b = load_or_create(dir.path(), &hosts).unwrap();
        assert_eq!(a.token, b.token);
        assert_eq!(a.ca_pem, b.ca_pem);
        a.server_config().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("token"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn bootstrap_tokens_are_checked_against_their_secret() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let now = jiff::Timestamp::now();
        let secret = |secret: &str, usage: &str, exp: &str| {
            serde_json::json!({
                "type": "bootstrap.kubernetes.io/token",
                "data": {"token-id": b64("abcdef"), "token-secret": b64(secret),
                         "usage-bootstrap-authentication": b64(usage), "expiration": b64(exp)}
            })
        };
        let future = "2999-01-01T00:00:00Z";
        let (id, sec) = bootstrap::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(bootstrap::secret_name(id), "bootstrap-token-abcdef");
        assert!(bootstrap::accepts(
            &secret(sec, "true", future),
            id,
            sec,
            now
        ));
        assert!(!bootstrap::accepts(
            &secret("ffffffffffffffff", "true", future),
            id,
            sec,
            now
        ));
        assert!(!bootstrap::accepts(
            &secret(sec, "false", future),
            id,
            sec,
            now
        ));
        assert!(!bootstrap::accepts(
            &secret(sec, "true", "2000-01-01T00:00:00Z"),
            id,
            sec,
            now
        ));
        let mut wrong_type = secret(sec, "true", future);
        wrong_type["type"] = "Opaque".into();
        assert!(!bootstrap::accepts(&wrong_type, id, sec, now));
        for bad in [
            "abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123",
        ] {
            assert!(bootstrap::parse(bad).is_none(), "{bad}");
        }
        assert!(bootstrap::permits("POST", "/api/v1/nodes"));
        assert!(bootstrap::permits("PATCH", "/api/v1/nodes/server-1/status"));
        assert!(bootstrap::permits(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/server-1"
        ));
        assert!(bootstrap::permits("GET", "/api"));
        assert!(!bootstrap::permits(
            "GET",
            "/api/v1/namespaces/kube-system/secrets"
        ));
        assert!(!bootstrap::permits("DELETE", "/api/v1/nodes/server-1"));
        assert!(!bootstrap::permits(
            "POST",
            "/api/v1/namespaces/default/pods"
        ));
        assert!(!bootstrap::permits(
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leasesx"
        ));
    }

    #[test]
    fn token_check() {
        let a = generate(&["127.0.0.1".into()]).unwrap();
        assert!(a.authorizes(Some(&format!("Bearer {}", a.token))));
        assert!(!a.authorizes(Some("Bearer nope")));
        assert!(!a.authorizes(None));
        assert!(!format!("{a:?}").contains(&a.token));
    }
}
