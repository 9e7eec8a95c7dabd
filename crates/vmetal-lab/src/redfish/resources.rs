//! The Redfish documents the virtual BMC serves, built from a simulated server's identity and
//! state as plain functions (service root, collections, system, manager, virtual media, errors).

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Value, json};
use vmetal_bmc::{BootDevice, BootModeOverride, PowerState};

use crate::sim::SimulatedServer;

/// Root of the service.
pub(crate) const ROOT: &str = "/redfish/v1";
/// The sessions collection.
pub(crate) const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";
/// The virtual media device ids each manager has.
pub(crate) const CD: &str = "Cd";
/// A second device that is not a CD, so clients must choose by `MediaTypes`.
pub(crate) const FLOPPY: &str = "Floppy";

/// `ResetType` values the simulated systems accept.
pub(crate) const RESET_TYPES: [&str; 7] = [
    "On",
    "ForceOn",
    "ForceOff",
    "GracefulShutdown",
    "GracefulRestart",
    "ForceRestart",
    "PowerCycle",
];
/// `BootSourceOverrideTarget` values the simulated systems accept.
pub(crate) const BOOT_TARGETS: [&str; 6] = ["None", "Pxe", "Hdd", "Cd", "BiosSetup", "UefiHttp"];

/// `/redfish/v1/Systems/<id>`.
pub(crate) fn system_path(id: &str) -> String {
    format!("{ROOT}/Systems/{id}")
}

/// `/redfish/v1/Managers/<id>`: each system has its own manager, with the same id.
pub(crate) fn manager_path(id: &str) -> String {
    format!("{ROOT}/Managers/{id}")
}

fn media_path(id: &str, device: &str) -> String {
    format!("{}/VirtualMedia/{device}", manager_path(id))
}

/// `/redfish`.
pub(crate) fn versions() -> Value {
    json!({ "v1": "/redfish/v1/" })
}

/// The service root.
pub(crate) fn service_root(uuid: &str) -> Value {
    json!({
        "@odata.id": "/redfish/v1/",
        "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot",
        "Id": "RootService",
        "Name": "vmetal lab Redfish service",
        "RedfishVersion": "1.15.0",
        "UUID": uuid,
        "Systems": { "@odata.id": format!("{ROOT}/Systems") },
        "Managers": { "@odata.id": format!("{ROOT}/Managers") },
        "SessionService": { "@odata.id": format!("{ROOT}/SessionService") },
        "Links": { "Sessions": { "@odata.id": SESSIONS } },
    })
}

/// A resource collection of `members` paths.
pub(crate) fn collection(path: &str, odata_type: &str, name: &str, members: &[String]) -> Value {
    let links: Vec<Value> = members.iter().map(|m| json!({ "@odata.id": m })).collect();
    json!({
        "@odata.id": path,
        "@odata.type": odata_type,
        "Name": name,
        "Members@odata.count": links.len(),
        "Members": links,
    })
}

/// The ComputerSystem of `server`, with its `@odata.etag`.
pub(crate) fn system(server: &SimulatedServer) -> Value {
    let id = &server.identity().id;
    let ident = server.identity();
    let state = server.state();
    let (enabled, target) = match state.boot_override {
        None => ("Disabled", "None"),
        Some(b) => (
            if b.persistent { "Continuous" } else { "Once" },
            boot_target_name(b.device),
        ),
    };
    let path = system_path(id);
    let doc = json!({
        "@odata.id": path,
        "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem",
        "Id": id,
        "Name": format!("Simulated server {id}"),
        "SystemType": "Physical",
        "Manufacturer": ident.manufacturer,
        "Model": ident.model,
        "SerialNumber": ident.serial_number,
        "UUID": ident.uuid,
        "BiosVersion": ident.bios_version,
        "PowerState": power_state_name(state.power),
        "Status": { "State": "Enabled", "Health": "OK" },
        "Boot": {
            "BootSourceOverrideEnabled": enabled,
            "BootSourceOverrideEnabled@Redfish.AllowableValues": ["Disabled", "Once", "Continuous"],
            "BootSourceOverrideTarget": target,
            "BootSourceOverrideTarget@Redfish.AllowableValues": BOOT_TARGETS,
            "BootSourceOverrideMode": boot_mode_name(state.boot_mode),
            "BootSourceOverrideMode@Redfish.AllowableValues": ["UEFI", "Legacy"],
        },
        "Links": { "ManagedBy": [ { "@odata.id": manager_path(id) } ] },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": format!("{path}/Actions/ComputerSystem.Reset"),
                "ResetType@Redfish.AllowableValues": RESET_TYPES,
            }
        },
    });
    with_etag(doc)
}

/// The Manager (BMC) of system `id`.
pub(crate) fn manager(id: &str) -> Value {
    json!({
        "@odata.id": manager_path(id),
        "@odata.type": "#Manager.v1_10_0.Manager",
        "Id": id,
        "Name": format!("BMC of simulated server {id}"),
        "ManagerType": "BMC",
        "Status": { "State": "Enabled", "Health": "OK" },
        "VirtualMedia": { "@odata.id": format!("{}/VirtualMedia", manager_path(id)) },
        "Links": { "ManagerForServers": [ { "@odata.id": system_path(id) } ] },
    })
}

/// The virtual media collection of manager `id`.
pub(crate) fn media_collection(id: &str) -> Value {
    collection(
        &format!("{}/VirtualMedia", manager_path(id)),
        "#VirtualMediaCollection.VirtualMediaCollection",
        "Virtual Media",
        &[media_path(id, FLOPPY), media_path(id, CD)],
    )
}

/// The CD drive of `server`, with InsertMedia/EjectMedia actions and its `@odata.etag`.
pub(crate) fn cd(server: &SimulatedServer) -> Value {
    let id = &server.identity().id;
    let path = media_path(id, CD);
    let image = server.state().virtual_media;
    let doc = json!({
        "@odata.id": path,
        "@odata.type": "#VirtualMedia.v1_6_0.VirtualMedia",
        "Id": CD,
        "Name": "Virtual CD",
        "MediaTypes": ["CD", "DVD"],
        "Image": image,
        "ImageName": image.as_deref().and_then(|u| u.rsplit('/').next()),
        "Inserted": image.is_some(),
        "WriteProtected": true,
        "ConnectedVia": if image.is_some() { "URI" } else { "NotConnected" },
        "Actions": {
            "#VirtualMedia.InsertMedia": {
                "target": format!("{path}/Actions/VirtualMedia.InsertMedia"),
            },
            "#VirtualMedia.EjectMedia": {
                "target": format!("{path}/Actions/VirtualMedia.EjectMedia"),
            },
        },
    });
    with_etag(doc)
}

/// The (always empty) floppy drive of system `id`.
pub(crate) fn floppy(id: &str) -> Value {
    json!({
        "@odata.id": media_path(id, FLOPPY),
        "@odata.type": "#VirtualMedia.v1_6_0.VirtualMedia",
        "Id": FLOPPY,
        "Name": "Virtual Floppy",
        "MediaTypes": ["Floppy", "USBStick"],
        "Image": null,
        "Inserted": false,
        "WriteProtected": true,
        "ConnectedVia": "NotConnected",
    })
}

/// The session service.
pub(crate) fn session_service() -> Value {
    json!({
        "@odata.id": format!("{ROOT}/SessionService"),
        "@odata.type": "#SessionService.v1_1_8.SessionService",
        "Id": "SessionService",
        "Name": "Session Service",
        "ServiceEnabled": true,
        "SessionTimeout": 1800,
        "Sessions": { "@odata.id": SESSIONS },
    })
}

/// One session (never its token).
pub(crate) fn session(session_id: &str, user: &str) -> Value {
    json!({
        "@odata.id": format!("{SESSIONS}/{session_id}"),
        "@odata.type": "#Session.v1_5_0.Session",
        "Id": session_id,
        "Name": "User Session",
        "UserName": user,
    })
}

/// A Redfish error body with one `@Message.ExtendedInfo` entry.
pub(crate) fn error(message_id: &str, message: &str) -> Value {
    json!({
        "error": {
            "code": format!("Base.1.16.{message_id}"),
            "message": message,
            "@Message.ExtendedInfo": [ {
                "@odata.type": "#Message.v1_1_2.Message",
                "MessageId": format!("Base.1.16.{message_id}"),
                "Message": message,
                "Severity": "Warning",
                "MessageSeverity": "Warning",
            } ],
        }
    })
}

/// The ETag of a document, as put in its `@odata.etag` and the `ETag` header.
pub(crate) fn etag_of(doc: &Value) -> Option<String> {
    doc.get("@odata.etag")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Add `@odata.etag`: a weak tag over the document's content.
fn with_etag(mut doc: Value) -> Value {
    let mut hasher = DefaultHasher::new();
    doc.to_string().hash(&mut hasher);
    let tag = format!("W/\"{:016x}\"", hasher.finish());
    if let Some(map) = doc.as_object_mut() {
        map.insert("@odata.etag".into(), Value::String(tag));
    }
    doc
}

/// Redfish `PowerState`.
pub(crate) fn power_state_name(power: PowerState) -> &'static str {
    match power {
        PowerState::On => "On",
        PowerState::Off => "Off",
        PowerState::PoweringOn => "PoweringOn",
        PowerState::PoweringOff => "PoweringOff",
    }
}

/// Redfish `BootSourceOverrideTarget` of a device.
pub(crate) fn boot_target_name(device: BootDevice) -> &'static str {
    match device {
        BootDevice::Pxe => "Pxe",
        BootDevice::Disk => "Hdd",
        BootDevice::Cd => "Cd",
        BootDevice::BiosSetup => "BiosSetup",
        BootDevice::UefiHttp => "UefiHttp",
    }
}

/// Redfish `BootSourceOverrideMode`.
pub(crate) fn boot_mode_name(mode: BootModeOverride) -> &'static str {
    match mode {
        BootModeOverride::Uefi => "UEFI",
        BootModeOverride::Legacy => "Legacy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::ServerIdentity;

    #[test]
    fn the_etag_changes_with_the_state() {
        let server = SimulatedServer::new(ServerIdentity::numbered(0));
        let before = etag_of(&system(&server));
        assert_eq!(before, etag_of(&system(&server)));
        server.power_on();
        assert_ne!(before, etag_of(&system(&server)));
    }

    #[test]
    fn the_system_has_the_properties_dmtf_requires() {
        let server = SimulatedServer::new(ServerIdentity::numbered(4));
        let doc = system(&server);
        for key in ["@odata.id", "@odata.type", "Id", "Name"] {
            assert!(doc.get(key).is_some(), "{key}");
        }
        assert_eq!(doc["@odata.id"], "/redfish/v1/Systems/5");
        assert_eq!(doc["Boot"]["BootSourceOverrideTarget"], "None");
        assert_eq!(doc["PowerState"], "Off");
    }
}
