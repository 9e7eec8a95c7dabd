//! Machines end to end over the embedded API servers (host cluster and tenant cluster): claims
//! by label and GPU requirement, provisioning, a real join of the simulated OS, release and
//! re-use; 200 Machines racing for 100 hosts; and the bad inputs of issue 6.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use vmetal::up::{Stack, UpConfig};
use vmetal_api::host::annotations::MACHINE_LABEL;
use vmetal_api::{BareMetalHost, Machine, MachinePhase, ProvisioningState};

async fn stack(lab: u32, dir: &std::path::Path, boot_delay: Duration) -> Stack {
    let mut config = UpConfig::new(dir.to_path_buf());
    config.apiserver_bind = "127.0.0.1:0".parse().unwrap();
    config.agent_bind = "127.0.0.1:0".parse().unwrap();
    config.lab = lab;
    config.boot_delay = boot_delay;
    config.controller.operation_poll = Duration::from_millis(500);
    config.controller.operation_timeout = Duration::from_secs(60);
    config.controller.backoff_base = Duration::from_millis(200);
    config.controller.backoff_cap = Duration::from_secs(2);
    config.controller.max_concurrent_operations = lab.max(20) as usize;
    Stack::start(config).await.unwrap()
}

async fn wait_all_available(hosts: &Api<BareMetalHost>, n: usize, within: Duration) {
    let start = Instant::now();
    loop {
        let list = hosts.list(&ListParams::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|h| h.provisioning_state() == ProvisioningState::Available && !h.has_error())
            .count();
        if ready == n {
            return;
        }
        assert!(
            start.elapsed() < within,
            "only {ready}/{n} hosts available after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn machine(name: &str, stack: &Stack, extra: serde_json::Value) -> Machine {
    let url = stack.image_url("demo.raw");
    let mut spec = json!({
        "image": {"url": url, "checksum": format!("{url}.sha256sum"), "checksumType": "sha256", "format": "raw"},
        "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample test@vmetal"],
    });
    if let Some(tenant) = &stack.tenant {
        spec["join"] = json!({"vcluster": {"endpoint": tenant.endpoint(),
            "tokenSecretRef": {"name": vmetal::tenant::JOIN_SECRET}}});
    }
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "vmetal.io/v1alpha1", "kind": "Machine",
        "metadata": {"name": name, "namespace": "default"}, "spec": spec,
    }))
    .unwrap()
}

fn condition<'a>(m: &'a Machine, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

async fn wait_machine(
    machines: &Api<Machine>,
    name: &str,
    within: Duration,
    what: &str,
    ok: impl Fn(&Machine) -> bool,
) -> Machine {
    let start = Instant::now();
    loop {
        if let Some(m) = machines.get_opt(name).await.unwrap()
            && ok(&m)
        {
            return m;
        }
        if start.elapsed() > within {
            let m = machines.get_opt(name).await.unwrap();
            panic!(
                "{name}: not {what} within {within:?}; status {:?}",
                m.and_then(|m| m.status)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn phase(m: &Machine) -> MachinePhase {
    m.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn host_of(m: &Machine) -> String {
    m.status
        .as_ref()
        .and_then(|s| s.host_ref.as_ref())
        .map(|r| r.name.clone())
        .unwrap_or_default()
}

async fn wait_gone(machines: &Api<Machine>, name: &str, within: Duration) {
    let start = Instant::now();
    while machines.get_opt(name).await.unwrap().is_some() {
        assert!(
            start.elapsed() < within,
            "{name} was not deleted in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every host's consumerRef names an existing Machine.
async fn assert_no_leaked_hosts(hosts: &Api<BareMetalHost>, machines: &Api<Machine>) {
    let existing: Vec<String> = machines
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|m| m.name_any())
        .collect();
    for h in hosts.list(&ListParams::default()).await.unwrap().items {
        if let Some(r) = &h.spec.consumer_ref {
            let name = r.name.clone().unwrap_or_default();
            assert!(
                existing.contains(&name),
                "host {} is claimed by Machine {name}, which does not exist",
                h.name_any()
            );
        }
    }
}

fn read_prefix(path: &std::path::Path, len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn machines_claim_by_label_and_gpu_join_the_tenant_and_hosts_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(8, dir.path(), Duration::from_millis(10)).await;
    let client = stack.client.clone();
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    let machines: Api<Machine> = Api::namespaced(client.clone(), "default");
    let tenant = stack
        .tenant
        .as_ref()
        .expect("--lab starts a tenant cluster");
    let nodes: Api<Node> = Api::all(tenant.client.clone());
    let lab = stack.lab.as_ref().unwrap();
    wait_all_available(&hosts, 8, Duration::from_secs(60)).await;

    // server-6 carries the label the second Machine selects.
    hosts
        .patch(
            "server-6",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"pool": "blue"}}})),
        )
        .await
        .unwrap();
    let gpu = machine(
        "gpu-worker",
        &stack,
        json!({"requirements": {"gpus": {"count": 1, "vendor": "NVIDIA", "model": "H100"}}}),
    );
    let blue = machine(
        "blue-worker",
        &stack,
        json!({"hostSelector": {"matchLabels": {"pool": "blue"}}}),
    );
    let plain = machine("plain-worker", &stack, json!({}));
    for m in [&gpu, &blue, &plain] {
        machines.create(&PostParams::default(), m).await.unwrap();
    }
    let mut running = HashMap::new();
    for name in ["gpu-worker", "blue-worker", "plain-worker"] {
        let m = wait_machine(&machines, name, Duration::from_secs(60), "Running", |m| {
            phase(m) == MachinePhase::Running
        })
        .await;
        assert_eq!(condition(&m, "Scheduled").unwrap().0, "True");
        assert_eq!(condition(&m, "Provisioned").unwrap().0, "True");
        assert_eq!(condition(&m, "Joined").unwrap().1, "NodeReady");
        assert_eq!(m.status.as_ref().unwrap().node_name, host_of(&m));
        running.insert(name, m);
    }
    // The smallest GPU server (server-4, 2 GPUs) rather than the 4-GPU server-8.
    assert_eq!(host_of(&running["gpu-worker"]), "server-4");
    assert_eq!(host_of(&running["blue-worker"]), "server-6");
    let plain_host = host_of(&running["plain-worker"]);
    let server = |name: &str| lab.servers.iter().find(|s| s.name == name).unwrap();
    assert!(
        server(&plain_host).spec.gpus.is_empty(),
        "CPU work got a GPU server"
    );

    // Nodes in the tenant cluster, named after the hosts, with the hardware's capacity.
    for m in running.values() {
        let host = host_of(m);
        let node = nodes.get(&host).await.unwrap();
        let spec = &server(&host).spec;
        let cap = node.status.as_ref().unwrap().capacity.as_ref().unwrap();
        assert_eq!(cap["cpu"].0, spec.cpus.to_string(), "{host} cpu");
        assert_eq!(
            cap["memory"].0,
            format!("{}Mi", spec.ram_mib),
            "{host} memory"
        );
        assert_eq!(node.labels()["vmetal.io/host"], host);
        assert!(
            node.labels()
                .contains_key("node.kubernetes.io/instance-type")
        );
    }
    assert_eq!(
        nodes
            .get("server-4")
            .await
            .unwrap()
            .status
            .unwrap()
            .capacity
            .unwrap()["nvidia.com/gpu"]
            .0,
        "2"
    );
    // The node's lease exists in kube-node-lease.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(tenant.client.clone(), "kube-node-lease");
    assert!(leases.get_opt(&plain_host).await.unwrap().is_some());

    // The user data Secret is owned by the Machine and holds the token; the Machine does not.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let ud = secrets.get("plain-worker-user-data").await.unwrap();
    assert_eq!(
        ud.metadata.owner_references.as_ref().unwrap()[0].name,
        "plain-worker"
    );
    let token_secret = secrets.get(vmetal::tenant::JOIN_SECRET).await.unwrap();
    let token = String::from_utf8(token_secret.data.unwrap()["token"].0.clone()).unwrap();
    let text = String::from_utf8(ud.data.unwrap()["userData"].0.clone()).unwrap();
    assert!(text.contains(&token));
    let m_json = serde_json::to_string(&machines.get("plain-worker").await.unwrap()).unwrap();
    assert!(!m_json.contains(&token), "token leaked into the Machine");

    // Delete: the host is deprovisioned (disk wiped), released and available again.
    let os = server(&plain_host).machine.os().expect("OS booted");
    let disk = server(&plain_host).machine.disk_path(&os.disk);
    machines
        .delete("plain-worker", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&machines, "plain-worker", Duration::from_secs(60)).await;
    let h = hosts.get(&plain_host).await.unwrap();
    assert_eq!(h.provisioning_state(), ProvisioningState::Available);
    assert!(h.spec.consumer_ref.is_none() && h.spec.image.is_none());
    assert!(!h.labels().contains_key(MACHINE_LABEL));
    assert!(
        read_prefix(&disk, 1 << 20).iter().all(|b| *b == 0),
        "disk not wiped"
    );
    assert!(
        nodes.get_opt(&plain_host).await.unwrap().is_none(),
        "node left behind"
    );
    assert!(
        secrets
            .get_opt("plain-worker-user-data")
            .await
            .unwrap()
            .is_none()
    );

    // A new Machine gets the same (smallest free) host and joins again.
    machines
        .create(
            &PostParams::default(),
            &machine("next-worker", &stack, json!({})),
        )
        .await
        .unwrap();
    let m = wait_machine(
        &machines,
        "next-worker",
        Duration::from_secs(60),
        "Running",
        |m| phase(m) == MachinePhase::Running,
    )
    .await;
    assert_eq!(host_of(&m), plain_host);
    assert!(nodes.get_opt(&plain_host).await.unwrap().is_some());

    // power: Off powers the host off and keeps it claimed.
    machines
        .patch(
            "next-worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"power": "Off"}})),
        )
        .await
        .unwrap();
    wait_machine(
        &machines,
        "next-worker",
        Duration::from_secs(30),
        "powered off",
        |m| condition(m, "Joined").is_some_and(|c| c.1 == "PoweredOff"),
    )
    .await;
    let start = Instant::now();
    while server(&plain_host).server.power_state().is_on() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "host not powered off"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hosts.get(&plain_host).await.unwrap().is_claimed());
    assert_no_leaked_hosts(&hosts, &machines).await;
    stack.stop().await;
}

/// consumer per host as seen by the watch; a change from one consumer to another without an
/// unclaimed state in between is a double claim.
#[derive(Default)]
struct ClaimLog {
    current: HashMap<String, String>,
    violations: Vec<String>,
    events: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_machines_race_for_one_hundred_hosts() {
    const HOSTS: u32 = 100;
    const MACHINES: usize = 200;
    const RELEASED: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(HOSTS, dir.path(), Duration::ZERO).await;
    let client = stack.client.clone();
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    let machines: Api<Machine> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    wait_all_available(&hosts, HOSTS as usize, Duration::from_secs(90)).await;
    eprintln!("{HOSTS} hosts available in {:?}", started.elapsed());

    let log = Arc::new(Mutex::new(ClaimLog::default()));
    let watch_log = log.clone();
    let watch_hosts = hosts.clone();
    let watch = tokio::spawn(async move {
        let mut events = watcher(watch_hosts, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Ok(Some(h)) = events.try_next().await {
            let consumer = h
                .spec
                .consumer_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_default();
            let mut log = watch_log.lock().unwrap();
            log.events += 1;
            let name = h.name_any();
            let before = log.current.get(&name).cloned().unwrap_or_default();
            if !before.is_empty() && !consumer.is_empty() && before != consumer {
                log.violations
                    .push(format!("{name}: {before} -> {consumer} without a release"));
            }
            log.current.insert(name, consumer);
        }
    });

    // The race is about claims: Machines ask for power Off, so hosts are claimed and given
    // their image and user data but do not spend the test writing 100 disks.
    let created = Instant::now();
    let creates = (0..MACHINES).map(|i| {
        let machines = machines.clone();
        let m = machine(&format!("m-{i:03}"), &stack, json!({"power": "Off"}));
        async move { machines.create(&PostParams::default(), &m).await.unwrap() }
    });
    futures::future::join_all(creates).await;

    let counts = |list: &[Machine]| {
        let scheduled = list
            .iter()
            .filter(|m| condition(m, "Scheduled").is_some_and(|c| c.0 == "True"))
            .count();
        let busy = list
            .iter()
            .filter(|m| {
                condition(m, "Scheduled")
                    .is_some_and(|c| c.0 == "False" && c.1 == "AllMatchingHostsBusy")
            })
            .count();
        (scheduled, busy)
    };
    let start = Instant::now();
    loop {
        let list = machines.list(&ListParams::default()).await.unwrap().items;
        let (scheduled, busy) = counts(&list);
        if scheduled == HOSTS as usize && busy == MACHINES - HOSTS as usize {
            break;
        }
        assert!(
            scheduled <= HOSTS as usize,
            "{scheduled} Machines scheduled on {HOSTS} hosts"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "after 60 s: {scheduled} scheduled, {busy} pending-busy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{MACHINES} Machines: {HOSTS} scheduled, rest busy in {:?}",
        created.elapsed()
    );

    // Each host has exactly one consumer, and distinct Machines hold distinct hosts.
    let list = machines.list(&ListParams::default()).await.unwrap().items;
    let mut held: BTreeMap<String, String> = BTreeMap::new();
    for m in list.iter().filter(|m| !host_of(m).is_empty()) {
        if let Some(other) = held.insert(host_of(m), m.name_any()) {
            panic!("{} and {other} both hold {}", m.name_any(), host_of(m));
        }
    }
    assert_eq!(held.len(), HOSTS as usize);
    for h in hosts.list(&ListParams::default()).await.unwrap().items {
        let consumer = h
            .spec
            .consumer_ref
            .as_ref()
            .and_then(|r| r.name.clone())
            .unwrap();
        assert_eq!(held[&h.name_any()], consumer);
    }

    // Release some: as many pending Machines get hosts.
    let victims: Vec<String> = held.values().take(RELEASED).cloned().collect();
    for v in &victims {
        machines.delete(v, &DeleteParams::default()).await.unwrap();
    }
    let start = Instant::now();
    loop {
        let list = machines.list(&ListParams::default()).await.unwrap().items;
        let (scheduled, busy) = counts(&list);
        if list.len() == MACHINES - RELEASED
            && scheduled == HOSTS as usize
            && busy == MACHINES - HOSTS as usize - RELEASED
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "after release: {} Machines, {scheduled} scheduled, {busy} busy",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("released {RELEASED}, re-scheduled in {:?}", start.elapsed());
    assert_no_leaked_hosts(&hosts, &machines).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.abort();
    let (events, violations) = {
        let log = log.lock().unwrap();
        (log.events, log.violations.clone())
    };
    assert!(events >= HOSTS as usize, "watch saw {events} events");
    assert!(violations.is_empty(), "double claims: {violations:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_end_in_clear_states_and_leak_no_host() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(4, dir.path(), Duration::from_millis(10)).await;
    let client = stack.client.clone();
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    let machines: Api<Machine> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    wait_all_available(&hosts, 4, Duration::from_secs(60)).await;
    let tenant_endpoint = stack.tenant.as_ref().unwrap().endpoint();

    // Missing join token Secret: Pending, the condition names the Secret; creating it schedules.
    let no_token = machine(
        "no-token",
        &stack,
        json!({"join": {"vcluster": {"endpoint": tenant_endpoint, "tokenSecretRef": {"name": "missing-token"}}}}),
    );
    machines
        .create(&PostParams::default(), &no_token)
        .await
        .unwrap();
    let m = wait_machine(
        &machines,
        "no-token",
        Duration::from_secs(20),
        "pending",
        |m| condition(m, "Scheduled").is_some_and(|c| c.1 == "JoinTokenSecretMissing"),
    )
    .await;
    assert!(
        condition(&m, "Scheduled")
            .unwrap()
            .2
            .contains("default/missing-token")
    );
    assert_eq!(phase(&m), MachinePhase::Pending);
    assert!(host_of(&m).is_empty());

    // Invalid selector: refused (422) or a clear condition.
    let bad_selector = machine(
        "bad-selector",
        &stack,
        json!({"hostSelector": {"matchExpressions": [{"key": "pool", "operator": "Near", "values": ["x"]}]}}),
    );
    match machines.create(&PostParams::default(), &bad_selector).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 422),
        Err(e) => panic!("{e}"),
        Ok(_) => {
            let m = wait_machine(
                &machines,
                "bad-selector",
                Duration::from_secs(20),
                "invalid",
                |m| condition(m, "Scheduled").is_some_and(|c| c.1 == "InvalidSpec"),
            )
            .await;
            assert!(condition(&m, "Scheduled").unwrap().2.contains("Near"));
        }
    }

    // Requirements no host meets.
    let huge = machine("huge", &stack, json!({"requirements": {"minCpus": 4096}}));
    machines
        .create(&PostParams::default(), &huge)
        .await
        .unwrap();
    let m = wait_machine(
        &machines,
        "huge",
        Duration::from_secs(20),
        "unschedulable",
        |m| condition(m, "Scheduled").is_some_and(|c| c.1 == "RequirementsExceedEveryHost"),
    )
    .await;
    assert!(
        condition(&m, "Scheduled")
            .unwrap()
            .2
            .contains("needs 4096 CPUs")
    );

    // Wrong checksum: the host's provisioning error shows, the host is released, no retry loop.
    let url = stack.image_url("demo.raw");
    let wrong = machine(
        "wrong-checksum",
        &stack,
        json!({"image": {"url": url, "checksum": "0".repeat(64), "checksumType": "sha256", "format": "raw"}}),
    );
    machines
        .create(&PostParams::default(), &wrong)
        .await
        .unwrap();
    let m = wait_machine(
        &machines,
        "wrong-checksum",
        Duration::from_secs(60),
        "failed and released",
        |m| phase(m) == MachinePhase::Failed && host_of(m).is_empty(),
    )
    .await;
    let (_, reason, message) = condition(&m, "Provisioned").unwrap();
    assert_eq!(reason, "ProvisioningFailed");
    assert!(message.contains("does not retry"), "{message}");
    assert!(message.to_lowercase().contains("checksum"), "{message}");
    let claimed_by_wrong = |list: &[BareMetalHost]| {
        list.iter().any(|h| {
            h.spec.consumer_ref.as_ref().and_then(|r| r.name.as_deref()) == Some("wrong-checksum")
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let list = hosts.list(&ListParams::default()).await.unwrap().items;
    assert!(
        !claimed_by_wrong(&list),
        "the failed Machine claimed a host again"
    );
    let m = machines.get("wrong-checksum").await.unwrap();
    assert_eq!(phase(&m), MachinePhase::Failed);

    // The token Secret appears: no-token gets a host (woken by the Secret, not a poll).
    let token = stack
        .tenant
        .as_ref()
        .unwrap()
        .create_bootstrap_token(Duration::from_secs(600))
        .await
        .unwrap();
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "missing-token"}, "stringData": {"token": token}}),
    )
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    wait_machine(
        &machines,
        "no-token",
        Duration::from_secs(60),
        "Running",
        |m| phase(m) == MachinePhase::Running,
    )
    .await;

    // Delete while the host is still provisioning: it ends available and unclaimed.
    machines
        .create(
            &PostParams::default(),
            &machine("short-lived", &stack, json!({})),
        )
        .await
        .unwrap();
    let m = wait_machine(
        &machines,
        "short-lived",
        Duration::from_secs(30),
        "provisioning",
        |m| phase(m) == MachinePhase::Provisioning && !host_of(m).is_empty(),
    )
    .await;
    let host = host_of(&m);
    machines
        .delete("short-lived", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&machines, "short-lived", Duration::from_secs(60)).await;
    let h = hosts.get(&host).await.unwrap();
    assert_eq!(h.provisioning_state(), ProvisioningState::Available);
    assert!(!h.is_claimed());
    assert_no_leaked_hosts(&hosts, &machines).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_tells_the_whole_story_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let report = vmetal::demo::run(vmetal::demo::DemoOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await
    .unwrap();
    let text = report.render();
    assert!(report.success(), "{text}");
    assert_eq!(report.rows.len(), 3, "{text}");
    assert!(report.rows.iter().all(|r| r.phase == "Running"), "{text}");
    assert!(report.elapsed < Duration::from_secs(120));
}

/// `cargo test -p vmetal --test machines --release -- --ignored --nocapture bench_`:
/// 100 Machines against 100 zero-delay lab hosts; time to all Running, claim latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark"]
async fn bench_hundred_machines_to_running() {
    let n: usize = std::env::var("BENCH_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(n as u32, dir.path(), Duration::ZERO).await;
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    let machines: Api<Machine> = Api::namespaced(stack.client.clone(), "default");
    wait_all_available(&hosts, n, Duration::from_secs(120)).await;

    let scheduled_at: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let seen = scheduled_at.clone();
    let watch_api = machines.clone();
    let watch = tokio::spawn(async move {
        let mut events = watcher(watch_api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Ok(Some(m)) = events.try_next().await {
            if condition(&m, "Scheduled").is_some_and(|c| c.0 == "True") {
                seen.lock()
                    .unwrap()
                    .entry(m.name_any())
                    .or_insert_with(Instant::now);
            }
        }
    });
    let start = Instant::now();
    let creates = (0..n).map(|i| {
        let machines = machines.clone();
        let m = machine(&format!("bench-{i:03}"), &stack, json!({}));
        async move {
            machines.create(&PostParams::default(), &m).await.unwrap();
            (format!("bench-{i:03}"), Instant::now())
        }
    });
    let created: HashMap<String, Instant> = futures::future::join_all(creates)
        .await
        .into_iter()
        .collect();
    loop {
        let list = machines.list(&ListParams::default()).await.unwrap().items;
        let running = list
            .iter()
            .filter(|m| phase(m) == MachinePhase::Running)
            .count();
        if running == n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{running}/{n} Running after 300 s"
        );
        if start.elapsed().as_millis() % 10_000 < 120 {
            let mut phases: BTreeMap<String, usize> = BTreeMap::new();
            for m in &list {
                *phases.entry(format!("{:?}", phase(m))).or_default() += 1;
            }
            let mut states: BTreeMap<String, usize> = BTreeMap::new();
            for h in hosts.list(&ListParams::default()).await.unwrap().items {
                let error = if h.has_error() { "+error" } else { "" };
                *states
                    .entry(format!("{}{error}", h.provisioning_state()))
                    .or_default() += 1;
            }
            eprintln!(
                "[{:?}] machines {phases:?} hosts {states:?}",
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_running = start.elapsed();
    watch.abort();
    let at = scheduled_at.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = created
        .iter()
        .filter_map(|(name, t0)| at.get(name).map(|t| t.saturating_duration_since(*t0)))
        .collect();
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    eprintln!(
        "BENCH {n} Machines / {n} hosts: all Running in {:.2}s; claim latency p50 {:?} p99 {:?} max {:?} ({} samples)",
        all_running.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        latencies.last().unwrap(),
        latencies.len()
    );
    stack.stop().await;
}
