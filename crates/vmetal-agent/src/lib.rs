//! The in-memory installer that runs on the server being provisioned.
//!
//! Booted from the vmetal ramdisk, it reports inventory, writes the OS image (raw or qcow2) and
//! the config drive to disk, wipes disks when cleaning, and asks the controller to reboot it. It
//! keeps no plan of its own: each step comes from the controller's agent API. Everything that
//! touches `/proc`, `/sys` or `/dev` takes a root path, so tests and simulated servers run it
//! against fixture trees and disk files.

pub mod client;
pub mod cmdline;
pub mod configdrive;
pub mod error;
pub mod fat;
pub mod fixture;
pub mod growing;
pub mod image;
pub mod inventory;
pub mod netup;
pub mod partition;
pub mod rawwrite;
pub mod rootdev;
pub mod run;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wipe;

pub use configdrive::{read_config_drive, write_config_drive};
pub use error::AgentError;
pub use fixture::{FixtureSpec, expected_details, write_tree};
pub use image::{WriteReport, write_image};
pub use inventory::collect;
pub use rootdev::choose_root_device;
pub use run::{AgentConfig, AgentOutcome, run};
pub use wipe::{wipe_full, wipe_metadata};
