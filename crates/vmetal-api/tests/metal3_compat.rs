//! Metal3 compatibility: real-world BareMetalHost manifests survive a round trip through our
//! types, and the checked-in CRDs are what the code generates.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use vmetal_api::states::{ErrorType, ProvisioningState};
use vmetal_api::{BareMetalHost, Machine};

/// Drop `null`s and comment-only differences so the comparison is about content.
fn normalise(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, normalise(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalise).collect()),
        other => other,
    }
}

/// Every JSON path in `original` with its value, for a readable diff on failure.
fn paths(v: &Value, prefix: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                paths(child, format!("{prefix}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                paths(child, format!("{prefix}[{i}]"), out);
            }
        }
        leaf => out.push((prefix, leaf.clone())),
    }
}

#[test]
fn full_metal3_manifest_round_trips_without_losing_a_field() {
    let yaml = include_str!("fixtures/metal3-bmh-full.yaml");
    let original: Value = normalise(serde_yaml::from_str(yaml).unwrap());
    let host: BareMetalHost = serde_yaml::from_str(yaml).expect("Metal3 manifest deserialises");
    let back = normalise(serde_json::to_value(&host).unwrap());

    let mut want = Vec::new();
    paths(&original, String::new(), &mut want);
    let mut got = Vec::new();
    paths(&back, String::new(), &mut got);
    let missing: Vec<_> = want.iter().filter(|p| !got.contains(p)).collect();
    let extra: Vec<_> = got.iter().filter(|p| !want.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "lost or changed in round trip: {missing:#?}"
    );
    assert!(extra.is_empty(), "added in round trip: {extra:#?}");

    // A few fields by their Rust names, so a silent rename would be caught too.
    let status = host.status.as_ref().unwrap();
    assert_eq!(status.provisioning.state, ProvisioningState::Provisioned);
    assert_eq!(
        status.provisioning.id,
        "4f1e5a3c-8b7d-4e2a-9c1b-0d2e3f4a5b6c"
    );
    assert_eq!(status.error_type, Some(ErrorType::ProvisioningError));
    assert_eq!(host.spec.boot_mac_address, "00:5c:52:31:3a:9c");
    assert_eq!(status.hardware.as_ref().unwrap().gpu_count(), 1);
    assert!(host.inspection_disabled());
}

#[test]
fn minimal_manifest_keeps_required_keys() {
    let yaml = "apiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata: {name: h}\nspec:\n  online: false\n";
    let host: BareMetalHost = serde_yaml::from_str(yaml).unwrap();
    let json = serde_json::to_value(&host).unwrap();
    assert_eq!(json["spec"]["online"], Value::Bool(false));
    assert_eq!(host.provisioning_state(), ProvisioningState::None);
}

#[test]
fn provisioning_id_key_is_capitalised() {
    let mut host: BareMetalHost = serde_yaml::from_str(
        "apiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata: {name: h}\nspec: {online: true}\n",
    )
    .unwrap();
    let mut status = vmetal_api::BareMetalHostStatus::default();
    status.provisioning.id = "abc".into();
    host.status = Some(status);
    let json = serde_json::to_value(&host).unwrap();
    assert_eq!(json["status"]["provisioning"]["ID"], "abc");
    assert!(json["status"]["provisioning"].get("id").is_none());
}

#[test]
fn examples_deserialise() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    let mut hosts = 0;
    let mut machines = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap();
            match value["kind"].as_str() {
                Some("BareMetalHost") => {
                    let h: BareMetalHost = serde_json::from_value(value).unwrap();
                    let addr = &h.spec.bmc.as_ref().unwrap().address;
                    vmetal_api::bmc_address::BmcAddress::parse(addr)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    hosts += 1;
                }
                Some("Machine") => {
                    let m: Machine = serde_json::from_value(value).unwrap();
                    m.spec.validate().unwrap();
                    machines += 1;
                }
                _ => {}
            }
        }
    }
    assert!(
        hosts >= 2 && machines >= 1,
        "{hosts} hosts, {machines} machines"
    );
}

use serde::Deserialize;

#[test]
fn checked_in_crds_match_the_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    for crd in vmetal_api::crds::all() {
        let file = dir.join(vmetal_api::crds::file_name(&crd));
        let on_disk = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let generated = format!("---\n{}", vmetal_api::crds::to_yaml(&crd).unwrap());
        assert!(
            on_disk == generated,
            "{} is stale: regenerate it with `cargo run -p vmetal -- crds --dir deploy/crds`",
            file.display()
        );
    }
}
