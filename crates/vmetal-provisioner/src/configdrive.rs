//! ConfigDrive v2 images: a FAT filesystem labelled `config-2` with `openstack/latest/*`,
//! built from a host's userData/networkData/metaData Secrets the way Metal3 builds them.
//!
//! cloud-init's ConfigDrive datasource (and Ignition's OpenStack provider) find the drive by its
//! label. Images carry no timestamps, so the same inputs give the same bytes.

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use base64::Engine;
use k8s_openapi::api::core::v1::{Secret, SecretReference};
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde_json::{Map, Value};
use vmetal_api::BareMetalHost;
use vmetal_api::states::ImageFormat;

use crate::error::ProvisionerError;

/// The filesystem label cloud-init looks for.
pub const LABEL: &str = "config-2";
/// Path of the metadata file inside the drive.
pub const META_DATA_PATH: &str = "openstack/latest/meta_data.json";
/// Path of the user data file inside the drive.
pub const USER_DATA_PATH: &str = "openstack/latest/user_data";
/// Path of the network data file inside the drive.
pub const NETWORK_DATA_PATH: &str = "openstack/latest/network_data.json";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Images grow in steps of this size.
const IMAGE_STEP: u64 = 64 * KIB;
/// Smallest image: a FAT12 volume with room for typical cloud-init data; every heartbeat that
/// carries a deploy command carries the image too, so small matters.
const MIN_IMAGE_BYTES: u64 = 256 * KIB;
/// Ironic's limit for a config drive.
const MAX_IMAGE_BYTES: u64 = 64 * MIB;

fn drive_error(reason: impl std::fmt::Display) -> ProvisionerError {
    ProvisionerError::ConfigDrive {
        reason: reason.to_string(),
    }
}

/// Builds a ConfigDrive v2 FAT image (label `config-2`) holding `meta_data.json` and, when
/// given, `user_data` and `network_data.json` under `openstack/latest/`.
///
/// The image is sized to its contents: at least 256 KiB, in steps of 64 KiB; more than 64 MiB
/// (Ironic's limit) is refused.
pub fn build_config_drive(
    meta_data: &Value,
    user_data: Option<&[u8]>,
    network_data: Option<&Value>,
) -> Result<Vec<u8>, ProvisionerError> {
    let meta = serde_json::to_vec(meta_data).map_err(drive_error)?;
    let network = network_data
        .map(serde_json::to_vec)
        .transpose()
        .map_err(drive_error)?;
    let mut files: Vec<(&str, &[u8])> = vec![(META_DATA_PATH, &meta)];
    if let Some(u) = user_data {
        files.push((USER_DATA_PATH, u));
    }
    if let Some(n) = &network {
        files.push((NETWORK_DATA_PATH, n));
    }

    // FAT overhead (boot sector, two FATs, directories, cluster slack) stays under
    // 128 KiB plus an eighth of the payload at these sizes.
    let payload: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let wanted = payload + payload / 8 + 128 * KIB;
    let size = (wanted.div_ceil(IMAGE_STEP) * IMAGE_STEP).max(MIN_IMAGE_BYTES);
    if size > MAX_IMAGE_BYTES {
        return Err(drive_error(format!(
            "contents take {payload} bytes; a config drive holds at most 64 MiB"
        )));
    }

    let mut disk = Cursor::new(vec![0u8; size as usize]);
    let mut label = [b' '; 11];
    label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .volume_label(label)
            .volume_id(0x636f_6e66),
    )
    .map_err(|e| drive_error(format!("formatting: {e}")))?;
    write_root_dir_label(disk.get_mut(), &label)?;
    disk.seek(SeekFrom::Start(0)).map_err(drive_error)?;

    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
            .map_err(|e| drive_error(format!("mounting the new filesystem: {e}")))?;
        let root = fs.root_dir();
        let dir = root
            .create_dir("openstack")
            .and_then(|d| d.create_dir("latest"))
            .map_err(|e| drive_error(format!("creating openstack/latest: {e}")))?;
        for (path, data) in &files {
            let name = path.rsplit('/').next().unwrap_or(path);
            let mut file = dir
                .create_file(name)
                .map_err(|e| drive_error(format!("creating {path}: {e}")))?;
            file.truncate()
                .and_then(|()| file.write_all(data))
                .and_then(|()| file.flush())
                .map_err(|e| drive_error(format!("writing {path}: {e}")))?;
        }
        drop(dir);
        drop(root);
        fs.unmount()
            .map_err(|e| drive_error(format!("closing the filesystem: {e}")))?;
    }
    Ok(disk.into_inner())
}

/// Writes the volume-label entry into the (empty) FAT12/16 root directory: Linux's blkid reads
/// the label from there first and only falls back to the boot sector.
fn write_root_dir_label(image: &mut [u8], label: &[u8; 11]) -> Result<(), ProvisionerError> {
    let u16_at = |off: usize| {
        image
            .get(off..off + 2)
            .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let (Some(bytes_per_sector), Some(reserved), Some(sectors_per_fat)) =
        (u16_at(11), u16_at(14), u16_at(22))
    else {
        return Err(drive_error("formatted image too small"));
    };
    let fats = image.get(16).copied().map(u64::from).unwrap_or(0);
    if sectors_per_fat == 0 {
        // FAT32 keeps the root directory in a cluster; the boot-sector label is all it gets.
        return Ok(());
    }
    let root = usize::try_from((reserved + fats * sectors_per_fat) * bytes_per_sector)
        .map_err(drive_error)?;
    let entry = image
        .get_mut(root..root + 32)
        .ok_or_else(|| drive_error("root directory outside the image"))?;
    entry.fill(0);
    entry[..11].copy_from_slice(label);
    entry[11] = 0x08; // ATTR_VOLUME_ID
    Ok(())
}

/// Reads one file (`openstack/latest/user_data`) from a config drive image; `None` when the
/// file does not exist.
pub fn read_config_drive_file(
    image: &[u8],
    path: &str,
) -> Result<Option<Vec<u8>>, ProvisionerError> {
    let mut disk = Cursor::new(image.to_vec());
    let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
        .map_err(|e| drive_error(format!("not a FAT filesystem: {e}")))?;
    let mut file = match fs.root_dir().open_file(path.trim_start_matches('/')) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(drive_error(format!("opening {path}: {e}"))),
    };
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| drive_error(format!("reading {path}: {e}")))?;
    Ok(Some(data))
}

/// The volume label of a config drive image (trailing spaces removed).
pub fn config_drive_label(image: &[u8]) -> Result<String, ProvisionerError> {
    let mut disk = Cursor::new(image.to_vec());
    let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
        .map_err(|e| drive_error(format!("not a FAT filesystem: {e}")))?;
    let from_root = fs.read_volume_label_from_root_dir().map_err(drive_error)?;
    Ok(from_root
        .unwrap_or_else(|| fs.volume_label())
        .trim_end()
        .to_owned())
}

/// Metal3's default metadata for a host: `uuid` (the BMH's uid), `metal3-namespace`,
/// `metal3-name`, `local-hostname`, `local_hostname` and `name`.
pub fn default_meta_data(host: &BareMetalHost) -> Value {
    let name = host.name_any();
    serde_json::json!({
        "uuid": host.uid().unwrap_or_default(),
        "metal3-namespace": host.namespace().unwrap_or_default(),
        "metal3-name": name,
        "local-hostname": name,
        "local_hostname": name,
        "name": name,
    })
}

/// Overlays user metadata on the defaults, key by key, as Metal3 does (unmarshalling the
/// metaData Secret into the default map). A non-object `overrides` changes nothing.
pub fn merge_meta_data(defaults: &mut Value, overrides: Value) {
    if let (Some(base), Value::Object(extra)) = (defaults.as_object_mut(), overrides) {
        base.extend(extra);
    }
}

/// The config drive for deploying `host`, base64-encoded, or `None` when the image is a live
/// ISO (nothing is written to disk, so there is nowhere to put one).
///
/// Reads the Secrets named by `spec.userData` (key `userData`, else `value`), `spec.networkData`
/// (key `networkData`, else `value`; falling back to `spec.preprovisioningNetworkDataName`)
/// and `spec.metaData` (key `metaData`, else `value`, merged over [`default_meta_data`]).
/// networkData and metaData may be YAML or JSON.
pub async fn config_drive_for(
    client: &Client,
    host: &BareMetalHost,
) -> Result<Option<String>, ProvisionerError> {
    if host
        .spec
        .image
        .as_ref()
        .is_some_and(|i| i.format == Some(ImageFormat::LiveIso))
    {
        return Ok(None);
    }
    let namespace = host
        .namespace()
        .ok_or_else(|| ProvisionerError::MissingMetadata {
            kind: "BareMetalHost",
            name: host.name_any(),
            field: "metadata.namespace",
        })?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);

    let user_data = match &host.spec.user_data {
        Some(r) => Some(secret_value(&secrets, host, r, "userData").await?),
        None => None,
    };
    let network_ref = host.spec.network_data.clone().or_else(|| {
        let name = &host.spec.preprovisioning_network_data_name;
        (!name.is_empty()).then(|| SecretReference {
            name: Some(name.clone()),
            namespace: None,
        })
    });
    let network_data = match &network_ref {
        Some(r) => {
            let raw = secret_value(&secrets, host, r, "networkData").await?;
            Some(parse_yaml(&raw, &namespace, r, "networkData")?)
        }
        None => None,
    };
    let mut meta_data = default_meta_data(host);
    if let Some(r) = &host.spec.meta_data {
        let raw = secret_value(&secrets, host, r, "metaData").await?;
        merge_meta_data(&mut meta_data, parse_yaml(&raw, &namespace, r, "metaData")?);
    }

    let image = build_config_drive(&meta_data, user_data.as_deref(), network_data.as_ref())?;
    Ok(Some(
        base64::engine::general_purpose::STANDARD.encode(image),
    ))
}

/// Reads `key` (or Metal3's fallback key `value`) from the Secret `reference` names.
async fn secret_value(
    secrets: &Api<Secret>,
    host: &BareMetalHost,
    reference: &SecretReference,
    key: &str,
) -> Result<Vec<u8>, ProvisionerError> {
    let namespace = host.namespace().unwrap_or_default();
    let name = reference.name.clone().unwrap_or_default();
    if let Some(other) = reference
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty() && *ns != namespace)
    {
        return Err(ProvisionerError::CrossNamespaceSecret {
            namespace,
            host: host.name_any(),
            secret_namespace: other.to_owned(),
            secret: name,
        });
    }
    let not_found = || ProvisionerError::SecretNotFound {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    if name.is_empty() {
        return Err(not_found());
    }
    let secret = secrets
        .get_opt(&name)
        .await
        .map_err(|e| ProvisionerError::kube("get", "Secret", &namespace, &name, e))?
        .ok_or_else(not_found)?;
    let data = secret.data.unwrap_or_default();
    let string_data = secret.string_data.unwrap_or_default();
    data.get(key)
        .or_else(|| data.get("value"))
        .map(|v| v.0.clone())
        .or_else(|| {
            string_data
                .get(key)
                .or_else(|| string_data.get("value"))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| ProvisionerError::SecretKeyMissing {
            namespace: namespace.clone(),
            name: name.clone(),
            key: key.to_owned(),
            fallback: Some("value".to_owned()),
        })
}

fn parse_yaml(
    raw: &[u8],
    namespace: &str,
    reference: &SecretReference,
    key: &str,
) -> Result<Value, ProvisionerError> {
    let invalid = |reason: String| ProvisionerError::SecretValueInvalid {
        namespace: namespace.to_owned(),
        name: reference.name.clone().unwrap_or_default(),
        key: key.to_owned(),
        reason,
    };
    let value: Value = serde_yaml::from_slice(raw).map_err(|e| invalid(e.to_string()))?;
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err(invalid("must be a YAML or JSON mapping".into())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host() -> BareMetalHost {
        let mut h = BareMetalHost::new("worker-3", Default::default());
        h.metadata.namespace = Some("rack-a".into());
        h.metadata.uid = Some("6f1c-uid".into());
        h
    }

    #[test]
    fn every_file_reads_back_and_the_label_is_config_2() {
        let meta = default_meta_data(&host());
        let user = b"#cloud-config\nhostname: worker-3\n";
        let network = json!({"links": [{"id": "eth0", "type": "phy"}], "networks": []});
        let image = build_config_drive(&meta, Some(user), Some(&network)).unwrap();

        assert_eq!(image.len() as u64, MIN_IMAGE_BYTES);
        assert_eq!(config_drive_label(&image).unwrap(), "config-2");
        let read = |p| read_config_drive_file(&image, p).unwrap().unwrap();
        assert_eq!(read(USER_DATA_PATH), user);
        let back: Value = serde_json::from_slice(&read(META_DATA_PATH)).unwrap();
        assert_eq!(back, meta);
        let back: Value = serde_json::from_slice(&read(NETWORK_DATA_PATH)).unwrap();
        assert_eq!(back, network);
    }

    #[test]
    fn optional_files_are_absent_when_not_given() {
        let image = build_config_drive(&json!({"uuid": "x"}), None, None).unwrap();
        assert!(
            read_config_drive_file(&image, USER_DATA_PATH)
                .unwrap()
                .is_none()
        );
        assert!(
            read_config_drive_file(&image, NETWORK_DATA_PATH)
                .unwrap()
                .is_none()
        );
        assert!(
            read_config_drive_file(&image, META_DATA_PATH)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn same_inputs_give_the_same_bytes() {
        let meta = default_meta_data(&host());
        let a = build_config_drive(&meta, Some(b"x"), None).unwrap();
        let b = build_config_drive(&meta, Some(b"x"), None).unwrap();
        assert!(a == b);
    }

    #[test]
    fn large_user_data_grows_the_image_and_oversize_is_refused() {
        let big = vec![b'a'; 3 * MIB as usize];
        let image = build_config_drive(&json!({}), Some(&big), None).unwrap();
        assert!(image.len() as u64 > 3 * MIB);
        assert_eq!(image.len() as u64 % IMAGE_STEP, 0);
        assert_eq!(
            read_config_drive_file(&image, USER_DATA_PATH)
                .unwrap()
                .unwrap(),
            big
        );
        assert_eq!(config_drive_label(&image).unwrap(), "config-2");

        let huge = vec![0u8; 65 * MIB as usize];
        let err = build_config_drive(&json!({}), Some(&huge), None).unwrap_err();
        assert!(err.to_string().contains("64 MiB"), "{err}");
    }

    #[test]
    fn garbage_is_not_a_config_drive() {
        assert!(read_config_drive_file(&[0u8; 4096], META_DATA_PATH).is_err());
    }

    #[test]
    fn default_meta_data_matches_metal3_and_user_keys_win() {
        let mut meta = default_meta_data(&host());
        assert_eq!(
            meta,
            json!({
                "uuid": "6f1c-uid",
                "metal3-namespace": "rack-a",
                "metal3-name": "worker-3",
                "local-hostname": "worker-3",
                "local_hostname": "worker-3",
                "name": "worker-3",
            })
        );
        merge_meta_data(
            &mut meta,
            json!({"local-hostname": "w3.example", "role": "gpu"}),
        );
        assert_eq!(meta["local-hostname"], "w3.example");
        assert_eq!(meta["role"], "gpu");
        assert_eq!(meta["uuid"], "6f1c-uid");
    }

    #[test]
    fn yaml_and_json_secret_values_parse() {
        let r = SecretReference {
            name: Some("md".into()),
            namespace: None,
        };
        let v = parse_yaml(b"role: gpu\nzone: a\n", "ns", &r, "metaData").unwrap();
        assert_eq!(v, json!({"role": "gpu", "zone": "a"}));
        let v = parse_yaml(br#"{"links": []}"#, "ns", &r, "networkData").unwrap();
        assert_eq!(v, json!({"links": []}));
        let err = parse_yaml(b"- a\n- b\n", "ns", &r, "metaData").unwrap_err();
        assert!(err.to_string().contains("ns/md"), "{err}");
    }
}
