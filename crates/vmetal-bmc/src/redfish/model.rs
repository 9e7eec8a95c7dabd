//! Serde shapes of the Redfish resources and request bodies the client uses, tolerant of
//! vendor differences: every field is optional or defaulted and unknown fields are ignored.

use serde::{Deserialize, Serialize};

/// A link to another resource (`{"@odata.id": "..."}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct Link {
    #[serde(rename = "@odata.id", default)]
    pub odata_id: String,
}

/// `/redfish/v1/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ServiceRoot {
    #[serde(rename = "Systems")]
    pub systems: Option<Link>,
    #[serde(rename = "Managers")]
    pub managers: Option<Link>,
    #[serde(rename = "SessionService")]
    pub session_service: Option<Link>,
    #[serde(rename = "Links")]
    pub links: ServiceRootLinks,
}

/// `Links` of the service root.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ServiceRootLinks {
    #[serde(rename = "Sessions")]
    pub sessions: Option<Link>,
}

/// Any resource collection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Collection {
    #[serde(rename = "Members")]
    pub members: Vec<Link>,
}

/// `ComputerSystem`, the parts vmetal reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ComputerSystem {
    #[serde(rename = "@odata.etag")]
    pub odata_etag: Option<String>,
    #[serde(rename = "Manufacturer")]
    pub manufacturer: Option<String>,
    #[serde(rename = "Model")]
    pub model: Option<String>,
    #[serde(rename = "SerialNumber")]
    pub serial_number: Option<String>,
    #[serde(rename = "UUID")]
    pub uuid: Option<String>,
    #[serde(rename = "BiosVersion")]
    pub bios_version: Option<String>,
    #[serde(rename = "PowerState")]
    pub power_state: Option<String>,
    #[serde(rename = "Boot")]
    pub boot: Option<Boot>,
    #[serde(rename = "Actions")]
    pub actions: SystemActions,
    #[serde(rename = "Links")]
    pub links: SystemLinks,
    /// ComputerSystem v1.13+ may carry virtual media itself.
    #[serde(rename = "VirtualMedia")]
    pub virtual_media: Option<Link>,
}

/// `Boot` of a system.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Boot {
    #[serde(rename = "BootSourceOverrideTarget")]
    pub target: Option<String>,
    #[serde(rename = "BootSourceOverrideTarget@Redfish.AllowableValues")]
    pub target_allowable: Option<Vec<String>>,
    #[serde(rename = "BootSourceOverrideEnabled")]
    pub enabled: Option<String>,
    #[serde(rename = "BootSourceOverrideMode")]
    pub mode: Option<String>,
}

/// `Actions` of a system.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SystemActions {
    #[serde(rename = "#ComputerSystem.Reset")]
    pub reset: Option<ResetAction>,
}

/// `#ComputerSystem.Reset`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ResetAction {
    pub target: Option<String>,
    #[serde(rename = "ResetType@Redfish.AllowableValues")]
    pub allowable: Option<Vec<String>>,
    #[serde(rename = "@Redfish.ActionInfo")]
    pub action_info: Option<String>,
}

/// `ActionInfo`, where some BMCs list the allowed parameter values instead.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ActionInfo {
    #[serde(rename = "Parameters")]
    pub parameters: Vec<ActionParameter>,
}

/// One `ActionInfo` parameter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ActionParameter {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "AllowableValues")]
    pub allowable: Option<Vec<String>>,
}

/// `Links` of a system.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SystemLinks {
    #[serde(rename = "ManagedBy")]
    pub managed_by: Vec<Link>,
}

/// `Manager`, the parts vmetal reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Manager {
    #[serde(rename = "VirtualMedia")]
    pub virtual_media: Option<Link>,
}

/// `VirtualMedia`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct VirtualMedia {
    #[serde(rename = "@odata.id")]
    pub odata_id: String,
    #[serde(rename = "@odata.etag")]
    pub odata_etag: Option<String>,
    #[serde(rename = "MediaTypes")]
    pub media_types: Vec<String>,
    #[serde(rename = "Image")]
    pub image: Option<String>,
    #[serde(rename = "Inserted")]
    pub inserted: Option<bool>,
    #[serde(rename = "Actions")]
    pub actions: VirtualMediaActions,
}

/// `Actions` of a virtual media device.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct VirtualMediaActions {
    #[serde(rename = "#VirtualMedia.InsertMedia")]
    pub insert: Option<ActionTarget>,
    #[serde(rename = "#VirtualMedia.EjectMedia")]
    pub eject: Option<ActionTarget>,
}

/// An action with only its target read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ActionTarget {
    pub target: Option<String>,
}

/// A Redfish error response (`{"error": {...}}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorResponse {
    pub error: ErrorBody,
}

/// The `error` object of an error response.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorBody {
    pub message: Option<String>,
    #[serde(rename = "@Message.ExtendedInfo")]
    pub extended_info: Vec<ExtendedInfo>,
}

/// One `@Message.ExtendedInfo` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ExtendedInfo {
    #[serde(rename = "Message")]
    pub message: Option<String>,
    #[serde(rename = "MessageId")]
    pub message_id: Option<String>,
}

impl ErrorResponse {
    /// The most useful human-readable text: every extended message, else the summary.
    pub fn text(&self) -> Option<String> {
        let extended: Vec<&str> = self
            .error
            .extended_info
            .iter()
            .filter_map(|i| i.message.as_deref().or(i.message_id.as_deref()))
            .collect();
        if !extended.is_empty() {
            Some(extended.join("; "))
        } else {
            self.error.message.clone()
        }
    }
}

/// Body of `POST #ComputerSystem.Reset`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ResetRequest<'a> {
    #[serde(rename = "ResetType")]
    pub reset_type: &'a str,
}

/// Body of the boot override `PATCH` of a system.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BootPatch<'a> {
    #[serde(rename = "Boot")]
    pub boot: BootPatchInner<'a>,
}

/// The `Boot` object of [`BootPatch`].
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BootPatchInner<'a> {
    #[serde(rename = "BootSourceOverrideTarget")]
    pub target: &'a str,
    #[serde(rename = "BootSourceOverrideEnabled")]
    pub enabled: &'a str,
    #[serde(
        rename = "BootSourceOverrideMode",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<&'a str>,
}

/// Body of `POST #VirtualMedia.InsertMedia`, and of the `PATCH` fallback.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InsertMediaRequest<'a> {
    #[serde(rename = "Image")]
    pub image: &'a str,
    #[serde(rename = "Inserted")]
    pub inserted: bool,
    #[serde(rename = "WriteProtected")]
    pub write_protected: bool,
}

/// Body of the eject `PATCH` fallback.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EjectMediaPatch {
    #[serde(rename = "Image")]
    pub image: Option<String>,
    #[serde(rename = "Inserted")]
    pub inserted: bool,
}

/// Body of `POST SessionService/Sessions`.
#[derive(Serialize)]
pub(crate) struct SessionLogin<'a> {
    #[serde(rename = "UserName")]
    pub user_name: &'a str,
    #[serde(rename = "Password")]
    pub password: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redfish::plan;
    use crate::{BootDevice, BootModeOverride, BootOverride};

    #[test]
    fn reset_body() {
        insta::assert_json_snapshot!(ResetRequest {
            reset_type: "ForceRestart"
        });
    }

    #[test]
    fn boot_patch_body_pxe_once_switching_to_uefi() {
        let current = Boot {
            mode: Some("Legacy".into()),
            ..Boot::default()
        };
        let pxe = BootOverride::once(BootDevice::Pxe, Some(BootModeOverride::Uefi));
        let body = plan::boot_patch(pxe, Some(&current)).map_err(|e| e.0);
        insta::assert_json_snapshot!(body.ok());
    }

    #[test]
    fn boot_patch_body_disk_persistent_mode_unchanged() {
        let current = Boot {
            mode: Some("UEFI".into()),
            ..Boot::default()
        };
        let disk = BootOverride {
            device: BootDevice::Disk,
            persistent: true,
            mode: Some(BootModeOverride::Uefi),
        };
        let body = plan::boot_patch(disk, Some(&current)).map_err(|e| e.0);
        insta::assert_json_snapshot!(body.ok());
    }

    #[test]
    fn insert_media_body() {
        insta::assert_json_snapshot!(InsertMediaRequest {
            image: "http://10.0.0.1:6180/agent.iso",
            inserted: true,
            write_protected: true,
        });
    }

    #[test]
    fn eject_media_patch_body() {
        insta::assert_json_snapshot!(EjectMediaPatch {
            image: None,
            inserted: false,
        });
    }

    #[test]
    fn session_login_body() {
        insta::assert_json_snapshot!(SessionLogin {
            user_name: "admin",
            password: "example-password",
        });
    }

    #[test]
    fn a_sparse_vendor_system_still_parses() {
        let system: ComputerSystem =
            serde_json::from_str(r#"{"PowerState":"On","Oem":{"Vendor":{"X":1}}}"#)
                .unwrap_or_default();
        assert_eq!(system.power_state.as_deref(), Some("On"));
        assert!(system.boot.is_none());
        assert!(system.actions.reset.is_none());
    }

    #[test]
    fn error_text_prefers_extended_info() {
        let body: ErrorResponse = serde_json::from_str(
            r#"{"error":{"code":"Base.1.8.GeneralError","message":"A general error",
               "@Message.ExtendedInfo":[{"MessageId":"Base.1.8.PropertyValueNotInList",
               "Message":"The value Floppy for BootSourceOverrideTarget is not in the list"}]}}"#,
        )
        .unwrap_or_default();
        assert_eq!(
            body.text().as_deref(),
            Some("The value Floppy for BootSourceOverrideTarget is not in the list")
        );
        let bare: ErrorResponse =
            serde_json::from_str(r#"{"error":{"message":"nope"}}"#).unwrap_or_default();
        assert_eq!(bare.text().as_deref(), Some("nope"));
    }
}
