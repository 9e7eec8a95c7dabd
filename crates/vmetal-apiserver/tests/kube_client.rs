//! kube-rs against the embedded API server over HTTPS with the generated kubeconfig: CRDs,
//! CRUD, conflicts, status, finalizers, watches through a real `Controller`, and restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use vmetal_api::BareMetalHost;
use vmetal_apiserver::{ApiServerConfig, RunningApiServer};

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
    (server, client)
}

async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in vmetal_api::crds::all() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let got = crds.get("baremetalhosts.metal3.io").await.unwrap();
    let established = got
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);
}

fn host(name: &str) -> BareMetalHost {
    serde_json::from_value(json!({
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": { "name": name, "namespace": "default", "labels": { "rack": "r1" } },
        "spec": { "online": false, "bmc": { "address": "ipmi://10.0.0.1", "credentialsName": "bmc" } }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_observes_the_whole_life_of_a_host_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = start(dir.path()).await;
    install_crds(&client).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");

    // What the reconciler saw: (generation, state, finalizers, deleting).
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let ctx = seen.clone();
    let controller = Controller::new(hosts.clone(), watcher::Config::default())
        .run(
            |h: Arc<BareMetalHost>, seen: Arc<Arc<Mutex<Vec<String>>>>| async move {
                let state = h.provisioning_state().to_string();
                let line = format!(
                    "gen={} online={} state={state:?} finalizers={} deleting={}",
                    h.metadata.generation.unwrap_or(0),
                    h.spec.online,
                    h.finalizers().len(),
                    h.metadata.deletion_timestamp.is_some()
                );
                let mut v = seen.lock().unwrap();
                if v.last() != Some(&line) {
                    v.push(line);
                }
                Ok::<_, kube::Error>(Action::await_change())
            },
            |_, _: &kube::Error, _| Action::requeue(Duration::from_secs(1)),
            Arc::new(ctx),
        )
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);

    // And a raw watcher for the event types.
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let ev = events.clone();
    let watch = tokio::spawn(watcher(hosts.clone(), watcher::Config::default()).for_each(
        move |e| {
            let ev = ev.clone();
            async move {
                let s = match e {
                    Ok(watcher::Event::Apply(h)) => {
                        format!("apply rv={}", h.resource_version().unwrap_or_default())
                    }
                    Ok(watcher::Event::Delete(h)) => format!("delete {}", h.name_any()),
                    Ok(watcher::Event::InitDone) => "init".into(),
                    Ok(_) => return,
                    Err(e) => format!("error {e}"),
                };
                ev.lock().unwrap().push(s);
            }
        },
    ));

    let wait_for = |want: &'static str| {
        let seen = seen.clone();
        async move {
            for _ in 0..100 {
                if seen.lock().unwrap().iter().any(|l| l == want) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!(
                "reconciler never saw {want:?}; saw {:?}",
                seen.lock().unwrap()
            );
        }
    };

    // Start from a fully listed, empty watch so the create arrives as a change, not in the list.
    let mut listed = false;
    for _ in 0..500 {
        if events.lock().unwrap().iter().any(|e| e == "init") {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(listed, "the watcher never finished its initial list");
    let created = hosts
        .create(&PostParams::default(), &host("h1"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    wait_for("gen=1 online=false state=\"\" finalizers=0 deleting=false").await;

    // Spec change bumps generation.
    hosts
        .patch(
            "h1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"online": true}})),
        )
        .await
        .unwrap();
    wait_for("gen=2 online=true state=\"\" finalizers=0 deleting=false").await;

    // Status changes go through /status only and do not bump generation.
    let st = hosts
        .patch_status(
            "h1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"provisioning": {"state": "registering"}, "operationalStatus": "OK", "errorMessage": "", "poweredOn": false, "errorCount": 0}})),
        )
        .await
        .unwrap();
    assert_eq!(st.metadata.generation, Some(2));
    wait_for("gen=2 online=true state=\"registering\" finalizers=0 deleting=false").await;

    // Status written through the main resource is ignored.
    let mut h = hosts.get("h1").await.unwrap();
    h.status.as_mut().unwrap().provisioning.state = vmetal_api::ProvisioningState::Deleting;
    h.metadata.finalizers = Some(vec!["baremetalhost.metal3.io".into()]);
    let replaced = hosts
        .replace("h1", &PostParams::default(), &h)
        .await
        .unwrap();
    assert_eq!(
        replaced.provisioning_state(),
        vmetal_api::ProvisioningState::Registering
    );
    wait_for("gen=2 online=true state=\"registering\" finalizers=1 deleting=false").await;

    // Stale resourceVersion: 409.
    let stale = hosts
        .replace("h1", &PostParams::default(), &h)
        .await
        .unwrap_err();
    match stale {
        kube::Error::Api(s) => assert_eq!(s.code, 409),
        other => panic!("expected 409, got {other}"),
    }

    // Delete with a finalizer marks; removing it deletes.
    hosts.delete("h1", &DeleteParams::default()).await.unwrap();
    wait_for("gen=2 online=true state=\"registering\" finalizers=1 deleting=true").await;
    hosts
        .patch(
            "h1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    for _ in 0..100 {
        if events.lock().unwrap().iter().any(|e| e == "delete h1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hosts.get_opt("h1").await.unwrap().is_none());
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events.first().map(String::as_str),
        Some("init"),
        "{events:?}"
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("delete h1"),
        "{events:?}"
    );
    let applies = events.iter().filter(|e| e.starts_with("apply")).count();
    assert!(
        applies >= 5,
        "expected every change as an event: {events:?}"
    );
    // Revisions only go up.
    let revs: Vec<u64> = events
        .iter()
        .filter_map(|e| e.strip_prefix("apply rv=").and_then(|r| r.parse().ok()))
        .collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    controller.abort();
    watch.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_paging_generate_name_and_owner_gc() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = start(dir.path()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..7 {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": format!("cm-{i}"), "labels": {"parity": if i % 2 == 0 { "even" } else { "odd" }, "n": i.to_string()}},
            "data": {"i": i.to_string()}
        }))
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let even = cms
        .list(&ListParams::default().labels("parity=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 4);
    let not_in = cms
        .list(&ListParams::default().labels("n notin (0,1,2),parity"))
        .await
        .unwrap();
    assert_eq!(not_in.items.len(), 4);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=cm-3"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);

    // Paging: 3 + 3 + 1, no duplicates.
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(3);
    loop {
        let page = cms.list(&lp).await.unwrap();
        names.extend(page.items.iter().map(|c| c.name_any()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(names.len(), 7);

    // generateName.
    let generated: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).unwrap();
    let made = cms
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    assert!(made.name_any().starts_with("gen-") && made.name_any().len() == 9);

    // Owner GC: deleting the owner deletes the dependent.
    let owner = cms.get("cm-0").await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let dep: Secret = serde_json::from_value(json!({
        "metadata": {"name": "owned", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "cm-0", "uid": owner.uid().unwrap()}]},
        "stringData": {"k": "v"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &dep).await.unwrap();
    cms.delete("cm-0", &DeleteParams::default()).await.unwrap();
    assert!(secrets.get_opt("owned").await.unwrap().is_none());

    // Errors carry Status bodies.
    let missing = cms.get("nope").await.unwrap_err();
    assert!(matches!(missing, kube::Error::Api(ref s) if s.code == 404 && s.reason == "NotFound"));
    let dup = cms
        .create(&PostParams::default(), &cms.get("cm-1").await.unwrap())
        .await
        .unwrap_err();
    assert!(matches!(dup, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"));
    let bad_sel = cms
        .list(&ListParams::default().labels("a in ("))
        .await
        .unwrap_err();
    assert!(matches!(bad_sel, kube::Error::Api(ref s) if s.code == 400));

    // deletecollection by label.
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("parity=odd"),
    )
    .await
    .unwrap();
    assert!(
        cms.list(&ListParams::default().labels("parity=odd"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_objects_revisions_and_watch_position() {
    let dir = tempfile::tempdir().unwrap();
    let last_rv;
    {
        let (server, client) = start(dir.path()).await;
        install_crds(&client).await;
        let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
        hosts
            .create(&PostParams::default(), &host("a"))
            .await
            .unwrap();
        let b = hosts
            .create(&PostParams::default(), &host("b"))
            .await
            .unwrap();
        last_rv = b.resource_version().unwrap();
        server.shutdown();
    }
    // Give the aborted server task a moment to release the port and file.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (server, client) = start(dir.path()).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    let b = hosts.get("b").await.unwrap();
    assert_eq!(b.resource_version().unwrap(), last_rv);
    assert!(hosts.get("a").await.is_ok());

    // A write after restart continues the revision counter.
    let c = hosts
        .create(&PostParams::default(), &host("c"))
        .await
        .unwrap();
    let c_rv: u64 = c.resource_version().unwrap().parse().unwrap();
    assert!(c_rv > last_rv.parse::<u64>().unwrap());

    // Watching from the last revision seen before the restart delivers exactly what came after.
    let mut stream = hosts
        .watch(&kube::api::WatchParams::default().timeout(2), &last_rv)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match first {
        kube::api::WatchEvent::Added(h) => assert_eq!(h.name_any(), "c"),
        other => panic!("expected ADDED c, got {other:?}"),
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _client) = start(dir.path()).await;
    let ca = server.access().unwrap().ca_pem.clone();
    let cert = reqwest_like_get(&server.url(), &ca).await;
    assert_eq!(cert, 401);
}

/// GET /api/v1/namespaces without a token, with the server's CA trusted, via kube's own client
/// stack (a kubeconfig with no user).
async fn reqwest_like_get(url: &str, ca_pem: &str) -> u16 {
    use base64::Engine;
    let kubeconfig: Kubeconfig = serde_yaml::from_str(&format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {url}\n    certificate-authority-data: {}\nusers:\n- name: anon\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: anon}}\ncurrent-context: c\n",
        base64::engine::general_purpose::STANDARD.encode(ca_pem)
    ))
    .unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    match ns.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}
