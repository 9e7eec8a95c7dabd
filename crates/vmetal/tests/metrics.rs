//! The Prometheus endpoint after an end-to-end lab run: hosts by state, transitions, operation
//! durations, BMC latency and errors by driver, agent API requests, health, and the boot
//! server's DHCP counters, each scraped over HTTP as Prometheus would.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmetal::up::{Stack, UpConfig};
use vmetal_api::{BareMetalHost, ProvisioningState};

async fn stack(lab: u32, dir: &std::path::Path) -> Stack {
    let mut config = UpConfig::new(dir.to_path_buf());
    config.apiserver_bind = "127.0.0.1:0".parse().unwrap();
    config.agent_bind = "127.0.0.1:0".parse().unwrap();
    config.lab = lab;
    config.boot_delay = Duration::from_millis(10);
    config.controller.operation_poll = Duration::from_millis(500);
    config.controller.operation_timeout = Duration::from_secs(60);
    config.controller.backoff_base = Duration::from_millis(200);
    config.controller.backoff_cap = Duration::from_secs(2);
    Stack::start(config).await.unwrap()
}

/// A plain HTTP/1.0 GET: status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample whose line starts with `series` (name and labels), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sum of every sample of `name` whose labels contain all of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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
            "{name} did not reach {want}: {:?}",
            h.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A ProxyDHCP REQUEST to the PXE port; the answer comes back to the sender.
fn pxe_request(mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![1, 1, 6, 0, 0, 0, 0, 42, 0, 0, 0, 0];
    p.extend(Ipv4Addr::LOCALHOST.octets());
    p.extend([0; 12]);
    p.extend(mac);
    p.extend([0; 10 + 64 + 128]);
    p.extend([99, 130, 83, 99, 53, 1, 3, 60, 9]);
    p.extend(b"PXEClient");
    p.extend([93, 2, 0, 0, 255]);
    p
}

async fn ask(server: SocketAddr, mac: [u8; 6]) -> Option<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    sock.send_to(&pxe_request(mac), server).await.unwrap();
    let mut buf = vec![0u8; 1500];
    match tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let v: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

async fn start_boot(client: kube::Client, root: &std::path::Path) -> vmetal_boot::RunningBoot {
    use vmetal_boot::dhcp::{DhcpConfig, Mode};
    let lo = Ipv4Addr::LOCALHOST;
    let base = "http://127.0.0.1:1".to_owned();
    let config = vmetal_boot::service::BootServiceConfig {
        dhcp: DhcpConfig::new(Mode::Proxy, lo, 1),
        interface: None,
        dhcp_bind: SocketAddrV4::new(lo, 0),
        pxe_bind: SocketAddrV4::new(lo, 0),
        tftp_bind: None,
        tftp_root: root.to_path_buf(),
        http_bind: SocketAddr::from((lo, 0)),
        http: vmetal_boot::http::HttpConfig {
            boot: vmetal_provisioner::ipxe::BootConfig {
                kernel_url: format!("{base}/boot/vmlinuz"),
                initramfs_url: format!("{base}/boot/initramfs"),
                agent_api_url: base,
                extra_kernel_args: vec![],
            },
            artifacts_dir: None,
            ipxe_dir: None,
            allow_unknown: false,
        },
        agent_api: None,
        lease_file: None,
        router_advertisements: false,
    };
    let hosts = vmetal_boot::HostsHandle::default();
    tokio::spawn(vmetal_boot::watch::watch_hosts(client, None, hosts.clone()));
    vmetal_boot::start(config, hosts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_after_a_lab_run_cover_hosts_bmc_agent_api_and_dhcp() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(2, dir.path()).await;
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

    // A host whose BMC does not answer: its failed calls are counted as errors.
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "dead-bmc"},
                "stringData": {"username": "u", "password": "p"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    hosts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                "metadata": {"name": "dead"},
                "spec": {"online": false, "bmc": {
                    "address": "redfish+http://127.0.0.1:1/redfish/v1/Systems/1",
                    "credentialsName": "dead-bmc"}}
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    // Provision the first server (Redfish), then give it back.
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

    // The boot server answers the second server's PXE request and ignores an unknown MAC.
    let root = tempfile::tempdir().unwrap();
    let boot = start_boot(stack.client.clone(), root.path()).await;
    let mac = mac_bytes(
        &stack.lab.as_ref().unwrap().servers[1]
            .server
            .identity()
            .boot_mac,
    );
    let mut answered = false;
    for _ in 0..20 {
        if ask(boot.dhcp_addrs[1], mac).await.is_some() {
            answered = true;
            break;
        }
    }
    assert!(answered, "the boot server never answered a lab server");
    assert_eq!(ask(boot.dhcp_addrs[1], [2, 0, 0, 0, 0, 1]).await, None);

    let agent: SocketAddr = stack
        .agent_api_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    assert_eq!(http_get(agent, "/healthz").await.0, 200);
    assert_eq!(http_get(agent, "/readyz").await.0, 200);

    // Hosts by state come from the controller's cache: wait for it to see the last change.
    let start = Instant::now();
    let text = loop {
        let (status, text) = http_get(agent, "/metrics").await;
        assert_eq!(status, 200);
        if sample(&text, r#"vmetal_hosts{state="available"}"#) == Some(2.0)
            && sum(&text, "vmetal_bmc_errors_total", &[]) >= 1.0
        {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "hosts gauge or BMC errors never settled:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Hosts by state: two lab hosts available, the dead one stuck registering.
    assert_eq!(
        sample(&text, r#"vmetal_hosts{state="registering"}"#),
        Some(1.0),
        "{text}"
    );
    // Every saved transition once per host.
    let t = |from: &str, to: &str| {
        sample(
            &text,
            &format!(r#"vmetal_host_transitions_total{{from="{from}",to="{to}"}}"#),
        )
    };
    assert_eq!(t("none", "registering"), Some(3.0), "{text}");
    assert_eq!(t("registering", "inspecting"), Some(2.0), "{text}");
    assert_eq!(t("inspecting", "available"), Some(2.0), "{text}");
    assert_eq!(t("available", "provisioning"), Some(1.0), "{text}");
    assert_eq!(t("provisioning", "provisioned"), Some(1.0), "{text}");
    assert_eq!(t("provisioned", "deprovisioning"), Some(1.0), "{text}");
    assert_eq!(t("deprovisioning", "available"), Some(1.0), "{text}");
    // One duration per finished operation, each taking some time but less than the run.
    for (op, n) in [
        ("register", 2.0),
        ("inspect", 2.0),
        ("provision", 1.0),
        ("deprovision", 1.0),
    ] {
        let count = sample(
            &text,
            &format!(r#"vmetal_host_operation_seconds_count{{operation="{op}"}}"#),
        );
        assert_eq!(count, Some(n), "{op}: {text}");
        let seconds = sample(
            &text,
            &format!(r#"vmetal_host_operation_seconds_sum{{operation="{op}"}}"#),
        )
        .unwrap();
        assert!((0.0..120.0).contains(&seconds), "{op} took {seconds}s");
    }
    assert!(sum(&text, "vmetal_host_operation_seconds_sum", &["provision"]) > 0.0);
    // BMC calls of both drivers were timed; the dead BMC's failures are counted.
    for driver in ["redfish", "ipmi"] {
        let calls = sum(
            &text,
            "vmetal_bmc_call_seconds_count",
            &[&format!(r#"driver="{driver}""#)],
        );
        assert!(calls >= 4.0, "{driver}: {calls} calls\n{text}");
    }
    assert!(
        sum(
            &text,
            "vmetal_bmc_errors_total",
            &[r#"driver="redfish""#, r#"kind="transient""#]
        ) >= 1.0,
        "{text}"
    );
    // Agents looked up and heartbeated through the counted router.
    for path in ["/v1/lookup", "/v1/heartbeat"] {
        let n = sum(
            &text,
            "vmetal_agent_api_requests_total",
            &[&format!(r#"path="{path}""#), r#"status="200""#],
        );
        assert!(n >= 1.0, "{path}: {n}\n{text}");
    }
    assert_eq!(sample(&text, "vmetal_leader"), Some(1.0), "{text}");

    // The boot server's own /metrics has the DHCP counters.
    let (status, boot_text) = http_get(boot.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        sum(&boot_text, "vmetal_boot_dhcp_requests_total", &[]) >= 2.0,
        "{boot_text}"
    );
    assert!(
        sum(&boot_text, "vmetal_boot_dhcp_replies_total", &[]) >= 1.0,
        "{boot_text}"
    );
    assert!(
        sum(&boot_text, "vmetal_boot_dhcp_ignored_total", &[]) >= 1.0,
        "{boot_text}"
    );
    stack.stop().await;
}
