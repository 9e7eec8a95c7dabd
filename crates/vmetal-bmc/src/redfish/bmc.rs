//! [`RedfishBmc`]: the [`Bmc`] operations as Redfish resource reads, `ComputerSystem.Reset`
//! actions, boot-override PATCHes and virtual media actions on one system.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OnceCell;
use vmetal_api::bmc_address::BmcAddress;

use super::client::Client;
use super::model::{
    ActionInfo, Collection, ComputerSystem, EjectMediaPatch, InsertMediaRequest, Manager,
    ResetRequest, VirtualMedia,
};
use super::plan;
use crate::{
    Bmc, BmcError, BootDevice, BootOverride, ConnectOptions, Credentials, PowerAction, PowerState,
    SystemInfo,
};

/// How often and how long to wait for a system to report off between `ForceOff` and `On`.
const POWER_POLL_INTERVAL: Duration = Duration::from_millis(500);
const POWER_POLL_ATTEMPTS: u32 = 20;

/// A Redfish BMC managing one system (from the address path, or the only one it has).
///
/// Authenticates with a SessionService session when the BMC offers one (basic auth
/// otherwise); [`Bmc::close`] deletes the session, and so does dropping the driver inside a
/// tokio runtime, best effort.
pub struct RedfishBmc {
    address: BmcAddress,
    client: Client,
    system: OnceCell<String>,
}

impl std::fmt::Debug for RedfishBmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedfishBmc")
            .field("address", &self.address.to_string())
            .finish_non_exhaustive()
    }
}

impl RedfishBmc {
    /// A driver for a Redfish `address`. Nothing is sent until the first operation.
    ///
    /// Fails when the address is not a Redfish one or a CA in `options` cannot be used.
    pub fn new(
        address: BmcAddress,
        credentials: Credentials,
        options: ConnectOptions,
    ) -> Result<Self, BmcError> {
        let name = address.to_string();
        let base_url = address.base_url().ok_or_else(|| BmcError::NotSupported {
            address: name.clone(),
            operation: "Redfish (the address uses a non-Redfish driver)",
        })?;
        let client = Client::new(base_url, name, credentials, &options)?;
        Ok(Self {
            address,
            client,
            system: OnceCell::new(),
        })
    }

    /// The path of the managed system: from the address, else the only member of `Systems`.
    async fn system_path(&self) -> Result<&str, BmcError> {
        self.system
            .get_or_try_init(|| async {
                if !self.address.path.is_empty() && self.address.path != "/" {
                    return Ok(self.address.path.trim_end_matches('/').to_string());
                }
                let root = self.client.service_root().await?;
                let systems = root
                    .systems
                    .as_ref()
                    .map_or("/redfish/v1/Systems", |l| l.odata_id.as_str())
                    .to_string();
                let (collection, _) = self
                    .client
                    .get::<Collection>(&systems, "system discovery")
                    .await?;
                only_system(self.client.address(), collection)
            })
            .await
            .map(String::as_str)
    }

    /// The system resource and its ETag (header, else `@odata.etag`).
    async fn system(
        &self,
        operation: &'static str,
    ) -> Result<(ComputerSystem, Option<String>), BmcError> {
        let path = self.system_path().await?;
        let (system, etag) = self.client.get::<ComputerSystem>(path, operation).await?;
        let etag = etag.or_else(|| system.odata_etag.clone());
        Ok((system, etag))
    }

    /// The `ResetType` values the system allows, from the action or its `ActionInfo`.
    async fn allowed_reset_types(&self, system: &ComputerSystem) -> Option<Vec<String>> {
        let reset = system.actions.reset.as_ref()?;
        if let Some(values) = &reset.allowable {
            return Some(values.clone());
        }
        let info_path = reset.action_info.as_ref()?;
        // ActionInfo is optional help; without it the standard values are assumed.
        let (info, _) = self
            .client
            .get::<ActionInfo>(info_path, "reading reset options")
            .await
            .ok()?;
        info.parameters
            .into_iter()
            .find(|p| p.name == "ResetType")
            .and_then(|p| p.allowable)
    }

    async fn reset(
        &self,
        target: &str,
        reset_type: &str,
        operation: &'static str,
    ) -> Result<(), BmcError> {
        let body = ResetRequest { reset_type };
        self.client.post(target, &body, operation).await.map(|_| ())
    }

    /// Poll until the system reports off, so a following `On` is not lost.
    async fn wait_until_off(&self) -> Result<(), BmcError> {
        for _ in 0..POWER_POLL_ATTEMPTS {
            if self.power_state().await? == PowerState::Off {
                return Ok(());
            }
            tokio::time::sleep(POWER_POLL_INTERVAL).await;
        }
        Err(BmcError::Rejected {
            address: self.client.address().to_string(),
            operation: "restart",
            message: "the system did not report PowerState Off after ForceOff".into(),
        })
    }

    /// The CD/DVD virtual media device: on the system itself (ComputerSystem v1.13+) or on a
    /// manager (from `Links.ManagedBy`, else the Managers collection).
    async fn cd_drive(
        &self,
        operation: &'static str,
    ) -> Result<(VirtualMedia, Option<String>), BmcError> {
        let (system, _) = self.system(operation).await?;
        let mut collections: Vec<String> = system
            .virtual_media
            .iter()
            .map(|l| l.odata_id.clone())
            .collect();
        let mut managers: Vec<String> = system
            .links
            .managed_by
            .iter()
            .map(|l| l.odata_id.clone())
            .collect();
        if managers.is_empty() {
            let root = self.client.service_root().await?;
            if let Some(link) = &root.managers {
                let (all, _) = self
                    .client
                    .get::<Collection>(&link.odata_id, operation)
                    .await?;
                managers = all.members.into_iter().map(|l| l.odata_id).collect();
            }
        }
        for manager in managers {
            let (manager, _) = self.client.get::<Manager>(&manager, operation).await?;
            collections.extend(manager.virtual_media.map(|l| l.odata_id));
        }
        for collection in collections {
            let (devices, _) = self
                .client
                .get::<Collection>(&collection, operation)
                .await?;
            let mut found = Vec::new();
            for member in devices.members {
                let (mut device, etag) = self
                    .client
                    .get::<VirtualMedia>(&member.odata_id, operation)
                    .await?;
                if device.odata_id.is_empty() {
                    device.odata_id = member.odata_id;
                }
                let etag = etag.or_else(|| device.odata_etag.clone());
                found.push((device, etag));
            }
            let devices: Vec<VirtualMedia> = found.iter().map(|(d, _)| d.clone()).collect();
            if let Some(cd) = plan::cd_drive(&devices) {
                let id = cd.odata_id.clone();
                if let Some(pair) = found.into_iter().find(|(d, _)| d.odata_id == id) {
                    return Ok(pair);
                }
            }
        }
        Err(BmcError::NotSupported {
            address: self.client.address().to_string(),
            operation: "virtual media (no CD/DVD device found)",
        })
    }

    async fn eject(&self, drive: &VirtualMedia, etag: Option<&str>) -> Result<(), BmcError> {
        const OP: &str = "virtual media eject";
        if let Some(target) = drive
            .actions
            .eject
            .as_ref()
            .and_then(|a| a.target.as_deref())
        {
            return self
                .client
                .post(target, &serde_json::json!({}), OP)
                .await
                .map(|_| ());
        }
        let body = EjectMediaPatch {
            image: None,
            inserted: false,
        };
        let reply = self.client.patch(&drive.odata_id, &body, etag, OP).await?;
        self.client.check(reply, OP).map(|_| ())
    }
}

/// The only member of the Systems collection, or an error naming how many there are.
fn only_system(address: &str, collection: Collection) -> Result<String, BmcError> {
    let mut members = collection.members;
    match members.len() {
        1 => Ok(members.remove(0).odata_id),
        count => {
            let listed: Vec<&str> = members
                .iter()
                .take(5)
                .map(|m| m.odata_id.as_str())
                .collect();
            Err(BmcError::Rejected {
                address: address.to_string(),
                operation: "system discovery",
                message: format!(
                    "the BMC manages {count} systems ({}{}); put the system's path in the \
                     address, e.g. redfish://host/redfish/v1/Systems/<id>",
                    listed.join(", "),
                    if count > listed.len() { ", ..." } else { "" }
                ),
            })
        }
    }
}

fn action_name(action: PowerAction) -> &'static str {
    match action {
        PowerAction::On => "power on",
        PowerAction::ForceOff => "hard power off",
        PowerAction::GracefulShutdown => "graceful shutdown",
        PowerAction::ForceRestart => "restart",
        PowerAction::PowerCycle => "power cycle",
    }
}

fn boot_operation(device: BootDevice) -> &'static str {
    match device {
        BootDevice::Pxe => "boot from PXE",
        BootDevice::Disk => "boot from disk",
        BootDevice::Cd => "boot from CD",
        BootDevice::BiosSetup => "boot to BIOS setup",
        BootDevice::UefiHttp => "UEFI HTTP boot",
    }
}

#[async_trait]
impl Bmc for RedfishBmc {
    fn address(&self) -> &BmcAddress {
        &self.address
    }

    async fn validate(&self) -> Result<(), BmcError> {
        self.system("validation").await.map(|_| ())
    }

    async fn power_state(&self) -> Result<PowerState, BmcError> {
        let (system, _) = self.system("power state").await?;
        let value = system.power_state.unwrap_or_default();
        plan::power_state(&value).ok_or_else(|| BmcError::MalformedResponse {
            address: self.client.address().to_string(),
            operation: "power state",
            detail: format!("unknown PowerState {value:?}"),
        })
    }

    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let operation = action_name(action);
        let (system, _) = self.system(operation).await?;
        let current = system.power_state.as_deref().and_then(plan::power_state);
        let already = match action {
            PowerAction::On => current.is_some_and(PowerState::is_on),
            PowerAction::ForceOff | PowerAction::GracefulShutdown => {
                current == Some(PowerState::Off)
            }
            PowerAction::ForceRestart | PowerAction::PowerCycle => false,
        };
        if already {
            return Ok(());
        }
        let allowed = self.allowed_reset_types(&system).await;
        let types = plan::reset_types(action, allowed.as_deref(), current).map_err(|e| {
            tracing::warn!(address = %self.client.address(), "{}", e.0);
            BmcError::NotSupported {
                address: self.client.address().to_string(),
                operation,
            }
        })?;
        let system_path = self.system_path().await?;
        let target = system
            .actions
            .reset
            .as_ref()
            .and_then(|r| r.target.clone())
            .unwrap_or_else(|| format!("{system_path}/Actions/ComputerSystem.Reset"));
        for (step, reset_type) in types.iter().enumerate() {
            if step > 0 && types.first() == Some(&"ForceOff") {
                self.wait_until_off().await?;
            }
            self.reset(&target, reset_type, operation).await?;
        }
        Ok(())
    }

    async fn set_boot_device(&self, boot: BootOverride) -> Result<(), BmcError> {
        let operation = boot_operation(boot.device);
        let mut refreshed = false;
        loop {
            let (system, etag) = self.system(operation).await?;
            let body = plan::boot_patch(boot, system.boot.as_ref()).map_err(|e| {
                tracing::warn!(address = %self.client.address(), "{}", e.0);
                BmcError::NotSupported {
                    address: self.client.address().to_string(),
                    operation,
                }
            })?;
            let path = self.system_path().await?;
            let reply = self
                .client
                .patch(path, &body, etag.as_deref(), operation)
                .await?;
            // The system changed between our read and write: read it again, once.
            if reply.status == reqwest::StatusCode::PRECONDITION_FAILED && !refreshed {
                refreshed = true;
                continue;
            }
            return self.client.check(reply, operation).map(|_| ());
        }
    }

    async fn system_info(&self) -> Result<SystemInfo, BmcError> {
        let (system, _) = self.system("system information").await?;
        Ok(SystemInfo {
            manufacturer: system.manufacturer,
            model: system.model,
            serial_number: system.serial_number,
            uuid: system.uuid.map(|u| u.to_ascii_lowercase()),
            bios_version: system.bios_version,
            power_state: system.power_state.as_deref().and_then(plan::power_state),
        })
    }

    async fn insert_virtual_media(&self, image_url: &str) -> Result<(), BmcError> {
        const OP: &str = "virtual media insert";
        let (drive, etag) = self.cd_drive(OP).await?;
        if drive.inserted == Some(true) {
            if drive.image.as_deref() == Some(image_url) {
                return Ok(());
            }
            self.eject(&drive, etag.as_deref()).await?;
        }
        let body = InsertMediaRequest {
            image: image_url,
            inserted: true,
            write_protected: true,
        };
        if let Some(target) = drive
            .actions
            .insert
            .as_ref()
            .and_then(|a| a.target.as_deref())
        {
            return self.client.post(target, &body, OP).await.map(|_| ());
        }
        // No InsertMedia action (older BMCs): set the properties instead. The ETag may have
        // changed by an eject above, so read it again.
        let (_, etag) = self.cd_drive(OP).await?;
        let reply = self
            .client
            .patch(&drive.odata_id, &body, etag.as_deref(), OP)
            .await?;
        self.client.check(reply, OP).map(|_| ())
    }

    async fn eject_virtual_media(&self) -> Result<(), BmcError> {
        let (drive, etag) = self.cd_drive("virtual media eject").await?;
        if drive.inserted == Some(false) || (drive.inserted.is_none() && drive.image.is_none()) {
            return Ok(());
        }
        self.eject(&drive, etag.as_deref()).await
    }

    async fn close(&self) -> Result<(), BmcError> {
        self.client.logout().await
    }
}

impl Drop for RedfishBmc {
    fn drop(&mut self) {
        if let Some((url, token)) = self.client.take_session() {
            self.client.delete_session_detached(url, token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redfish::model::Link;

    fn members(n: usize) -> Collection {
        Collection {
            members: (1..=n)
                .map(|i| Link {
                    odata_id: format!("/redfish/v1/Systems/{i}"),
                })
                .collect(),
        }
    }

    #[test]
    fn discovery_takes_the_only_system() {
        assert_eq!(
            only_system("redfish://bmc:443", members(1)),
            Ok("/redfish/v1/Systems/1".to_string())
        );
    }

    #[test]
    fn discovery_names_the_count_when_ambiguous() {
        let err = only_system("redfish://bmc:443", members(7)).err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("manages 7 systems"), "{text}");
        assert!(text.contains("redfish://bmc:443"), "{text}");
        let none = only_system("redfish://bmc:443", members(0)).err();
        assert!(
            none.map(|e| e.to_string())
                .unwrap_or_default()
                .contains("manages 0 systems")
        );
    }
}
