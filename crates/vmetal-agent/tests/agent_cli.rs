//! The `vmetal-agent` binary's subcommands on fixture trees and disk files: `inventory`,
//! `write-image` (what benchmarks parse) and one `run --once` cycle against the fake agent API.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Output};
use std::time::Duration;

use sha2::{Digest, Sha256};
use vmetal_agent::testing::FakeAgentApi;
use vmetal_agent::{FixtureSpec, expected_details, write_tree};
use vmetal_api::agent::AgentCommand;
use vmetal_api::hardware::HardwareDetails;

const MAC: &str = "52:54:00:cc:00:01";
const GIB: u64 = 1 << 30;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmetal-agent"))
}

fn spec() -> FixtureSpec {
    FixtureSpec {
        cpus: 4,
        cpu_model: "AMD EPYC 7313".into(),
        ram_mib: 16384,
        nics: vec![("eno1".into(), MAC.into(), 25)],
        disks: vec![(
            "nvme0n1".into(),
            8 * GIB,
            false,
            "Samsung PM9A3".into(),
            "S1".into(),
        )],
        gpus: vec![],
        manufacturer: "vmetal".into(),
        product: "CLI Server".into(),
        serial: "C1".into(),
        bios_version: "1.0".into(),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Run the binary off the async threads (the fake API serves on them).
async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[test]
fn inventory_prints_the_hardware_details_json() {
    let dir = tempfile::tempdir().unwrap();
    write_tree(&spec(), dir.path()).unwrap();
    let out = agent()
        .args(["inventory", "--root"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let hw: HardwareDetails = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hw, expected_details(&spec()));
}

#[test]
fn inventory_of_a_root_without_proc_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .args(["inventory", "--root"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("proc/cpuinfo"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_image_writes_and_reports_throughput() {
    let api = FakeAgentApi::start(&[MAC]).await.unwrap();
    let image: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let url = api.add_file("disk.img", image.clone());
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("disk");
    std::fs::File::create(&device)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();

    let mut cmd = agent();
    cmd.args(["write-image", "--url", &url, "--device"])
        .arg(&device)
        .args([
            "--checksum",
            &sha256_hex(&image),
            "--checksum-type",
            "sha256",
        ]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")).map(String::from))
            .unwrap_or_else(|| panic!("no {k}= in {line:?}"))
    };
    assert_eq!(field("bytes_written"), "3000000");
    assert!(field("seconds").parse::<f64>().unwrap() > 0.0);
    assert!(field("mb_per_s").parse::<f64>().unwrap() > 0.0);
    assert_eq!(field("written_sha256"), sha256_hex(&image));
    let disk = std::fs::read(&device).unwrap();
    assert_eq!(&disk[..image.len()], &image[..]);

    // A wrong checksum fails with exit status 1 and says so; the first MiB is zeroed again.
    let mut cmd = agent();
    cmd.args(["write-image", "--url", &url, "--device"])
        .arg(&device)
        .args(["--checksum", &"ab".repeat(32)]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum mismatch"), "{err}");
    let disk = std::fs::read(&device).unwrap();
    assert!(disk[..1 << 20].iter().all(|b| *b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_inspects_and_exits_after_finish() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_tree(&spec(), &root).unwrap();
    let api = FakeAgentApi::start(&[MAC]).await.unwrap();
    api.set_script(vec![AgentCommand::Inspect { id: "i1".into() }]);
    let mut cmd = agent();
    cmd.args(["run", "--api", &api.url, "--mac", &MAC.to_uppercase()])
        .arg("--root")
        .arg(&root)
        .arg("--dev-dir")
        .arg(dir.path())
        .args(["--lookup-interval-ms", "50", "--once"]);
    let out = tokio::time::timeout(Duration::from_secs(60), output(cmd))
        .await
        .expect("run --once did not exit");
    assert!(out.status.success(), "{out:?}");
    let result = api.result("i1").expect("no inspect result");
    assert_eq!(result.inventory, Some(expected_details(&spec())));
    assert!(api.finished());
}
