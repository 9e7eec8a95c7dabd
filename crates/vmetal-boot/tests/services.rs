//! The boot services over real sockets on loopback: TFTP against curl (a client we did not
//! write), HTTP scripts, artifacts with Range, the callback proxy, and the known-hosts set
//! following BareMetalHosts created in the embedded API server without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use axum::http::HeaderMap;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use vmetal_api::BareMetalHost;
use vmetal_api::ProvisioningState;
use vmetal_api::mac::MacAddress;
use vmetal_boot::dhcp::{DhcpConfig, Mode};
use vmetal_boot::hosts::{HostsHandle, KnownHost, KnownHosts};
use vmetal_boot::http::HttpConfig;
use vmetal_boot::service::BootServiceConfig;
use vmetal_provisioner::ipxe::BootConfig;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn config(
    mode: Mode,
    root: &Path,
    artifacts: &Path,
    agent_api: Option<String>,
) -> BootServiceConfig {
    let base = "http://127.0.0.1:1".to_owned();
    BootServiceConfig {
        dhcp: DhcpConfig::new(mode, LOOPBACK, 1),
        interface: None,
        dhcp_bind: SocketAddrV4::new(LOOPBACK, 0),
        pxe_bind: SocketAddrV4::new(LOOPBACK, 0),
        tftp_bind: Some(SocketAddrV4::new(LOOPBACK, 0)),
        tftp_root: root.to_path_buf(),
        http_bind: SocketAddr::from((LOOPBACK, 0)),
        http: HttpConfig {
            boot: BootConfig {
                kernel_url: format!("{base}/boot/vmlinuz"),
                initramfs_url: format!("{base}/boot/initramfs"),
                agent_api_url: base,
                extra_kernel_args: vec![],
            },
            artifacts_dir: Some(artifacts.to_path_buf()),
            ipxe_dir: Some(root.to_path_buf()),
            allow_unknown: false,
        },
        agent_api,
        lease_file: None,
        router_advertisements: false,
    }
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is missing: apt-get install -y curl")
}

fn known(mac: &str, state: ProvisioningState) -> HostsHandle {
    let mut hosts = KnownHosts::new();
    hosts.insert(
        MacAddress::parse(mac).unwrap(),
        KnownHost {
            name: "default/h".into(),
            state,
            reservation: None,
        },
    );
    HostsHandle::new(hosts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_serves_files_to_curl_and_refuses_traversal() {
    let root = tempfile::tempdir().unwrap();
    let artifacts = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.path().join("undionly.kpxe"), &payload).unwrap();
    // Exactly two blocks of 512: the transfer must end with an empty DATA block.
    std::fs::write(root.path().join("even.bin"), vec![1u8; 1024]).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.path().join("escape")).unwrap();
    let running = vmetal_boot::start(
        config(Mode::Off, root.path(), artifacts.path(), None),
        HostsHandle::default(),
    )
    .await
    .unwrap();
    let port = running.tftp_addr.unwrap().port();
    let out = tempfile::tempdir().unwrap();
    for (file, blksize) in [
        ("undionly.kpxe", "512"),
        ("undionly.kpxe", "1432"),
        ("even.bin", "512"),
    ] {
        let dest = out.path().join(format!("{file}.{blksize}"));
        let url = format!("tftp://127.0.0.1:{port}/{file}");
        let o = tokio::task::spawn_blocking({
            let dest = dest.clone();
            move || {
                curl(&[
                    "--tftp-blksize",
                    blksize,
                    "-o",
                    dest.to_str().unwrap(),
                    &url,
                ])
            }
        })
        .await
        .unwrap();
        assert!(
            o.status.success(),
            "curl {file}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let want = std::fs::read(root.path().join(file)).unwrap();
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            want,
            "{file} with blksize {blksize}"
        );
    }
    for bad in ["../../etc/passwd", "/etc/passwd", "escape", "missing.efi"] {
        let url = format!("tftp://127.0.0.1:{port}/{bad}");
        let dest = out.path().join("bad");
        let o = tokio::task::spawn_blocking({
            let dest = dest.clone();
            move || curl(&["--path-as-is", "-o", dest.to_str().unwrap(), &url])
        })
        .await
        .unwrap();
        assert!(!o.status.success(), "{bad} was served");
        let got = std::fs::read(&dest).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&got).contains("root:"),
            "{bad} leaked /etc/passwd"
        );
    }
    let metrics = running.metrics.render();
    assert!(
        metrics.contains("vmetal_boot_tftp_transfers_total{result=\"ok\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("result=\"denied\""), "{metrics}");
}

async fn upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/lookup",
        post(|headers: HeaderMap, body: axum::body::Bytes| async move {
            let auth = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            axum::Json(serde_json::json!({ "auth": auth, "body": String::from_utf8_lossy(&body) }))
        }),
    );
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        addr,
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_scripts_artifacts_with_range_and_callback_proxy() {
    let root = tempfile::tempdir().unwrap();
    let artifacts = tempfile::tempdir().unwrap();
    std::fs::write(artifacts.path().join("vmlinuz"), b"0123456789").unwrap();
    let (up, _up_task) = upstream().await;
    let running = vmetal_boot::start(
        config(
            Mode::Off,
            root.path(),
            artifacts.path(),
            Some(format!("http://{up}")),
        ),
        known("52:54:00:00:00:0a", ProvisioningState::Inspecting),
    )
    .await
    .unwrap();
    let http = running.http_addr;
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&args)
        })
        .await
        .unwrap()
    };
    let o = run(vec![format!("http://{http}/boot/52-54-00-00-00-0A.ipxe")]).await;
    let script = String::from_utf8_lossy(&o.stdout);
    assert!(
        script.starts_with("#!ipxe") && script.contains("kernel http://127.0.0.1:1/boot/vmlinuz"),
        "{script}"
    );
    assert!(script.contains("vmetal.mac=52:54:00:00:00:0a"), "{script}");
    let o = run(vec![format!("http://{http}/boot/52:54:00:00:00:0b.ipxe")]).await;
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\nexit\n"),
        "unknown MAC boots from disk"
    );
    let o = run(vec![
        "-i".into(),
        "-r".into(),
        "2-5".into(),
        format!("http://{http}/boot/vmlinuz"),
    ])
    .await;
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("HTTP/1.1 206"), "{text}");
    assert!(text.ends_with("\r\n\r\n2345"), "{text}");
    let o = run(vec![
        "-H".into(),
        "Authorization: Bearer s3cret-token".into(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "-d".into(),
        "{\"mac\":\"x\"}".into(),
        format!("http://{http}/v1/lookup"),
    ])
    .await;
    let echoed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        echoed["auth"], "Bearer s3cret-token",
        "token passed through unchanged"
    );
    assert_eq!(echoed["body"], "{\"mac\":\"x\"}");
    let big = root.path().join("big.json");
    std::fs::write(&big, vec![b'a'; 2 * 1024 * 1024]).unwrap();
    let o = run(vec![
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        "--data-binary".into(),
        format!("@{}", big.display()),
        format!("http://{http}/v1/lookup"),
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&o.stdout), "413", "body limit");
}

/// A ProxyDHCP REQUEST to the PXE port (4011), whose answer comes back to the sender.
fn pxe_request(mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![1, 1, 6, 0, 0, 0, 0, 42, 0, 0, 0, 0];
    p.extend(LOOPBACK.octets()); // ciaddr
    p.extend([0; 12]);
    p.extend(mac);
    p.extend([0; 10 + 64 + 128]);
    p.extend([99, 130, 83, 99, 53, 1, 3, 60, 9]);
    p.extend(b"PXEClient");
    p.extend([93, 2, 0, 0, 255]);
    p
}

async fn ask(server: SocketAddr, mac: [u8; 6]) -> Option<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    sock.send_to(&pxe_request(mac), server).await.unwrap();
    let mut buf = vec![0u8; 1500];
    match tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_baremetalhost_is_served_without_restart() {
    let data = tempfile::tempdir().unwrap();
    let server = vmetal_apiserver::start(vmetal_apiserver::ApiServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(data.path().to_path_buf()),
    })
    .await
    .unwrap();
    vmetal_apiserver::server::install_crds(server.objects(), &vmetal_api::crds::all()).unwrap();
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig_path().unwrap()).unwrap();
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let hosts = HostsHandle::default();
    let _watch = tokio::spawn(vmetal_boot::watch::watch_hosts(
        client.clone(),
        None,
        hosts.clone(),
    ));
    let root: PathBuf = tempfile::tempdir().unwrap().keep();
    let running = vmetal_boot::start(config(Mode::Proxy, &root, &root, None), hosts.clone())
        .await
        .unwrap();
    let pxe = running.dhcp_addrs[1];
    let mac = [0x52, 0x54, 0x00, 0xbe, 0xef, 0x01];
    assert_eq!(ask(pxe, mac).await, None, "an unknown MAC gets nothing");

    let bmh: BareMetalHost = serde_json::from_value(serde_json::json!({
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": {"name": "new-host", "namespace": "default"},
        "spec": {"online": true, "bootMACAddress": "52:54:00:BE:EF:01"}
    }))
    .unwrap();
    Api::<BareMetalHost>::namespaced(client, "default")
        .create(&PostParams::default(), &bmh)
        .await
        .unwrap();
    let mut answer = None;
    for _ in 0..20 {
        answer = ask(pxe, mac).await;
        if answer.is_some() {
            break;
        }
    }
    let answer = answer.expect("the new host's MAC was not served within 10 s");
    let file = &answer[108..236];
    assert!(
        file.starts_with(b"undionly.kpxe\0"),
        "{:?}",
        String::from_utf8_lossy(file)
    );
    assert!(answer.len() >= 300);
    let _ = std::fs::remove_dir_all(root);
}
