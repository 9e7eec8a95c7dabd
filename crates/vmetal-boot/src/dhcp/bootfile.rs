//! Which boot file a client gets, by architecture (option 93) and by whether it is already
//! iPXE, which breaks the chainload loop by handing iPXE its per-MAC script URL.

use vmetal_api::mac::MacAddress;

use super::request::{ClientKind, Request};

/// The iPXE binaries served over TFTP (names relative to the TFTP root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// Arch 0 (x86 BIOS).
    pub bios: String,
    /// Arch 6, 7, 9 (x86 UEFI); `ipxe.efi` or `snponly.efi`.
    pub efi_x86: String,
    /// Arch 11 (ARM64 UEFI).
    pub efi_arm64: String,
}

impl Default for BootFiles {
    fn default() -> Self {
        Self {
            bios: "undionly.kpxe".to_owned(),
            efi_x86: "ipxe.efi".to_owned(),
            efi_arm64: "snp-arm64.efi".to_owned(),
        }
    }
}

/// What the client is told to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootTarget {
    /// A file name on our TFTP server (next-server = us).
    Tftp(String),
    /// A full URL (iPXE script, or a binary for UEFI HTTP boot).
    Url(String),
}

impl BootTarget {
    /// The value of the `file` header field.
    pub fn file(&self) -> &str {
        match self {
            Self::Tftp(f) | Self::Url(f) => f,
        }
    }
}

/// URL of a MAC's iPXE script on our HTTP server.
pub fn script_url(http_base: &str, mac: &MacAddress) -> String {
    format!("{http_base}/boot/{mac}.ipxe")
}

/// The boot target for a network-boot client, or `None` for an architecture we have no
/// binary for (ARM32, Itanium, unassigned values).
pub fn choose(req: &Request, files: &BootFiles, http_base: &str) -> Option<BootTarget> {
    if req.is_ipxe() {
        return Some(BootTarget::Url(script_url(http_base, &req.mac)));
    }
    // A PXE client without option 93 is an old BIOS ROM.
    let arch = req.arch.unwrap_or(0);
    let http = req.client_kind() == ClientKind::Http;
    let file = match arch {
        0 => &files.bios,
        6 | 7 | 9 => &files.efi_x86,
        11 => &files.efi_arm64,
        15 | 16 => {
            return Some(BootTarget::Url(format!(
                "{http_base}/ipxe/{}",
                files.efi_x86
            )));
        }
        19 => {
            return Some(BootTarget::Url(format!(
                "{http_base}/ipxe/{}",
                files.efi_arm64
            )));
        }
        _ => return None,
    };
    if http {
        // An HTTPClient with a PXE architecture still needs a URL.
        Some(BootTarget::Url(format!("{http_base}/ipxe/{file}")))
    } else {
        Some(BootTarget::Tftp(file.clone()))
    }
}
