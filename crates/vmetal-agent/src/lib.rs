//! The in-memory installer that runs on the server being provisioned.
//!
//! Booted from the vmetal ramdisk, it reports inventory, writes the OS image (raw or qcow2) and
//! the config drive to disk, wipes disks when cleaning, and asks the controller to reboot it. It
//! keeps no plan of its own: each step comes from the controller's agent API.
