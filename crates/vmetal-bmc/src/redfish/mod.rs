//! Redfish driver: a thin typed client over reqwest + serde for the handful of resources
//! provisioning needs (systems, reset, boot override, virtual media, sessions).

mod bmc;
mod client;
mod model;
mod plan;
pub mod tls;

pub use bmc::RedfishBmc;
