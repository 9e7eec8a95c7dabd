//! The real `curl` (a client nobody here wrote) against our virtual Redfish BMC: the resources
//! and properties DMTF requires, a Reset action, boot PATCH with ETags, 401, and sessions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use serde_json::{Value, json};
use vmetal_bmc::{BootDevice, PowerState};
use vmetal_lab::redfish::{RedfishConfig, RedfishService, RunningRedfish};
use vmetal_lab::{ServerIdentity, SimulatedServer};

const USER: &str = "admin";
const PASSWORD: &str = "curl-Pa55";

async fn lab(tls: bool) -> (RunningRedfish, SimulatedServer) {
    let server = SimulatedServer::new(ServerIdentity::numbered(0));
    let config = RedfishConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        tls,
    };
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let running = RedfishService::start(bind, vec![server.clone()], config)
        .await
        .unwrap();
    (running, server)
}

/// What curl got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Run curl with `args` (plus `-s -i`) and parse the status line, headers and body.
async fn curl(args: &[&str]) -> Answer {
    let output = tokio::process::Command::new("curl")
        .args(["-s", "-S", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("curl is required for this test (install Debian's curl package): {e}")
        });
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn basic() -> String {
    format!("{USER}:{PASSWORD}")
}

/// `#Namespace.v1_x_y.Type`, as DMTF versioned types are written.
fn is_versioned_type(value: &Value, namespace: &str) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    let Some(rest) = text.strip_prefix(&format!("#{namespace}.v")) else {
        return false;
    };
    let Some((version, ty)) = rest.split_once('.') else {
        return false;
    };
    let parts: Vec<&str> = version.split('_').collect();
    ty == namespace && parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok())
}

#[tokio::test]
async fn curl_walks_service_root_systems_and_a_system() {
    let (running, _server) = lab(false).await;
    let base = running.base_url();

    let root = curl(&[&format!("{base}/redfish/v1/")]).await;
    assert_eq!(root.status, 200, "the service root needs no credentials");
    assert!(
        root.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    let root = root.json();
    assert!(
        is_versioned_type(&root["@odata.type"], "ServiceRoot"),
        "{root}"
    );
    let systems_path = root["Systems"]["@odata.id"].as_str().unwrap().to_string();

    let systems = curl(&["-u", &basic(), &format!("{base}{systems_path}")]).await;
    assert_eq!(systems.status, 200);
    let systems = systems.json();
    assert_eq!(systems["Members@odata.count"], 1);
    let system_path = systems["Members"][0]["@odata.id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(system_path, "/redfish/v1/Systems/1");

    let answer = curl(&["-u", &basic(), &format!("{base}{system_path}")]).await;
    assert_eq!(answer.status, 200);
    let system = answer.json();
    assert_eq!(system["@odata.id"], system_path.as_str());
    assert!(
        is_versioned_type(&system["@odata.type"], "ComputerSystem"),
        "{system}"
    );
    assert_eq!(system["Id"], "1");
    assert!(system["Name"].is_string());
    assert_eq!(system["PowerState"], "Off");
    let targets = system["Boot"]["BootSourceOverrideTarget@Redfish.AllowableValues"]
        .as_array()
        .unwrap();
    for wanted in ["Pxe", "Hdd", "Cd", "BiosSetup"] {
        assert!(
            targets.iter().any(|t| t == wanted),
            "{wanted} in {targets:?}"
        );
    }
    let reset = &system["Actions"]["#ComputerSystem.Reset"];
    assert_eq!(
        reset["target"],
        "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
    );
    let reset_types = reset["ResetType@Redfish.AllowableValues"]
        .as_array()
        .unwrap();
    for wanted in ["On", "ForceOff", "GracefulShutdown", "ForceRestart"] {
        assert!(reset_types.iter().any(|t| t == wanted), "{wanted}");
    }
    assert_eq!(answer.header("etag"), system["@odata.etag"].as_str());
}

#[tokio::test]
async fn curl_posts_a_reset_and_patches_the_boot_override_with_an_etag() {
    let (running, server) = lab(false).await;
    let system = format!("{}/redfish/v1/Systems/1", running.base_url());
    let reset = curl(&[
        "-u",
        &basic(),
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"ResetType": "On"}"#,
        &format!("{system}/Actions/ComputerSystem.Reset"),
    ])
    .await;
    assert!(matches!(reset.status, 200 | 202 | 204), "{reset:?}");
    assert_eq!(server.power_state(), PowerState::On);

    let bad = curl(&[
        "-u",
        &basic(),
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"ResetType": "Explode"}"#,
        &format!("{system}/Actions/ComputerSystem.Reset"),
    ])
    .await;
    assert_eq!(bad.status, 400);
    let message = &bad.json()["error"]["@Message.ExtendedInfo"][0]["Message"];
    assert!(message.as_str().unwrap().contains("Explode"), "{message}");

    let etag = curl(&["-u", &basic(), &system])
        .await
        .header("etag")
        .unwrap()
        .to_string();
    let patch = json!({"Boot": {"BootSourceOverrideTarget": "Pxe",
        "BootSourceOverrideEnabled": "Once"}})
    .to_string();
    let stale = curl(&[
        "-u",
        &basic(),
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/json",
        "-H",
        "If-Match: W/\"0000000000000000\"",
        "-d",
        &patch,
        &system,
    ])
    .await;
    assert_eq!(stale.status, 412, "a stale ETag is refused");
    let fresh = curl(&[
        "-u",
        &basic(),
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/json",
        "-H",
        &format!("If-Match: {etag}"),
        "-d",
        &patch,
        &system,
    ])
    .await;
    assert!(matches!(fresh.status, 200 | 204), "{fresh:?}");
    assert_eq!(
        server.state().boot_override.map(|b| b.device),
        Some(BootDevice::Pxe)
    );
}

#[tokio::test]
async fn curl_without_credentials_gets_401() {
    let (running, _server) = lab(false).await;
    let system = format!("{}/redfish/v1/Systems/1", running.base_url());
    let anonymous = curl(&[&system]).await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("www-authenticate").is_some());
    assert!(anonymous.json()["error"]["@Message.ExtendedInfo"].is_array());
    let wrong = curl(&["-u", "admin:wrong", &system]).await;
    assert_eq!(wrong.status, 401);
}

#[tokio::test]
async fn curl_logs_in_uses_the_token_and_logs_out() {
    let (running, _server) = lab(false).await;
    let base = running.base_url();
    let login = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &json!({"UserName": USER, "Password": PASSWORD}).to_string(),
        &format!("{base}/redfish/v1/SessionService/Sessions"),
    ])
    .await;
    assert_eq!(login.status, 201, "{login:?}");
    let token = login.header("x-auth-token").unwrap().to_string();
    let location = login.header("location").unwrap().to_string();
    assert!(location.starts_with("/redfish/v1/SessionService/Sessions/"));
    assert!(!login.body.contains(PASSWORD));
    assert!(is_versioned_type(&login.json()["@odata.type"], "Session"));

    let token_header = format!("X-Auth-Token: {token}");
    let system = format!("{base}/redfish/v1/Systems/1");
    assert_eq!(curl(&["-H", &token_header, &system]).await.status, 200);

    let logout = curl(&[
        "-X",
        "DELETE",
        "-H",
        &token_header,
        &format!("{base}{location}"),
    ])
    .await;
    assert!(matches!(logout.status, 200 | 204), "{logout:?}");
    assert_eq!(curl(&["-H", &token_header, &system]).await.status, 401);

    let bad_login = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &json!({"UserName": USER, "Password": "nope"}).to_string(),
        &format!("{base}/redfish/v1/SessionService/Sessions"),
    ])
    .await;
    assert_eq!(bad_login.status, 401);
    assert!(bad_login.header("x-auth-token").is_none());
}

#[tokio::test]
async fn curl_verifies_the_https_certificate_against_the_lab_ca() {
    let (running, _server) = lab(true).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, running.ca_certificate_pem().unwrap()).unwrap();
    let url = format!("{}/redfish/v1/Systems/1", running.base_url());
    assert!(url.starts_with("https://127.0.0.1:"));
    let verified = curl(&["--cacert", ca.to_str().unwrap(), "-u", &basic(), &url]).await;
    assert_eq!(verified.status, 200);
    assert_eq!(verified.json()["Id"], "1");

    // Without the CA, curl refuses the certificate (exit status 60).
    let output = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "10", &url])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(60));
}
