//! Out-of-band server control: the [`Bmc`] trait and its drivers.
//!
//! Redfish (thin typed client over HTTP) and IPMI 2.0 over LAN (RMCP+ "lanplus"), with sans-IO
//! protocol codecs shared with the virtual BMCs in `vmetal-lab`. Addresses are parsed by
//! [`vmetal_api::bmc_address`]; [`connect`] turns a parsed address into a live driver.

mod credentials;
mod error;
pub mod ipmi;
mod model;
pub mod redfish;

pub use credentials::Credentials;
pub use error::BmcError;
pub use model::{
    BootDevice, BootModeOverride, BootOverride, ConnectOptions, PowerAction, PowerState, SystemInfo,
};

use async_trait::async_trait;
use vmetal_api::bmc_address::BmcAddress;

/// One server's baseboard management controller.
///
/// Every method is safe to call repeatedly; errors say which BMC failed and whether retrying
/// can help ([`BmcError::is_transient`]). Credentials never appear in errors or logs.
#[async_trait]
pub trait Bmc: Send + Sync {
    /// The address this driver talks to (for logs and errors).
    fn address(&self) -> &BmcAddress;

    /// Prove the address and credentials work, cheaply (used at registration).
    async fn validate(&self) -> Result<(), BmcError>;

    /// The current power state.
    async fn power_state(&self) -> Result<PowerState, BmcError>;

    /// Change the power state.
    async fn power(&self, action: PowerAction) -> Result<(), BmcError>;

    /// Choose the device the server boots from next (or always, when persistent).
    async fn set_boot_device(&self, boot: BootOverride) -> Result<(), BmcError>;

    /// Manufacturer, model, serial, UUID, BIOS version and power state, as far as the
    /// protocol offers them.
    async fn system_info(&self) -> Result<SystemInfo, BmcError>;

    /// Insert a virtual CD from `image_url` (Redfish only).
    async fn insert_virtual_media(&self, image_url: &str) -> Result<(), BmcError> {
        let _ = image_url;
        Err(BmcError::NotSupported {
            address: self.address().to_string(),
            operation: "virtual media insert",
        })
    }

    /// Eject any virtual CD (Redfish only).
    async fn eject_virtual_media(&self) -> Result<(), BmcError> {
        Err(BmcError::NotSupported {
            address: self.address().to_string(),
            operation: "virtual media eject",
        })
    }

    /// End the session with the BMC (logout); later calls open a new one.
    async fn close(&self) -> Result<(), BmcError> {
        Ok(())
    }
}

/// A driver for `address`: Redfish for the Redfish family of schemes, IPMI for `ipmi://`,
/// `libvirt://` and bare hosts.
pub fn connect(
    address: &BmcAddress,
    credentials: Credentials,
    options: ConnectOptions,
) -> Result<Box<dyn Bmc>, BmcError> {
    use vmetal_api::bmc_address::Protocol;
    Ok(match address.driver.protocol() {
        Protocol::Redfish => Box::new(redfish::RedfishBmc::new(
            address.clone(),
            credentials,
            options,
        )?),
        Protocol::Ipmi => Box::new(ipmi::IpmiBmc::new(address.clone(), credentials, options)?),
    })
}
