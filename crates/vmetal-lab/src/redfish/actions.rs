//! What the virtual BMC does with a Reset, a boot-override PATCH or a virtual media request:
//! plain functions from a parsed body to a change of the simulated server, or a Redfish error.

use axum::http::StatusCode;
use serde_json::Value;
use vmetal_bmc::{BootDevice, BootModeOverride, BootOverride};

use super::resources::{BOOT_TARGETS, RESET_TYPES};
use crate::sim::SimulatedServer;

/// A request the virtual BMC refuses: the status and the Redfish message to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub message_id: &'static str,
    pub message: String,
}

impl Refusal {
    fn bad_request(message_id: &'static str, message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message_id,
            message,
        }
    }
}

/// `#ComputerSystem.Reset` with body `{"ResetType": ...}`.
pub(crate) fn reset(server: &SimulatedServer, body: &Value) -> Result<(), Refusal> {
    let Some(reset_type) = body.get("ResetType").and_then(Value::as_str) else {
        return Err(Refusal::bad_request(
            "ActionParameterMissing",
            "The action ComputerSystem.Reset requires the parameter ResetType to be present in \
             the request body."
                .into(),
        ));
    };
    match reset_type {
        "On" | "ForceOn" => server.power_on(),
        "ForceOff" => server.power_off(),
        "GracefulShutdown" => server.soft_off(),
        "GracefulRestart" | "ForceRestart" => server.reset(),
        "PowerCycle" => server.power_cycle(),
        other => {
            return Err(Refusal::bad_request(
                "ActionParameterValueNotInList",
                format!(
                    "The value '{other}' for the parameter ResetType in the action \
                     ComputerSystem.Reset is not in the list of acceptable values ({}).",
                    RESET_TYPES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// PATCH of a system: only `Boot` (override target, enabled, mode) can change.
pub(crate) fn patch_system(server: &SimulatedServer, body: &Value) -> Result<(), Refusal> {
    let Some(object) = body.as_object() else {
        return Err(Refusal::bad_request(
            "MalformedJSON",
            "The request body must be a JSON object.".into(),
        ));
    };
    if let Some(key) = object.keys().find(|k| *k != "Boot") {
        return Err(Refusal::bad_request(
            "PropertyNotWritable",
            format!("The property {key} is a read only property and cannot be assigned a value."),
        ));
    }
    let Some(boot) = object.get("Boot") else {
        return Ok(());
    };
    let text = |name: &str| boot.get(name).and_then(Value::as_str);
    let current = server.state();
    let mode = match text("BootSourceOverrideMode") {
        None => None,
        Some("UEFI") => Some(BootModeOverride::Uefi),
        Some("Legacy") => Some(BootModeOverride::Legacy),
        Some(other) => {
            return Err(not_in_list(
                other,
                "BootSourceOverrideMode",
                &["UEFI", "Legacy"],
            ));
        }
    };
    let target = match text("BootSourceOverrideTarget") {
        None => current.boot_override.map(|b| Some(b.device)),
        Some(name) => Some(parse_target(name)?),
    };
    let enabled = text("BootSourceOverrideEnabled");
    let persistent = match enabled {
        None => current.boot_override.is_some_and(|b| b.persistent),
        Some("Once") => false,
        Some("Continuous") => true,
        Some("Disabled") => false,
        Some(other) => {
            return Err(not_in_list(
                other,
                "BootSourceOverrideEnabled",
                &["Disabled", "Once", "Continuous"],
            ));
        }
    };
    match (target.flatten(), enabled) {
        (Some(device), e) if e != Some("Disabled") => {
            server.set_boot_override(BootOverride {
                device,
                persistent,
                mode,
            });
        }
        _ => {
            if let Some(mode) = mode {
                // The model sets the mode along with an override; clear it straight after.
                server.set_boot_override(BootOverride::once(BootDevice::Disk, Some(mode)));
            }
            server.clear_boot_override();
        }
    }
    Ok(())
}

/// `BootSourceOverrideTarget` name to device; `None` for "None".
fn parse_target(name: &str) -> Result<Option<BootDevice>, Refusal> {
    Ok(Some(match name {
        "None" => return Ok(None),
        "Pxe" => BootDevice::Pxe,
        "Hdd" => BootDevice::Disk,
        "Cd" => BootDevice::Cd,
        "BiosSetup" => BootDevice::BiosSetup,
        "UefiHttp" => BootDevice::UefiHttp,
        other => {
            return Err(not_in_list(
                other,
                "BootSourceOverrideTarget",
                &BOOT_TARGETS,
            ));
        }
    }))
}

fn not_in_list(value: &str, property: &str, allowed: &[&str]) -> Refusal {
    Refusal::bad_request(
        "PropertyValueNotInList",
        format!(
            "The value '{value}' for the property {property} is not in the list of acceptable \
             values ({}).",
            allowed.join(", ")
        ),
    )
}

/// `#VirtualMedia.InsertMedia` with `{"Image": url, ...}`, or the equivalent PATCH with
/// `Inserted: true`. A PATCH with `Inserted: false` or `Image: null` ejects.
pub(crate) fn insert_media(server: &SimulatedServer, body: &Value) -> Result<(), Refusal> {
    let inserted = body.get("Inserted").and_then(Value::as_bool);
    match body.get("Image") {
        Some(Value::String(url)) if inserted != Some(false) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Refusal::bad_request(
                    "PropertyValueFormatError",
                    format!("The value '{url}' for the property Image is not an http(s) URL."),
                ));
            }
            if server.state().virtual_media.is_some() {
                return Err(Refusal {
                    status: StatusCode::CONFLICT,
                    message_id: "ResourceInUse",
                    message: "The virtual CD already holds an image; eject it first.".into(),
                });
            }
            server.insert_media(url);
            Ok(())
        }
        Some(Value::Null) | Some(Value::String(_)) => {
            server.eject_media();
            Ok(())
        }
        None if inserted == Some(false) => {
            server.eject_media();
            Ok(())
        }
        _ => Err(Refusal::bad_request(
            "ActionParameterMissing",
            "The action VirtualMedia.InsertMedia requires the parameter Image to be present in \
             the request body."
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::sim::ServerIdentity;

    #[test]
    fn boot_patch_sets_a_one_time_override_and_disabled_clears_it() {
        let server = SimulatedServer::new(ServerIdentity::numbered(0));
        let once_pxe = json!({"Boot": {"BootSourceOverrideTarget": "Pxe",
            "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "Legacy"}});
        assert_eq!(patch_system(&server, &once_pxe), Ok(()));
        let state = server.state();
        assert_eq!(
            state.boot_override,
            Some(BootOverride::once(
                BootDevice::Pxe,
                Some(BootModeOverride::Legacy)
            ))
        );
        assert_eq!(state.boot_mode, BootModeOverride::Legacy);
        let off = json!({"Boot": {"BootSourceOverrideEnabled": "Disabled"}});
        assert_eq!(patch_system(&server, &off), Ok(()));
        assert_eq!(server.state().boot_override, None);
    }

    #[test]
    fn unknown_values_are_refused_with_the_allowed_list() {
        let server = SimulatedServer::new(ServerIdentity::numbered(0));
        let floppy = json!({"Boot": {"BootSourceOverrideTarget": "Floppy"}});
        let refusal = patch_system(&server, &floppy).err();
        assert_eq!(
            refusal.map(|r| (r.status, r.message_id)),
            Some((StatusCode::BAD_REQUEST, "PropertyValueNotInList"))
        );
        let bad_reset = reset(&server, &json!({"ResetType": "Explode"})).err();
        assert!(bad_reset.is_some_and(|r| r.message.contains("ForceRestart")));
        let read_only = patch_system(&server, &json!({"PowerState": "On"})).err();
        assert!(read_only.is_some_and(|r| r.message_id == "PropertyNotWritable"));
    }

    #[test]
    fn media_insert_then_patch_eject() {
        let server = SimulatedServer::new(ServerIdentity::numbered(0));
        let insert = json!({"Image": "http://images/agent.iso", "Inserted": true});
        assert_eq!(insert_media(&server, &insert), Ok(()));
        assert_eq!(
            server.state().virtual_media.as_deref(),
            Some("http://images/agent.iso")
        );
        assert!(insert_media(&server, &insert).is_err());
        let eject = json!({"Image": null, "Inserted": false});
        assert_eq!(insert_media(&server, &eject), Ok(()));
        assert_eq!(server.state().virtual_media, None);
    }
}
