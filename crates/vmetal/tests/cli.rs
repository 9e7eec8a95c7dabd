//! The `vmetal` binary as a user runs it: `crds`, `version`, and the CRDs and examples accepted
//! by a real kubectl talking to our embedded API server.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::process::{Command, Stdio};

use assert_cmd::cargo::CommandCargoExt;
use vmetal_apiserver::{Registry, server};

fn vmetal() -> Command {
    Command::cargo_bin("vmetal").unwrap()
}

fn kubectl_available() {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "kubectl is required for this test; install it (Debian: apt-get install -y kubernetes-client) or run ./test.sh, which does"
    );
}

fn kubectl(server: &str, args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("kubectl")
        .arg("--server")
        .arg(server)
        .args(args)
        // An empty kubeconfig and cache so nothing from the machine leaks in.
        .env("KUBECONFIG", dir.path().join("config"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn version_prints_the_served_apis() {
    let out = vmetal().arg("version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!("vmetal {}", env!("CARGO_PKG_VERSION"))));
    assert!(text.contains("metal3.io/v1alpha1 BareMetalHost"));
    assert!(text.contains("vmetal.io/v1alpha1 Machine"));
}

#[test]
fn crds_output_is_two_crd_documents() {
    let out = vmetal().arg("crds").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let names: Vec<String> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap();
            assert_eq!(v["kind"].as_str(), Some("CustomResourceDefinition"));
            v["metadata"]["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(names, ["baremetalhosts.metal3.io", "machines.vmetal.io"]);
}

#[test]
fn crds_dir_writes_the_checked_in_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = vmetal()
        .args(["crds", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    for name in ["metal3.io_baremetalhosts.yaml", "vmetal.io_machines.yaml"] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(name)).unwrap(),
            std::fs::read_to_string(repo.join(name)).unwrap(),
            "{name} differs from deploy/crds"
        );
    }
}

#[test]
fn unknown_subcommand_fails_with_usage() {
    let out = vmetal().arg("frobnicate").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_accepts_the_crds_and_the_examples() {
    kubectl_available();
    let mut registry = Registry::with_builtins();
    let api = server::start_with(
        vmetal_apiserver::ApiServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            data_dir: None,
        },
        registry.clone(),
    )
    .await
    .unwrap();
    let url = api.url();

    let crds = vmetal().arg("crds").output().unwrap().stdout;
    let (ok, text) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || kubectl(&url, &["apply", "--dry-run=client", "-f", "-"], Some(&crds))
    })
    .await
    .unwrap();
    assert!(ok, "kubectl rejected `vmetal crds`: {text}");
    assert!(text.contains("customresourcedefinition.apiextensions.k8s.io/baremetalhosts.metal3.io created (dry run)"), "{text}");
    assert!(
        text.contains("machines.vmetal.io created (dry run)"),
        "{text}"
    );

    // Once the CRDs are served, kubectl maps the example manifests to them.
    for crd in vmetal_api::crds::all() {
        registry.add_crd(&crd);
    }
    *api.registry().write().unwrap() = registry;
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    let (ok, text) = tokio::task::spawn_blocking(move || {
        kubectl(
            &url,
            &[
                "apply",
                "--dry-run=client",
                "-k",
                examples.to_str().unwrap(),
            ],
            None,
        )
    })
    .await
    .unwrap();
    assert!(ok, "kubectl rejected deploy/examples: {text}");
    assert!(
        text.contains("baremetalhost.metal3.io/worker-0 created (dry run)"),
        "{text}"
    );
    assert!(
        text.contains("machine.vmetal.io/tenant-a-node-0 created (dry run)"),
        "{text}"
    );
}
