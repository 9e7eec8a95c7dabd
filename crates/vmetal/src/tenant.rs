//! The tenant cluster of `vmetal up --lab`: a second embedded API server standing in for a
//! virtual cluster, with Kubernetes bootstrap tokens that joining servers authenticate with.
//!
//! Its objects, certificates and kubeconfig live in `<data dir>/tenant`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use vmetal_apiserver::{ApiServerConfig, RunningApiServer};

/// Name of the host-cluster Secret `vmetal up --lab` puts a tenant join token in (key `token`).
pub const JOIN_SECRET: &str = "tenant-join-token";

/// A running tenant cluster.
pub struct TenantCluster {
    /// Its API server.
    pub apiserver: RunningApiServer,
    /// An admin client for it.
    pub client: kube::Client,
}

impl TenantCluster {
    /// Start it with its state under `dir`.
    pub async fn start(dir: &Path, bind: SocketAddr) -> anyhow::Result<Self> {
        let apiserver = vmetal_apiserver::start(ApiServerConfig {
            bind,
            data_dir: Some(dir.to_path_buf()),
        })
        .await
        .with_context(|| format!("cannot start the tenant API server in {}", dir.display()))?;
        let path = apiserver
            .kubeconfig_path()
            .context("the tenant API server wrote no kubeconfig")?;
        let kubeconfig =
            Kubeconfig::read_from(path).context("cannot read the tenant kubeconfig")?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .context("cannot load the tenant kubeconfig")?;
        let client = kube::Client::try_from(config).context("cannot build a tenant client")?;
        Ok(Self { apiserver, client })
    }

    /// `host:port`, what Machines put in `spec.join.*.endpoint`.
    pub fn endpoint(&self) -> String {
        let url = self.apiserver.url();
        url.trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_string()
    }

    /// `sha256:<hex>` of the cluster CA's public key, for `kubeadm join
    /// --discovery-token-ca-cert-hash`.
    pub fn ca_cert_hash(&self) -> anyhow::Result<String> {
        self.apiserver
            .access()
            .context("the tenant API server runs without TLS")?
            .ca_cert_hash()
            .context("cannot hash the tenant cluster's CA certificate")
    }

    /// The kubeconfig of the tenant cluster.
    pub fn kubeconfig_path(&self) -> Option<&Path> {
        self.apiserver.kubeconfig_path()
    }

    /// What the machine controller needs to watch this cluster's Nodes.
    pub fn controller_view(&self) -> vmetal_controller::machine::TenantCluster {
        vmetal_controller::machine::TenantCluster {
            endpoint: self.endpoint(),
            client: self.client.clone(),
        }
    }

    /// Create a bootstrap token valid for `ttl` (Secret `kube-system/bootstrap-token-<id>`, as
    /// `kubeadm token create` / `vcluster token create` do) and return `<id>.<secret>`.
    pub async fn create_bootstrap_token(&self, ttl: Duration) -> anyhow::Result<String> {
        let id = random_lower_alnum(6)?;
        let secret = random_lower_alnum(16)?;
        let expiration = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::try_from(ttl).context("token lifetime too long")?)
            .context("token lifetime too long")?
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let data: BTreeMap<String, ByteString> = [
            ("token-id", id.as_str()),
            ("token-secret", secret.as_str()),
            ("expiration", expiration.as_str()),
            ("usage-bootstrap-authentication", "true"),
            ("usage-bootstrap-signing", "true"),
            (
                "auth-extra-groups",
                "system:bootstrappers:kubeadm:default-node-token",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        let object = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("bootstrap-token-{id}")),
                namespace: Some("kube-system".into()),
                ..Default::default()
            },
            type_: Some("bootstrap.kubernetes.io/token".into()),
            data: Some(data),
            ..Default::default()
        };
        Api::<Secret>::namespaced(self.client.clone(), "kube-system")
            .create(&PostParams::default(), &object)
            .await
            .context("cannot create the bootstrap token Secret in the tenant cluster")?;
        Ok(format!("{id}.{secret}"))
    }

    /// Create a fresh bootstrap token and store it in the host cluster as Secret
    /// `namespace/name` (key `token`), replacing an older one.
    pub async fn publish_join_secret(
        &self,
        host: &kube::Client,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> anyhow::Result<()> {
        let token = self.create_bootstrap_token(ttl).await?;
        let secrets: Api<Secret> = Api::namespaced(host.clone(), namespace);
        let mut object = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "token".to_string(),
                ByteString(token.into_bytes()),
            )])),
            ..Default::default()
        };
        match secrets.get_opt(name).await? {
            Some(existing) => {
                object.metadata.resource_version = existing.metadata.resource_version;
                secrets.replace(name, &PostParams::default(), &object).await
            }
            None => secrets.create(&PostParams::default(), &object).await,
        }
        .with_context(|| format!("cannot write the join token Secret {namespace}/{name}"))?;
        Ok(())
    }
}

fn random_lower_alnum(n: usize) -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        // 252 = 7 * 36: reject the tail so every character is equally likely.
        for b in buf.iter().filter(|b| **b < 252) {
            if out.len() == n {
                break;
            }
            out.push(ALPHABET[usize::from(*b) % ALPHABET.len()] as char);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_bootstrap_shape() {
        let id = random_lower_alnum(6).unwrap();
        let secret = random_lower_alnum(16).unwrap();
        let token = format!("{id}.{secret}");
        assert!(vmetal_apiserver::access::bootstrap::parse(&token).is_some());
        assert_ne!(random_lower_alnum(16).unwrap(), secret);
    }
}
