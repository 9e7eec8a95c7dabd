//! The `deploy/` kustomizations: `deploy/default` renders and is accepted by
//! `kubectl apply --server-side` against the embedded API server, and the rendered RBAC allows
//! every API call the controller (with its agent API) and the boot server made in a lab run,
//! recorded from their clients — the rules are checked against an audit, not written by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use vmetal::controller_cmd::{self, ControllerOptions};
use vmetal::up::{Stack, UpConfig};
use vmetal_api::{BareMetalHost, ProvisioningState};
use vmetal_controller::leader::LeaderConfig;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .expect("kubectl is missing");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn render(dir: &str) -> String {
    kubectl(&["kustomize", deploy_dir().join(dir).to_str().unwrap()])
}

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_renders_and_applies_server_side_to_the_embedded_api_server() {
    let rendered = render("default");
    let docs = documents(&rendered);
    let kinds: BTreeSet<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "NetworkAttachmentDefinition",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from deploy/default");
    }
    assert!(
        !kinds.contains("ConfigMap"),
        "the parameters ConfigMap is local-config"
    );
    let controller = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "vmetal-controller")
        .unwrap();
    assert_eq!(controller["spec"]["replicas"], 2);
    let c = &controller["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        controller["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    let boot = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "vmetal-boot")
        .unwrap();
    let networks =
        boot["spec"]["template"]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"]
            .as_str()
            .unwrap();
    let networks: serde_json::Value = serde_json::from_str(networks).unwrap();
    assert_eq!(networks[0]["name"], "vmetal-provisioning");
    assert_eq!(
        boot["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"],
        json!(["NET_BIND_SERVICE", "NET_RAW"])
    );
    // The alternative without Multus renders too, without the attachment.
    let hostnet = render("boot/hostnetwork");
    assert!(hostnet.contains("hostNetwork: true"));
    assert!(!hostnet.contains("NetworkAttachmentDefinition"));
    assert!(!hostnet.contains("k8s.v1.cni.cncf.io/networks"));

    let data = tempfile::tempdir().unwrap();
    let server = vmetal_apiserver::start(vmetal_apiserver::ApiServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(data.path().to_path_buf()),
    })
    .await
    .unwrap();
    let kubeconfig = server
        .kubeconfig_path()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let file = data.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let multus = deploy_dir().join("multus-crd");
    let apply = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", &kubeconfig, "apply", "--server-side"];
        all.extend_from_slice(args);
        let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            kubectl(&refs)
        })
    };
    // Clusters without Multus need its CRD first (Multus clusters already have it).
    apply(&["-k", multus.to_str().unwrap()]).await.unwrap();
    let start = Instant::now();
    loop {
        let out = Command::new("kubectl")
            .args([
                "--kubeconfig",
                &kubeconfig,
                "get",
                "network-attachment-definitions",
                "-A",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "NAD CRD never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = apply(&["-f", file.to_str().unwrap()]).await.unwrap();
    for object in [
        "namespace/vmetal-system",
        "deployment.apps/vmetal-controller",
        "deployment.apps/vmetal-boot",
        "networkattachmentdefinition.k8s.cni.cncf.io/vmetal-provisioning",
        "clusterrole.rbac.authorization.k8s.io/vmetal-controller",
        "role.rbac.authorization.k8s.io/vmetal-controller-leader-election",
    ] {
        assert!(out.contains(object), "{object} not applied:\n{out}");
    }
    // Applying again (an upgrade with nothing changed) is accepted as well.
    apply(&["-f", file.to_str().unwrap()]).await.unwrap();
    let got = kubectl(&[
        "--kubeconfig",
        &kubeconfig,
        "get",
        "deployments",
        "-n",
        "vmetal-system",
        "-o",
        "name",
    ]);
    assert!(got.contains("deployment.apps/vmetal-controller"), "{got}");
    assert!(got.contains("deployment.apps/vmetal-boot"), "{got}");
}

// ---- RBAC audit ----

/// (process, method, path and query) of every request the recording clients sent.
static AUDIT: Mutex<Vec<(&'static str, String, String)>> = Mutex::new(Vec::new());

fn recording_client(config: kube::Config, who: &'static str) -> kube::Result<kube::Client> {
    let record = move |req: axum::http::Request<kube::client::Body>| {
        AUDIT.lock().unwrap_or_else(|p| p.into_inner()).push((
            who,
            req.method().to_string(),
            req.uri().to_string(),
        ));
        req
    };
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::ServiceBuilder::new().map_request(record))
        .build())
}

fn controller_client(config: kube::Config) -> kube::Result<kube::Client> {
    recording_client(config, "vmetal-controller")
}

/// One API call in RBAC terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    verb: String,
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// RBAC terms of a request (`None` for discovery and other non-resource URLs).
fn call(method: &str, uri: &str) -> Option<Call> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let path = path
        .strip_prefix("http://")
        .or_else(|| path.strip_prefix("https://"))
        .map(|p| &p[p.find('/').unwrap_or(p.len())..])
        .unwrap_or(path);
    let seg: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match seg.first() {
        Some(&"api") if seg.len() > 2 => ("", &seg[2..]),
        Some(&"apis") if seg.len() > 3 => (seg[1], &seg[3..]),
        _ => return None,
    };
    let (namespace, rest) = if rest[0] == "namespaces" && rest.len() > 2 {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let resource = match rest.get(2) {
        Some(sub) => format!("{}/{sub}", rest[0]),
        None => rest[0].to_string(),
    };
    let name = rest.get(1).map(|s| s.to_string());
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some(Call {
        verb: verb.into(),
        group: group.into(),
        resource,
        namespace,
        name,
    })
}

/// A rule with where it applies (`None`: cluster-wide through a ClusterRoleBinding).
struct Grant {
    namespace: Option<String>,
    rule: serde_json::Value,
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The rules bound to ServiceAccount `sa` in the rendered RBAC.
fn grants(docs: &[serde_json::Value], sa: &str) -> Vec<Grant> {
    let role = |kind: &str, name: &str, ns: Option<&str>| {
        docs.iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"] == name
                    && ns.is_none_or(|ns| d["metadata"]["namespace"] == ns)
            })
            .map(|d| d["rules"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for b in docs {
        let kind = b["kind"].as_str().unwrap_or_default();
        if kind != "ClusterRoleBinding" && kind != "RoleBinding" {
            continue;
        }
        let bound = b["subjects"].as_array().into_iter().flatten().any(|s| {
            s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == "vmetal-system"
        });
        if !bound {
            continue;
        }
        let binding_ns = b["metadata"]["namespace"].as_str();
        let role_kind = b["roleRef"]["kind"].as_str().unwrap();
        let role_name = b["roleRef"]["name"].as_str().unwrap();
        let namespace = if kind == "RoleBinding" {
            binding_ns.map(String::from)
        } else {
            None
        };
        let rules = if role_kind == "Role" {
            role("Role", role_name, binding_ns)
        } else {
            role("ClusterRole", role_name, None)
        };
        out.extend(rules.into_iter().map(|rule| Grant {
            namespace: namespace.clone(),
            rule,
        }));
    }
    out
}

/// Whether Kubernetes RBAC would allow `c` under `grants`.
fn allowed(grants: &[Grant], c: &Call) -> bool {
    grants.iter().any(|g| {
        let has = |field: &str, want: &str| {
            strings(&g.rule[field])
                .iter()
                .any(|v| v == "*" || v == want)
        };
        let names = strings(&g.rule["resourceNames"]);
        (g.namespace.is_none() || g.namespace == c.namespace)
            && has("apiGroups", &c.group)
            && has("resources", &c.resource)
            && has("verbs", &c.verb)
            && (names.is_empty() || c.name.as_ref().is_some_and(|n| names.contains(n)))
    })
}

async fn wait_state(hosts: &Api<BareMetalHost>, name: &str, want: ProvisioningState) {
    let start = Instant::now();
    loop {
        let h = hosts.get(name).await.unwrap();
        if h.provisioning_state() == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} did not reach {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rbac_allows_every_call_the_controller_and_boot_server_make() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = UpConfig::new(dir.path().to_path_buf());
    config.apiserver_bind = "127.0.0.1:0".parse().unwrap();
    config.agent_bind = "127.0.0.1:0".parse().unwrap();
    config.lab = 2;
    config.boot_delay = Duration::from_millis(10);
    config.run_controller = false;
    config.agent_client = Some(controller_client);
    let stack = Stack::start(config).await.unwrap();
    let admin_config = vmetal::up::config_for(&stack.apiserver).await.unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(stack.client.clone());
    namespaces
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "vmetal-system"}})).unwrap(),
        )
        .await
        .unwrap();

    // The controller as deployed: leader-elected in vmetal-system, every namespace watched.
    let mut options = ControllerOptions {
        leader: Some(LeaderConfig {
            retry_period: Duration::from_millis(300),
            ..LeaderConfig::new("vmetal-system", "vmetal-controller", "audit".to_string())
        }),
        ..ControllerOptions::default()
    };
    options.controller.operation_poll = Duration::from_millis(500);
    options.controller.backoff_base = Duration::from_millis(200);
    options.controller.backoff_cap = Duration::from_secs(2);
    let controller =
        controller_cmd::start(controller_client(admin_config.clone()).unwrap(), options)
            .await
            .unwrap();
    let boot_hosts = vmetal_boot::HostsHandle::default();
    let boot = tokio::spawn(vmetal_boot::watch::watch_hosts(
        recording_client(admin_config, "vmetal-boot").unwrap(),
        None,
        boot_hosts,
    ));

    // A whole lifecycle: register, inspect, provision, deprovision, delete.
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    let names: Vec<String> = stack
        .lab
        .as_ref()
        .unwrap()
        .servers
        .iter()
        .map(|s| s.name.clone())
        .collect();
    for name in &names {
        wait_state(&hosts, name, ProvisioningState::Available).await;
    }
    let url = stack.image_url("demo.raw");
    let patch = json!({"spec": {"online": true, "image": {
        "url": url, "checksum": format!("{url}.sha256sum"), "checksumType": "sha256", "format": "raw"}}});
    hosts
        .patch(&names[0], &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    wait_state(&hosts, &names[0], ProvisioningState::Provisioned).await;
    hosts
        .patch(
            &names[0],
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": null, "online": false}})),
        )
        .await
        .unwrap();
    wait_state(&hosts, &names[0], ProvisioningState::Available).await;
    hosts
        .delete(&names[1], &DeleteParams::default())
        .await
        .unwrap();
    let start = Instant::now();
    while hosts.get_opt(&names[1]).await.unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "host not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    controller.stop().await;
    boot.abort();

    let rbac = documents(&render("rbac"));
    let audit = AUDIT.lock().unwrap().clone();
    let mut seen: BTreeSet<(&str, Call)> = BTreeSet::new();
    for (who, method, uri) in &audit {
        if let Some(c) = call(method, uri) {
            seen.insert((who, c));
        }
    }
    let denied: Vec<_> = seen
        .iter()
        .filter(|(who, c)| !allowed(&grants(&rbac, who), c))
        .collect();
    assert!(
        denied.is_empty(),
        "deploy/rbac denies calls made in the lab run: {denied:#?}"
    );
    // The audit saw the calls that matter (so an empty recording cannot pass).
    let verbs: BTreeSet<(&str, String, String)> = seen
        .iter()
        .map(|(who, c)| (*who, c.verb.clone(), c.resource.clone()))
        .collect();
    for (who, verb, resource) in [
        ("vmetal-controller", "watch", "baremetalhosts"),
        ("vmetal-controller", "patch", "baremetalhosts/status"),
        ("vmetal-controller", "create", "secrets"),
        ("vmetal-controller", "update", "leases"),
        ("vmetal-boot", "watch", "baremetalhosts"),
    ] {
        assert!(
            verbs.contains(&(who, verb.into(), resource.into())),
            "{who} never did {verb} {resource}: {verbs:#?}"
        );
    }
    // And the boot server's RBAC does not let it write anything.
    let boot_grants = grants(&rbac, "vmetal-boot");
    let write = Call {
        verb: "patch".into(),
        group: "metal3.io".into(),
        resource: "baremetalhosts".into(),
        namespace: Some("default".into()),
        name: Some("x".into()),
    };
    assert!(!allowed(&boot_grants, &write));
    eprintln!("audited calls: {verbs:#?}");
    stack.stop().await;
}

#[test]
fn request_paths_map_to_rbac_terms() {
    let c = call(
        "PATCH",
        "/apis/metal3.io/v1alpha1/namespaces/default/baremetalhosts/h1/status?fieldManager=x",
    )
    .unwrap();
    assert_eq!(
        (c.verb.as_str(), c.group.as_str(), c.resource.as_str()),
        ("patch", "metal3.io", "baremetalhosts/status")
    );
    let c = call("GET", "/api/v1/secrets?watch=true&resourceVersion=1").unwrap();
    assert_eq!((c.verb.as_str(), c.namespace), ("watch", None));
    let c = call("POST", "/api/v1/namespaces/default/events").unwrap();
    assert_eq!((c.verb.as_str(), c.resource.as_str()), ("create", "events"));
    assert_eq!(call("GET", "/apis"), None);
}
