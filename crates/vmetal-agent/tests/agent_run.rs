//! End-to-end runs of the agent against the scripted fake agent API: inspect, deploy (raw and
//! qcow2, with config drive), wipe, and the failures a user must see with the right kind.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use vmetal_agent::partition::{GPT_TYPE_EFI_SYSTEM, Gpt};
use vmetal_agent::testing::FakeAgentApi;
use vmetal_agent::{AgentConfig, AgentError, FixtureSpec, expected_details, fat, run};
use vmetal_api::agent::{AgentCommand, AgentErrorKind, DeployCommand, WipeMode};
use vmetal_api::states::{ChecksumType, ImageFormat};

const MAC: &str = "52:54:00:aa:bb:01";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

struct Machine {
    _dir: tempfile::TempDir,
    root: PathBuf,
    dev: PathBuf,
    spec: FixtureSpec,
}

impl Machine {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        let spec = FixtureSpec {
            cpus: 8,
            cpu_model: "Intel(R) Xeon(R) Silver 4314".into(),
            ram_mib: 32768,
            nics: vec![
                ("eno1".into(), MAC.into(), 10),
                ("eno2".into(), "52:54:00:aa:bb:02".into(), 25),
            ],
            disks: vec![
                (
                    "sda".into(),
                    8 * GIB,
                    false,
                    "Micron 5300".into(),
                    "SSD-A".into(),
                ),
                (
                    "sdb".into(),
                    20 * GIB,
                    true,
                    "Seagate Exos".into(),
                    "HDD-B".into(),
                ),
            ],
            gpus: vec![],
            manufacturer: "vmetal".into(),
            product: "Test Server".into(),
            serial: "T1".into(),
            bios_version: "2.0".into(),
        };
        vmetal_agent::write_tree(&spec, &root).unwrap();
        for (name, size, ..) in &spec.disks {
            let f = std::fs::File::create(dev.join(name)).unwrap();
            f.set_len(*size).unwrap();
        }
        Self {
            _dir: dir,
            root,
            dev,
            spec,
        }
    }

    fn config(&self, api: &FakeAgentApi) -> AgentConfig {
        AgentConfig {
            api_url: api.url.clone(),
            mac_addresses: vec![],
            root: self.root.clone(),
            dev_dir: self.dev.clone(),
            heartbeat_interval_override: Some(Duration::from_millis(10)),
            lookup_retry: Duration::from_millis(10),
        }
    }

    fn read(&self, disk: &str, offset: u64, len: u64) -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(self.dev.join(disk)).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf).unwrap();
        buf
    }
}

/// A whole-disk raw image of `len` bytes: a GPT with one partition and a data pattern.
fn raw_image(len: u64, seed: u8) -> Vec<u8> {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let mut f = tmp.reopen().unwrap();
    f.set_len(len).unwrap();
    let mut gpt = Gpt::new(len / 512, [seed; 16]);
    gpt.add_partition(
        GPT_TYPE_EFI_SYSTEM,
        [seed ^ 1; 16],
        2048,
        len / 512 - 34,
        "root",
    )
    .unwrap();
    gpt.write(&mut f).unwrap();
    let mut img = std::fs::read(tmp.path()).unwrap();
    for (i, b) in img[MIB as usize..(len - MIB) as usize]
        .iter_mut()
        .enumerate()
    {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    img
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config_drive() -> Vec<u8> {
    fat::build(
        "config-2",
        &[
            (
                "openstack/latest/meta_data.json",
                br#"{"uuid":"u-1","local-hostname":"worker-1"}"#,
            ),
            (
                "openstack/latest/user_data",
                b"#cloud-config\nruncmd: [join]\n",
            ),
        ],
    )
    .unwrap()
}

fn deploy(id: &str, url: &str, checksum: &str, format: Option<ImageFormat>) -> AgentCommand {
    AgentCommand::Deploy(Box::new(DeployCommand {
        id: id.into(),
        image_url: url.into(),
        checksum: checksum.into(),
        checksum_type: None,
        format,
        root_device_hints: None,
        config_drive: Some(base64::engine::general_purpose::STANDARD.encode(config_drive())),
        download_stall_timeout_seconds: None,
    }))
}

async fn run_cycle(m: &Machine, api: &FakeAgentApi) -> vmetal_agent::AgentOutcome {
    tokio::time::timeout(Duration::from_secs(60), run(m.config(api)))
        .await
        .expect("agent run timed out")
        .expect("agent run failed")
}

#[tokio::test]
async fn inspect_waits_for_work_then_reports_the_fixture_inventory() {
    let m = Machine::new();
    let api = FakeAgentApi::start(&[MAC]).await.unwrap();
    let agent = tokio::spawn(run(m.config(&api)));
    // Nothing to do yet: lookups get 404 and the agent keeps asking.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(api.lookups() >= 2, "agent must retry lookups");
    api.set_script(vec![
        AgentCommand::Wait,
        AgentCommand::Inspect {
            id: "c1/inspect".into(),
        },
    ]);
    let outcome = tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.cycle, "cycle-1");
    let result = api.result("c1/inspect").expect("inspect result reported");
    assert_eq!(result.error, None);
    assert_eq!(result.inventory, Some(expected_details(&m.spec)));
    assert_eq!(outcome.results, api.results());
    assert!(api.finished());
}

#[tokio::test]
async fn raw_deploy_then_wipe_then_qcow2_deploy() {
    let m = Machine::new();
    let api = FakeAgentApi::start(&[MAC]).await.unwrap();

    // Raw image, checksum from a checksum file; lands on sda (smallest disk of >= 4 GiB).
    let image = raw_image(6 * MIB, 7);
    let url = api.add_file("disk.img", image.clone());
    let sums = format!(
        "{}  other.img\n{}  disk.img\n",
        "0".repeat(64),
        sha256_hex(&image)
    );
    let sums_url = api.add_file("SHA256SUMS", sums.into_bytes());
    api.set_script(vec![deploy("c2/deploy", &url, &sums_url, None)]);
    run_cycle(&m, &api).await;
    let r = api.result("c2/deploy").unwrap();
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.root_device.as_deref(), Some("/dev/sda"));
    assert_eq!(r.written_sha256, Some(sha256_hex(&image)));
    // The image is on the disk: everything but the GPT (extended for the config drive).
    assert_eq!(
        m.read("sda", MIB, 4 * MIB),
        image[MIB as usize..5 * MIB as usize]
    );
    let drive = vmetal_agent::read_config_drive(&m.dev.join("sda"))
        .unwrap()
        .unwrap();
    assert_eq!(
        fat::read_file(&drive, "openstack/latest/user_data").unwrap(),
        b"#cloud-config\nruncmd: [join]\n"
    );
    // The progress heartbeats named the command.
    assert!(
        api.heartbeats()
            .iter()
            .all(|h| h.running.as_ref().is_none_or(|p| p.id == "c2/deploy"))
    );

    // Metadata wipe: tables gone at both ends, config drive no longer found.
    api.set_script(vec![AgentCommand::Wipe {
        id: "c3/wipe".into(),
        mode: WipeMode::Metadata,
    }]);
    run_cycle(&m, &api).await;
    assert_eq!(api.result("c3/wipe").unwrap().error, None);
    assert!(m.read("sda", 0, MIB).iter().all(|b| *b == 0));
    assert!(m.read("sda", 8 * GIB - MIB, MIB).iter().all(|b| *b == 0));
    assert_eq!(
        vmetal_agent::read_config_drive(&m.dev.join("sda")).unwrap(),
        None
    );

    // qcow2 whose middle is unallocated: the old raw data there must read as zero afterwards.
    let mut second = raw_image(6 * MIB, 9);
    second[2 * MIB as usize..4 * MIB as usize].fill(0);
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("second.raw");
    let qcow_path = dir.path().join("second.qcow2");
    std::fs::write(&raw_path, &second).unwrap();
    qemu_img_convert(&raw_path, &qcow_path);
    let qcow = std::fs::read(&qcow_path).unwrap();
    let url = api.add_file("second.qcow2", qcow.clone());
    let mut cmd = deploy(
        "c4/deploy",
        &url,
        &sha256_hex(&qcow),
        Some(ImageFormat::Qcow2),
    );
    if let AgentCommand::Deploy(d) = &mut cmd {
        d.checksum_type = Some(ChecksumType::Sha256);
    }
    api.set_script(vec![cmd]);
    run_cycle(&m, &api).await;
    let r = api.result("c4/deploy").unwrap();
    assert_eq!(r.error, None, "{r:?}");
    // Only raw images report a digest of what was written; the qcow2's own was verified.
    assert_eq!(r.written_sha256, None);
    // (Its partition tables, first MiB and last sectors, are changed by the config drive.)
    assert!(
        m.read("sda", MIB, 4 * MIB) == second[MIB as usize..5 * MIB as usize],
        "the disk holds the converted image, zeros where it was unallocated"
    );
    assert!(
        vmetal_agent::read_config_drive(&m.dev.join("sda"))
            .unwrap()
            .is_some()
    );

    // Full wipe of every disk.
    api.set_script(vec![AgentCommand::Wipe {
        id: "c5/wipe".into(),
        mode: WipeMode::Full,
    }]);
    run_cycle(&m, &api).await;
    assert!(m.read("sda", 0, 6 * MIB).iter().all(|b| *b == 0));
}

fn qemu_img_convert(src: &Path, dst: &Path) {
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(src)
        .arg(dst)
        .status()
        .expect("qemu-img (package qemu-utils) is required for the qcow2 tests");
    assert!(status.success(), "qemu-img convert failed");
}

#[tokio::test]
async fn checksum_mismatch_and_missing_image_report_their_kinds() {
    let m = Machine::new();
    let api = FakeAgentApi::start(&[MAC]).await.unwrap();
    let image = raw_image(4 * MIB, 3);
    let url = api.add_file("disk.img", image);
    let missing = format!("{}/files/nope.img", api.url);
    api.set_script(vec![
        deploy("bad-sum", &url, &"ab".repeat(32), None),
        deploy("missing", &missing, &"ab".repeat(32), None),
        deploy("vmdk", &url, &"ab".repeat(32), Some(ImageFormat::Vmdk)),
    ]);
    let outcome = run_cycle(&m, &api).await;
    assert_eq!(outcome.results.len(), 3);

    let bad = api.result("bad-sum").unwrap();
    assert_eq!(bad.error_kind, Some(AgentErrorKind::ChecksumMismatch));
    assert!(bad.error.unwrap().contains(&"ab".repeat(32)));
    assert_eq!(bad.written_sha256, None);
    // A half-verified image must not boot: the first MiB was zeroed again.
    assert!(m.read("sda", 0, MIB).iter().all(|b| *b == 0));

    let missing_result = api.result("missing").unwrap();
    assert_eq!(
        missing_result.error_kind,
        Some(AgentErrorKind::ImageDownload)
    );
    let msg = missing_result.error.unwrap();
    assert!(msg.contains("404") && msg.contains("nope.img"), "{msg}");

    let vmdk = api.result("vmdk").unwrap();
    assert_eq!(vmdk.error_kind, Some(AgentErrorKind::ImageFormat));
}

#[tokio::test]
async fn a_revoked_token_ends_the_run() {
    let m = Machine::new();
    let api = FakeAgentApi::start(&[MAC]).await.unwrap();
    api.set_script(vec![AgentCommand::Wait; 10_000]);
    let agent = tokio::spawn(run(m.config(&api)));
    while api.heartbeats().len() < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    api.revoke_token();
    let err = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, AgentError::TokenRejected { status: 403, .. }),
        "{err}"
    );
    assert!(
        !err.to_string().contains("token-1"),
        "the token must not appear in errors"
    );
    assert!(api.rejected() >= 1);
}
