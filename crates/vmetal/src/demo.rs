//! `vmetal demo`: a scripted story on `vmetal up --lab` — a small rack registers and is
//! inspected, three Machines (one needing a GPU) claim hosts, provision and join the tenant
//! cluster, one is deleted and its host is re-used — with progress and a summary table.
//!
//! Every step checks what it claims; the demo succeeds only if every check passed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vmetal_api::{BareMetalHost, Machine, MachinePhase, ProvisioningState};

use crate::up::{Stack, UpConfig};

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the demo's state lives (a fresh temporary directory when `None`).
    pub data_dir: Option<PathBuf>,
    /// Servers in the rack (at least 4, so one has GPUs).
    pub servers: u32,
    /// Give up after this long.
    pub timeout: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            servers: 6,
            timeout: Duration::from_secs(110),
        }
    }
}

/// One row of the summary table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Machine name.
    pub machine: String,
    /// What it asked for.
    pub wants: String,
    /// Host it got.
    pub host: String,
    /// Final phase.
    pub phase: String,
    /// Tenant node and its capacity.
    pub node: String,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Machines at the end.
    pub rows: Vec<Row>,
    /// (check, passed).
    pub checks: Vec<(String, bool)>,
    /// Wall time.
    pub elapsed: Duration,
}

impl DemoReport {
    /// Whether every check passed.
    pub fn success(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|(_, ok)| *ok)
    }

    /// The summary table and the checks, as printed at the end.
    pub fn render(&self) -> String {
        let headers = ["MACHINE", "WANTS", "HOST", "PHASE", "NODE (capacity)"];
        let cells: Vec<[&str; 5]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.machine.as_str(),
                    r.wants.as_str(),
                    r.host.as_str(),
                    r.phase.as_str(),
                    r.node.as_str(),
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.len());
            }
        }
        let line = |row: [&str; 5]| {
            row.iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = vec![line(headers)];
        out.extend(cells.into_iter().map(line));
        out.push(String::new());
        for (check, ok) in &self.checks {
            out.push(format!("  [{}] {check}", if *ok { "ok" } else { "FAILED" }));
        }
        out.push(format!(
            "\n{} in {:.1}s",
            if self.success() {
                "demo complete"
            } else {
                "demo FAILED"
            },
            self.elapsed.as_secs_f64()
        ));
        out.join("\n")
    }
}

/// Progress output: a spinner on a terminal, plain timestamped lines otherwise.
struct Progress {
    start: Instant,
    bar: Option<indicatif::ProgressBar>,
    last: std::sync::Mutex<String>,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Self {
            start: Instant::now(),
            bar,
            last: Default::default(),
        }
    }

    /// A finished step (stays on screen).
    fn done(&self, msg: &str) {
        let line = format!("[{:>5.1}s] {msg}", self.start.elapsed().as_secs_f64());
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    /// What is going on now (the spinner's message; a line only when it changes, off a tty).
    fn status(&self, msg: &str) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == msg {
            return;
        }
        *last = msg.to_string();
        match &self.bar {
            Some(bar) => bar.set_message(msg.to_string()),
            None => self.done(msg),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn phase_of(m: &Machine) -> MachinePhase {
    m.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn host_of(m: &Machine) -> String {
    m.status
        .as_ref()
        .and_then(|s| s.host_ref.as_ref())
        .map(|r| r.name.clone())
        .unwrap_or_default()
}

/// Run the story.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let data_dir = opts.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("vmetal-demo-{}", std::process::id()))
    });
    let progress = Progress::new();
    let mut config = UpConfig::new(data_dir.clone());
    config.apiserver_bind = "127.0.0.1:0".parse()?;
    config.agent_bind = "127.0.0.1:0".parse()?;
    config.lab = opts.servers.max(4);
    config.boot_delay = Duration::from_millis(100);
    config.controller.operation_poll = Duration::from_millis(500);
    let stack = Stack::start(config).await?;
    let result = story(&stack, &progress, deadline).await;
    progress.finish();
    stack.stop().await;
    if opts.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    let mut report = result?;
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn story(stack: &Stack, p: &Progress, deadline: Instant) -> anyhow::Result<DemoReport> {
    let mut report = DemoReport::default();
    let hosts: Api<BareMetalHost> = Api::namespaced(stack.client.clone(), "default");
    let machines: Api<Machine> = Api::namespaced(stack.client.clone(), "default");
    let tenant = stack
        .tenant
        .as_ref()
        .context("the lab has no tenant cluster")?;
    let nodes: Api<Node> = Api::all(tenant.client.clone());
    let n = stack.lab.as_ref().map(|l| l.servers.len()).unwrap_or(0);
    p.done(&format!(
        "rack of {n} simulated servers (Redfish and IPMI BMCs); tenant cluster at {}",
        tenant.endpoint()
    ));

    // 1. Registration and inspection.
    let available = loop {
        let list = hosts.list(&ListParams::default()).await?.items;
        let ready = list
            .iter()
            .filter(|h| h.provisioning_state() == ProvisioningState::Available)
            .count();
        p.status(&format!(
            "hosts: {ready}/{n} registered, inspected and available"
        ));
        if ready == n && n > 0 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    report.checks.push((
        format!("{n} hosts registered, inspected and available"),
        available,
    ));
    if !available {
        return Ok(report);
    }
    p.done(&format!("{n} hosts available"));

    // 2. Three Machines: one needs a GPU, one selects a labelled host.
    hosts
        .patch(
            "server-2",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"pool": "blue"}}})),
        )
        .await?;
    let specs = [
        ("web-1", json!({}), "any CPU host"),
        (
            "blue-1",
            json!({"hostSelector": {"matchLabels": {"pool": "blue"}}}),
            "label pool=blue",
        ),
        (
            "gpu-1",
            json!({"requirements": {"gpus": {"count": 1, "vendor": "NVIDIA"}}}),
            "1 NVIDIA GPU",
        ),
    ];
    let mut wants = std::collections::BTreeMap::new();
    for (name, extra, want) in &specs {
        machines
            .create(&PostParams::default(), &machine(stack, name, extra))
            .await
            .with_context(|| format!("cannot create Machine {name}"))?;
        wants.insert(name.to_string(), want.to_string());
        p.done(&format!("created Machine {name} ({want})"));
    }
    let names: Vec<&str> = specs.iter().map(|s| s.0).collect();
    let ok = follow(&machines, &names, p, deadline).await?;
    report.checks.push((
        "3 Machines claimed hosts, provisioned and joined".into(),
        ok,
    ));
    let gpu_host = host_of(&machines.get("gpu-1").await?);
    let gpu_ok = stack
        .lab
        .as_ref()
        .and_then(|l| l.servers.iter().find(|s| s.name == gpu_host))
        .is_some_and(|s| !s.spec.gpus.is_empty());
    report
        .checks
        .push((format!("gpu-1 got a GPU server ({gpu_host})"), gpu_ok));
    report.checks.push((
        "blue-1 got the pool=blue host (server-2)".into(),
        host_of(&machines.get("blue-1").await?) == "server-2",
    ));
    let mut nodes_ok = true;
    for name in &names {
        let host = host_of(&machines.get(name).await?);
        nodes_ok &= nodes.get_opt(&host).await?.is_some();
    }
    report
        .checks
        .push(("a Node per Machine in the tenant cluster".into(), nodes_ok));
    if !ok {
        return Ok(report);
    }

    // 3. Delete one: its host is wiped and goes back to the pool.
    let freed = host_of(&machines.get("web-1").await?);
    machines.delete("web-1", &DeleteParams::default()).await?;
    p.done(&format!("deleted Machine web-1; releasing {freed}"));
    let mut released = false;
    while Instant::now() < deadline {
        let gone = machines.get_opt("web-1").await?.is_none();
        let h = hosts.get(&freed).await?;
        p.status(&format!("{freed} is {}", h.provisioning_state()));
        if gone && !h.is_claimed() && h.provisioning_state() == ProvisioningState::Available {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.checks.push((
        format!("{freed} deprovisioned and available again"),
        released,
    ));
    if !released {
        return Ok(report);
    }
    p.done(&format!("{freed} is available again"));

    // 4. A new Machine re-uses it.
    machines
        .create(&PostParams::default(), &machine(stack, "web-2", &json!({})))
        .await?;
    wants.insert("web-2".into(), "any CPU host".into());
    p.done("created Machine web-2 (any CPU host)");
    let ok = follow(&machines, &["web-2"], p, deadline).await?;
    let reused = host_of(&machines.get("web-2").await?) == freed;
    report
        .checks
        .push((format!("web-2 re-used {freed} and joined"), ok && reused));

    for m in machines.list(&ListParams::default()).await?.items {
        let host = host_of(&m);
        let node = match nodes.get_opt(&host).await? {
            Some(node) => {
                let cap = node.status.and_then(|s| s.capacity).unwrap_or_default();
                let get = |k: &str| cap.get(k).map(|q| q.0.clone()).unwrap_or_default();
                let gpus = get("nvidia.com/gpu");
                format!(
                    "{host} ({} CPU, {}{})",
                    get("cpu"),
                    get("memory"),
                    if gpus.is_empty() {
                        String::new()
                    } else {
                        format!(", {gpus} GPU")
                    }
                )
            }
            None => "-".into(),
        };
        report.rows.push(Row {
            wants: wants.get(&m.name_any()).cloned().unwrap_or_default(),
            machine: m.name_any(),
            host,
            phase: format!("{:?}", phase_of(&m)),
            node,
        });
    }
    Ok(report)
}

fn machine(stack: &Stack, name: &str, extra: &serde_json::Value) -> Machine {
    let url = stack.image_url("demo.raw");
    let mut spec = json!({
        "image": {"url": url, "checksum": format!("{url}.sha256sum"), "checksumType": "sha256", "format": "raw"},
    });
    if let Some(t) = &stack.tenant {
        spec["join"] = json!({"vcluster": {"endpoint": t.endpoint(),
            "tokenSecretRef": {"name": crate::tenant::JOIN_SECRET}}});
    }
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            spec[k] = v.clone();
        }
    }
    let mut m = Machine::new(name, Default::default());
    m.metadata.namespace = Some("default".into());
    if let Ok(spec) = serde_json::from_value(spec) {
        m.spec = spec;
    }
    m
}

/// Print each Machine's phase changes until all are Running; false on failure or timeout.
async fn follow(
    machines: &Api<Machine>,
    names: &[&str],
    p: &Progress,
    deadline: Instant,
) -> anyhow::Result<bool> {
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    while Instant::now() < deadline {
        let mut all = true;
        for name in names {
            let Some(m) = machines.get_opt(name).await? else {
                return Ok(false);
            };
            let phase = phase_of(&m);
            let host = host_of(&m);
            let line = match phase {
                MachinePhase::Running => format!(
                    "{name}: Running on {host}, node {} joined",
                    m.status
                        .as_ref()
                        .map(|s| s.node_name.as_str())
                        .unwrap_or("")
                ),
                _ if host.is_empty() => format!("{name}: {phase:?}"),
                _ => format!("{name}: {phase:?} on {host}"),
            };
            if seen.get(*name) != Some(&line) {
                p.done(&line);
                seen.insert(name.to_string(), line);
            }
            if phase == MachinePhase::Failed {
                return Ok(false);
            }
            all &= phase == MachinePhase::Running;
        }
        if all {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}
