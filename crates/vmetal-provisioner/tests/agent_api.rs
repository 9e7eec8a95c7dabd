//! The agent API against the embedded API server: lookup hands out one token per cycle,
//! heartbeats need it, reports land in the cycle Secret, and a restarted API still trusts it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use tower::ServiceExt;
use vmetal_api::BareMetalHost;
use vmetal_apiserver::{ApiServerConfig, RunningApiServer};
use vmetal_provisioner::configdrive::{USER_DATA_PATH, read_config_drive_file};
use vmetal_provisioner::cycle::{CycleState, Operation, new_cycle_secret, secret_name};
use vmetal_provisioner::{AgentApi, router};

const NS: &str = "default";

async fn start(dir: &std::path::Path) -> (RunningApiServer, Client) {
    let server = vmetal_apiserver::start(ApiServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.to_path_buf()),
    })
    .await
    .unwrap();
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig_path().unwrap()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in vmetal_api::crds::all() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    (server, client)
}

/// Creates a host with `mac` as boot MAC and puts it in `state`.
async fn create_host(client: &Client, name: &str, mac: &str, state: &str) -> BareMetalHost {
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), NS);
    let host: BareMetalHost = serde_json::from_value(json!({
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": { "name": name, "namespace": NS },
        "spec": {
            "online": true,
            "bootMACAddress": mac,
            "bmc": { "address": "ipmi://10.0.0.1", "credentialsName": "bmc" }
        }
    }))
    .unwrap();
    hosts.create(&PostParams::default(), &host).await.unwrap();
    set_state(client, name, state).await
}

async fn set_state(client: &Client, name: &str, state: &str) -> BareMetalHost {
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), NS);
    let status = json!({ "status": {
        "operationalStatus": "OK", "errorMessage": "", "poweredOn": true, "errorCount": 0,
        "provisioning": { "state": state, "ID": "" }
    }});
    hosts
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap()
}

async fn start_cycle(client: &Client, host: &BareMetalHost, op: Operation) -> CycleState {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let secret = new_cycle_secret(host, op);
    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    CycleState::from_secret(&created).unwrap()
}

async fn cycle_secret(client: &Client, host: &str) -> Secret {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets.get(&secret_name(host)).await.unwrap()
}

async fn call(app: &Router, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
    let mut req = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(
            req.body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

fn api(client: &Client) -> Router {
    router(AgentApi::new(
        client.clone(),
        Some(NS.to_owned()),
        Duration::from_millis(500),
    ))
}

fn heartbeat(host: &str, cycle: &str, results: Value) -> Value {
    json!({ "host": { "namespace": NS, "name": host }, "cycle": cycle, "results": results })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_cycle_token_heartbeats_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = start(dir.path()).await;
    let host = create_host(&client, "node-0", "52:54:00:aa:00:01", "inspecting").await;
    let app = api(&client);
    let lookup = json!({ "macAddresses": ["52-54-00-AA-00-01", "52:54:00:aa:00:02"] });

    // No cycle yet: 404 with a JSON error.
    let (status, body) = call(&app, "/v1/lookup", None, &lookup).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("default/node-0"),
        "{body}"
    );
    let (status, _) = call(
        &app,
        "/v1/lookup",
        None,
        &json!({"macAddresses": ["52:54:00:ff:ff:ff"]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The controller starts an inspection: the agent gets a token, once.
    let cycle = start_cycle(&client, &host, Operation::Inspect).await;
    let (status, body) = call(&app, "/v1/lookup", None, &lookup).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["host"], json!({"namespace": NS, "name": "node-0"}));
    assert_eq!(body["cycle"], cycle.cycle);
    assert_eq!(body["heartbeatIntervalMs"], 500);
    let token = body["token"].as_str().unwrap().to_owned();
    let stored = CycleState::from_secret(&cycle_secret(&client, "node-0").await).unwrap();
    assert_eq!(
        stored.token_sha256.as_deref(),
        Some(vmetal_provisioner::agent_api::token_sha256(&token).as_str())
    );
    let raw = serde_json::to_string(&cycle_secret(&client, "node-0").await).unwrap();
    assert!(!raw.contains(&token), "the plain token is never stored");

    let (status, body) = call(&app, "/v1/lookup", None, &lookup).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "token already issued for this cycle");

    // Heartbeats: no token, wrong token, wrong cycle change nothing.
    let beat = heartbeat("node-0", &cycle.cycle, json!([]));
    let before = cycle_secret(&client, "node-0").await;
    let (status, body) = call(&app, "/v1/heartbeat", None, &beat).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = call(&app, "/v1/heartbeat", Some("not-the-token"), &beat).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!body.to_string().contains(&token));
    let stale = heartbeat("node-0", "some-old-cycle", json!([]));
    let (status, _) = call(&app, "/v1/heartbeat", Some(&token), &stale).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let after = cycle_secret(&client, "node-0").await;
    assert_eq!(
        before.metadata.resource_version,
        after.metadata.resource_version
    );
    assert!(CycleState::from_secret(&after).unwrap().report.is_none());

    // The right token: the command, and the report is stored.
    let (status, body) = call(&app, "/v1/heartbeat", Some(&token), &beat).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = format!("{}/inspect", cycle.cycle);
    assert_eq!(body["command"], json!({"command": "inspect", "id": id}));
    let stored = CycleState::from_secret(&cycle_secret(&client, "node-0").await).unwrap();
    assert_eq!(stored.report.unwrap().cycle, cycle.cycle);

    // The same heartbeat again is not rewritten (every write wakes the controller).
    let rv = cycle_secret(&client, "node-0")
        .await
        .metadata
        .resource_version;
    let (status, _) = call(&app, "/v1/heartbeat", Some(&token), &beat).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        cycle_secret(&client, "node-0")
            .await
            .metadata
            .resource_version,
        rv
    );

    // A new API instance (controller restart) accepts the running agent's token.
    drop(app);
    let app = api(&client);
    let done = heartbeat(
        "node-0",
        &cycle.cycle,
        json!([{ "id": id, "inventory": { "ramMebibytes": 4096, "hostname": "node-0" } }]),
    );
    let (status, body) = call(&app, "/v1/heartbeat", Some(&token), &done).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["command"], json!({"command": "finish"}));
    let stored = CycleState::from_secret(&cycle_secret(&client, "node-0").await).unwrap();
    let result = stored.result_of(Operation::Inspect).unwrap();
    assert_eq!(result.inventory.as_ref().unwrap().ram_mebibytes, 4096);

    // The host leaves inspecting: the agent is told to finish, and lookup finds nothing.
    set_state(&client, "node-0", "available").await;
    let (status, body) = call(&app, "/v1/heartbeat", Some(&token), &beat).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["command"], json!({"command": "finish"}));
    let (status, _) = call(&app, "/v1/lookup", None, &lookup).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_get_one_token() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = start(dir.path()).await;
    let host = create_host(&client, "node-1", "52:54:00:bb:00:01", "deprovisioning").await;
    start_cycle(&client, &host, Operation::Wipe).await;
    // Two API instances, as during a leader hand-over.
    let (a, b) = (api(&client), api(&client));
    let lookup = json!({ "macAddresses": ["52:54:00:bb:00:01"] });
    let (ra, rb) = tokio::join!(
        call(&a, "/v1/lookup", None, &lookup),
        call(&b, "/v1/lookup", None, &lookup)
    );
    let mut statuses = [ra.0, rb.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::FORBIDDEN],
        "{ra:?} {rb:?}"
    );
    let (ok, token) = if ra.0 == StatusCode::OK {
        (&a, &ra.1)
    } else {
        (&b, &rb.1)
    };
    let token = token["token"].as_str().unwrap();
    let cycle = CycleState::from_secret(&cycle_secret(&client, "node-1").await).unwrap();
    let (status, body) = call(
        ok,
        "/v1/heartbeat",
        Some(token),
        &heartbeat("node-1", &cycle.cycle, json!([])),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["command"],
        json!({"command": "wipe", "id": format!("{}/wipe", cycle.cycle), "mode": "metadata"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_carries_the_image_and_a_config_drive_with_user_data() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = start(dir.path()).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), NS);
    create_host(&client, "node-2", "52:54:00:cc:00:01", "provisioning").await;
    let spec = json!({ "spec": {
        "image": { "url": "http://images/os.raw", "checksum": "0123", "format": "raw" },
        "userData": { "name": "node-2-user-data" },
        "rootDeviceHints": { "minSizeGigabytes": 10 }
    }});
    let host = hosts
        .patch("node-2", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    let cycle = start_cycle(&client, &host, Operation::Deploy).await;
    // The operator's download stall timeout travels with the deploy command.
    let app = router(
        AgentApi::new(
            client.clone(),
            Some(NS.to_owned()),
            Duration::from_millis(500),
        )
        .with_download_stall_timeout(Duration::from_secs(30)),
    );
    let (status, body) = call(
        &app,
        "/v1/lookup",
        None,
        &json!({ "macAddresses": ["5254.00cc.0001"] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let beat = heartbeat("node-2", &cycle.cycle, json!([]));

    // The userData Secret is missing: the agent waits (the controller reports the error).
    let (status, body) = call(&app, "/v1/heartbeat", Some(&token), &beat).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["command"], json!({"command": "wait"}));

    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut user_data = Secret::default();
    user_data.metadata.name = Some("node-2-user-data".into());
    user_data.data = Some(
        [(
            "value".to_owned(),
            ByteString(b"#cloud-config\nruncmd: [true]\n".to_vec()),
        )]
        .into(),
    );
    secrets
        .create(&PostParams::default(), &user_data)
        .await
        .unwrap();

    let (status, body) = call(&app, "/v1/heartbeat", Some(&token), &beat).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cmd = &body["command"];
    assert_eq!(cmd["command"], "deploy");
    assert_eq!(cmd["id"], format!("{}/deploy", cycle.cycle));
    assert_eq!(cmd["imageUrl"], "http://images/os.raw");
    assert_eq!(cmd["checksum"], "0123");
    assert_eq!(cmd["format"], "raw");
    assert_eq!(cmd["rootDeviceHints"], json!({"minSizeGigabytes": 10}));
    assert_eq!(cmd["downloadStallTimeoutSeconds"], 30);
    let drive = base64::engine::general_purpose::STANDARD
        .decode(cmd["configDrive"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        read_config_drive_file(&drive, USER_DATA_PATH)
            .unwrap()
            .unwrap(),
        b"#cloud-config\nruncmd: [true]\n"
    );

    let done = heartbeat(
        "node-2",
        &cycle.cycle,
        json!([{ "id": format!("{}/deploy", cycle.cycle), "rootDevice": "/dev/vda" }]),
    );
    let (_, body) = call(&app, "/v1/heartbeat", Some(&token), &done).await;
    assert_eq!(body["command"], json!({"command": "finish"}));
}
