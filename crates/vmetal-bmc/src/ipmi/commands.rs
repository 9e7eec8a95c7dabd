//! The IPMI commands vmetal sends and its virtual BMC answers: NetFn/command numbers, typed
//! request and response bodies, completion codes. Shared by the client and the virtual BMC.

use super::DecodeError;
use super::crypto::CipherSuite;
use super::wire::Reader;

/// NetFn Chassis.
pub const NETFN_CHASSIS: u8 = 0x00;
/// NetFn Application.
pub const NETFN_APP: u8 = 0x06;

/// An IPMI command: NetFn, command number and its name in the specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Command {
    /// Request NetFn.
    pub netfn: u8,
    /// Command number.
    pub code: u8,
    /// Name as in the IPMI specification (used in errors).
    pub name: &'static str,
}

macro_rules! commands {
    ($($(#[$doc:meta])* $ident:ident = ($netfn:expr, $code:expr, $name:expr);)*) => {
        $($(#[$doc])* pub const $ident: Command = Command { netfn: $netfn, code: $code, name: $name };)*
        /// Every command above, for lookups by number.
        pub const ALL: &[Command] = &[$($ident),*];
    };
}

commands! {
    /// Get Device ID.
    GET_DEVICE_ID = (NETFN_APP, 0x01, "Get Device ID");
    /// Get Self Test Results.
    GET_SELF_TEST_RESULTS = (NETFN_APP, 0x04, "Get Self Test Results");
    /// Get Device GUID.
    GET_DEVICE_GUID = (NETFN_APP, 0x08, "Get Device GUID");
    /// Get System GUID.
    GET_SYSTEM_GUID = (NETFN_APP, 0x37, "Get System GUID");
    /// Get Channel Authentication Capabilities.
    GET_CHANNEL_AUTH_CAPABILITIES = (NETFN_APP, 0x38, "Get Channel Authentication Capabilities");
    /// Set Session Privilege Level.
    SET_SESSION_PRIVILEGE_LEVEL = (NETFN_APP, 0x3B, "Set Session Privilege Level");
    /// Close Session.
    CLOSE_SESSION = (NETFN_APP, 0x3C, "Close Session");
    /// Get Channel Cipher Suites.
    GET_CHANNEL_CIPHER_SUITES = (NETFN_APP, 0x54, "Get Channel Cipher Suites");
    /// Get Chassis Status.
    GET_CHASSIS_STATUS = (NETFN_CHASSIS, 0x01, "Get Chassis Status");
    /// Chassis Control.
    CHASSIS_CONTROL = (NETFN_CHASSIS, 0x02, "Chassis Control");
    /// Set System Boot Options.
    SET_SYSTEM_BOOT_OPTIONS = (NETFN_CHASSIS, 0x08, "Set System Boot Options");
    /// Get System Boot Options.
    GET_SYSTEM_BOOT_OPTIONS = (NETFN_CHASSIS, 0x09, "Get System Boot Options");
}

/// The command with this NetFn and number, if vmetal knows it.
pub fn lookup(netfn: u8, code: u8) -> Option<Command> {
    ALL.iter()
        .copied()
        .find(|c| c.netfn == netfn && c.code == code)
}

/// Completion codes.
pub mod completion {
    /// Command completed normally.
    pub const OK: u8 = 0x00;
    /// Command-specific 0x80 (e.g. parameter not supported).
    pub const PARAMETER_NOT_SUPPORTED: u8 = 0x80;
    /// Command-specific 0x81 (e.g. set in progress already, privilege level too high).
    pub const SET_IN_PROGRESS_ACTIVE: u8 = 0x81;
    /// Node busy.
    pub const NODE_BUSY: u8 = 0xC0;
    /// Invalid command.
    pub const INVALID_COMMAND: u8 = 0xC1;
    /// Request data length invalid.
    pub const REQUEST_DATA_LENGTH_INVALID: u8 = 0xC7;
    /// Parameter out of range.
    pub const PARAMETER_OUT_OF_RANGE: u8 = 0xC9;
    /// Invalid data field in request.
    pub const INVALID_DATA_FIELD: u8 = 0xCC;
    /// Insufficient privilege level.
    pub const INSUFFICIENT_PRIVILEGE: u8 = 0xD4;
    /// Command not supported in present state.
    pub const NOT_SUPPORTED_IN_PRESENT_STATE: u8 = 0xD5;
    /// Unspecified error.
    pub const UNSPECIFIED: u8 = 0xFF;

    /// What a generic completion code means.
    pub fn describe(code: u8) -> &'static str {
        match code {
            OK => "command completed normally",
            0x80..=0xBE => "command-specific error",
            NODE_BUSY => "node busy",
            INVALID_COMMAND => "invalid command",
            0xC2 => "command invalid for given LUN",
            0xC3 => "timeout while processing command",
            0xC4 => "out of space",
            0xC5 => "reservation canceled or invalid",
            0xC6 => "request data truncated",
            REQUEST_DATA_LENGTH_INVALID => "request data length invalid",
            0xC8 => "request data field length limit exceeded",
            PARAMETER_OUT_OF_RANGE => "parameter out of range",
            0xCA => "cannot return number of requested data bytes",
            0xCB => "requested sensor, data, or record not present",
            INVALID_DATA_FIELD => "invalid data field in request",
            0xCD => "command illegal for specified sensor or record type",
            0xCE => "command response could not be provided",
            0xCF => "cannot execute duplicated request",
            0xD0 => "SDR repository in update mode",
            0xD1 => "device in firmware update mode",
            0xD2 => "BMC initialization in progress",
            0xD3 => "destination unavailable",
            INSUFFICIENT_PRIVILEGE => "insufficient privilege level",
            NOT_SUPPORTED_IN_PRESENT_STATE => "command not supported in present state",
            0xD6 => "command sub-function disabled or unavailable",
            _ => "unspecified error",
        }
    }
}

/// "This channel" in channel-number fields.
pub const CURRENT_CHANNEL: u8 = 0x0E;

/// Get Channel Authentication Capabilities request data: this channel, asking for IPMI v2.0
/// extended data, at `privilege`.
pub fn channel_auth_capabilities_request(privilege: u8) -> Vec<u8> {
    vec![0x80 | CURRENT_CHANNEL, privilege & 0x0F]
}

/// Get Channel Authentication Capabilities response data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelAuthCapabilities {
    /// The channel that answered.
    pub channel: u8,
    /// IPMI v1.5 authentication types (bits 5:0); bit 7 means extended v2.0 data follows.
    pub auth_types: u8,
    /// Login status: bit 2 non-null user names, bit 1 null user names, bit 0 anonymous.
    pub login_status: u8,
    /// Bit 1: the channel supports IPMI v2.0 (RMCP+) connections; bit 0: IPMI v1.5.
    pub extended: u8,
    /// OEM IANA number.
    pub oem_id: u32,
}

impl ChannelAuthCapabilities {
    /// Whether the channel speaks RMCP+.
    pub fn supports_rmcp_plus(&self) -> bool {
        self.auth_types & 0x80 != 0 && self.extended & 0x02 != 0
    }

    /// Response data (8 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let oem = self.oem_id.to_le_bytes();
        vec![
            self.channel,
            self.auth_types,
            self.login_status,
            self.extended,
            oem[0],
            oem[1],
            oem[2],
            0,
        ]
    }

    /// Decode response data.
    pub fn parse(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("Get Channel Authentication Capabilities response", data);
        let [channel, auth_types, login_status, extended, o0, o1, o2] = r.array()?;
        Ok(Self {
            channel,
            auth_types,
            login_status,
            extended,
            oem_id: u32::from_le_bytes([o0, o1, o2, 0]),
        })
    }
}

/// Bytes of cipher suite records per Get Channel Cipher Suites response.
pub const CIPHER_SUITE_RECORDS_PER_RESPONSE: usize = 16;

/// Get Channel Cipher Suites request data: this channel, IPMI payload, list by cipher suite,
/// record page `index`.
pub fn channel_cipher_suites_request(index: u8) -> Vec<u8> {
    vec![CURRENT_CHANNEL, 0x00, 0x80 | (index & 0x3F)]
}

/// The cipher suite records a BMC supporting `suites` lists (start byte 0xC0, suite ID, then
/// the authentication, integrity (tag 01b) and confidentiality (tag 10b) algorithms).
pub fn encode_cipher_suite_records(suites: &[CipherSuite]) -> Vec<u8> {
    let mut out = Vec::new();
    for suite in suites {
        let (auth, integrity, confidentiality) = suite.algorithms();
        out.extend_from_slice(&[
            0xC0,
            suite.id(),
            auth,
            0x40 | integrity,
            0x80 | confidentiality,
        ]);
    }
    out
}

/// The cipher suite IDs in concatenated record data (standard 0xC0 and OEM 0xC1 records).
pub fn parse_cipher_suite_records(records: &[u8]) -> Vec<u8> {
    let mut ids = Vec::new();
    let mut i = 0;
    while i < records.len() {
        match records[i] {
            0xC0 | 0xC1 => {
                if let Some(&id) = records.get(i + 1) {
                    ids.push(id);
                }
                // OEM records carry a 3-byte IANA number after the ID.
                i += if records[i] == 0xC1 { 5 } else { 2 };
            }
            _ => i += 1, // an algorithm byte
        }
    }
    ids
}

/// Chassis Control operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChassisControl {
    /// Power down (hard off).
    PowerDown,
    /// Power up.
    PowerUp,
    /// Power cycle.
    PowerCycle,
    /// Hard reset.
    HardReset,
    /// Pulse diagnostic interrupt.
    DiagnosticInterrupt,
    /// Soft shutdown via ACPI.
    SoftShutdown,
}

impl ChassisControl {
    /// The request data byte.
    pub fn code(self) -> u8 {
        match self {
            Self::PowerDown => 0,
            Self::PowerUp => 1,
            Self::PowerCycle => 2,
            Self::HardReset => 3,
            Self::DiagnosticInterrupt => 4,
            Self::SoftShutdown => 5,
        }
    }

    /// The operation for a request data byte.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code & 0x0F {
            0 => Self::PowerDown,
            1 => Self::PowerUp,
            2 => Self::PowerCycle,
            3 => Self::HardReset,
            4 => Self::DiagnosticInterrupt,
            5 => Self::SoftShutdown,
            _ => return None,
        })
    }
}

/// Get Chassis Status response data (the mandatory first three bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChassisStatus {
    /// Current power state byte: bit 0 power on, bits 6:5 power restore policy.
    pub power_state: u8,
    /// Last power event.
    pub last_power_event: u8,
    /// Miscellaneous chassis state.
    pub misc: u8,
}

impl ChassisStatus {
    /// Whether system power is on.
    pub fn power_on(&self) -> bool {
        self.power_state & 0x01 != 0
    }

    /// Response data.
    pub fn encode(&self) -> Vec<u8> {
        vec![self.power_state, self.last_power_event, self.misc]
    }

    /// Decode response data.
    pub fn parse(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("Get Chassis Status response", data);
        let [power_state, last_power_event, misc] = r.array()?;
        Ok(Self {
            power_state,
            last_power_event,
            misc,
        })
    }
}

/// Boot option parameter 0: set in progress.
pub const BOOT_PARAM_SET_IN_PROGRESS: u8 = 0;
/// Boot option parameter 4: boot info acknowledge.
pub const BOOT_PARAM_INFO_ACK: u8 = 4;
/// Boot option parameter 5: boot flags.
pub const BOOT_PARAM_BOOT_FLAGS: u8 = 5;
/// Set-in-progress value: set complete.
pub const SET_COMPLETE: u8 = 0;
/// Set-in-progress value: set in progress.
pub const SET_IN_PROGRESS: u8 = 1;
/// Set-in-progress value: commit write.
pub const COMMIT_WRITE: u8 = 2;

/// Boot device selectors (boot flags data 2, bits 5:2).
pub mod boot_device {
    /// No override.
    pub const NONE: u8 = 0x0;
    /// Force PXE.
    pub const PXE: u8 = 0x1;
    /// Force boot from default hard drive.
    pub const DISK: u8 = 0x2;
    /// Force boot from default hard drive, safe mode.
    pub const DISK_SAFE_MODE: u8 = 0x3;
    /// Force boot from diagnostic partition.
    pub const DIAGNOSTIC: u8 = 0x4;
    /// Force boot from CD/DVD.
    pub const CD: u8 = 0x5;
    /// Force boot into BIOS setup.
    pub const BIOS_SETUP: u8 = 0x6;
}

/// Boot flags (boot option parameter 5), the fields vmetal uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootFlags {
    /// The flags are valid (an override is pending).
    pub valid: bool,
    /// Apply to all future boots, not only the next one.
    pub persistent: bool,
    /// Boot in EFI mode (otherwise PC-compatible legacy).
    pub efi: bool,
    /// Device selector, see [`boot_device`].
    pub device: u8,
}

impl BootFlags {
    /// The 5 parameter data bytes.
    pub fn encode(&self) -> [u8; 5] {
        let mut data1 = 0;
        if self.valid {
            data1 |= 0x80;
        }
        if self.persistent {
            data1 |= 0x40;
        }
        if self.efi {
            data1 |= 0x20;
        }
        [data1, (self.device & 0x0F) << 2, 0, 0, 0]
    }

    /// Decode parameter data (at least the first two bytes).
    pub fn parse(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("boot flags", data);
        let [data1, data2] = r.array()?;
        Ok(Self {
            valid: data1 & 0x80 != 0,
            persistent: data1 & 0x40 != 0,
            efi: data1 & 0x20 != 0,
            device: (data2 >> 2) & 0x0F,
        })
    }
}

/// Set System Boot Options request data for `parameter`.
pub fn set_boot_option_request(parameter: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![parameter & 0x7F];
    out.extend_from_slice(data);
    out
}

/// Get System Boot Options request data for `parameter` (set and block selectors 0).
pub fn get_boot_option_request(parameter: u8) -> Vec<u8> {
    vec![parameter & 0x7F, 0, 0]
}

/// The parameter data of a Get System Boot Options response (after version and selector).
pub fn parse_boot_option_response(data: &[u8]) -> Result<&[u8], DecodeError> {
    let mut r = Reader::new("Get System Boot Options response", data);
    let _version = r.u8()?;
    let _selector = r.u8()?;
    Ok(r.rest())
}

/// Get Device ID response data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId {
    /// Device ID.
    pub device_id: u8,
    /// Device revision (bits 3:0); bit 7 set when the device provides SDRs.
    pub device_revision: u8,
    /// Major firmware revision (bits 6:0); bit 7 set during a firmware update.
    pub firmware_major: u8,
    /// Minor firmware revision, BCD.
    pub firmware_minor: u8,
    /// IPMI version, BCD with the minor digit in the high nibble (0x02 = 2.0).
    pub ipmi_version: u8,
    /// Additional device support bit field.
    pub additional_support: u8,
    /// IANA enterprise number of the manufacturer (20 bits).
    pub manufacturer_id: u32,
    /// Product ID.
    pub product_id: u16,
    /// Auxiliary firmware revision, when given.
    pub aux_firmware: Option<[u8; 4]>,
}

impl DeviceId {
    /// Response data (11 or 15 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let m = self.manufacturer_id.to_le_bytes();
        let mut out = vec![
            self.device_id,
            self.device_revision,
            self.firmware_major,
            self.firmware_minor,
            self.ipmi_version,
            self.additional_support,
            m[0],
            m[1],
            m[2] & 0x0F,
        ];
        out.extend_from_slice(&self.product_id.to_le_bytes());
        if let Some(aux) = self.aux_firmware {
            out.extend_from_slice(&aux);
        }
        out
    }

    /// Decode response data.
    pub fn parse(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("Get Device ID response", data);
        let [id, rev, major, minor, ipmi, support, m0, m1, m2] = r.array()?;
        let product_id = r.u16_le()?;
        let aux_firmware = if r.remaining() >= 4 {
            Some(r.array()?)
        } else {
            None
        };
        Ok(Self {
            device_id: id,
            device_revision: rev,
            firmware_major: major,
            firmware_minor: minor,
            ipmi_version: ipmi,
            additional_support: support,
            manufacturer_id: u32::from_le_bytes([m0, m1, m2 & 0x0F, 0]),
            product_id,
            aux_firmware,
        })
    }

    /// Firmware revision as ipmitool prints it, e.g. "1.02".
    pub fn firmware_revision(&self) -> String {
        format!("{}.{:02x}", self.firmware_major & 0x7F, self.firmware_minor)
    }
}

/// A GUID as IPMI sends it (Get System GUID, RAKP): the RFC 4122 bytes, least significant
/// byte first, i.e. reversed.
pub fn guid_to_uuid(guid: &[u8; 16]) -> String {
    let b: Vec<u8> = guid.iter().rev().copied().collect();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        b[6],
        b[7],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// The IPMI wire form of a hyphenated UUID string; `None` when it is not one.
pub fn uuid_to_guid(uuid: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = uuid.bytes().filter(|&c| c != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[15 - i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Get System GUID response data.
pub fn parse_guid(data: &[u8]) -> Result<[u8; 16], DecodeError> {
    Reader::new("Get System GUID response", data).array()
}

/// A manufacturer's name for well-known IANA enterprise numbers.
pub fn manufacturer_name(iana: u32) -> Option<&'static str> {
    Some(match iana {
        2 => "IBM",
        11 => "Hewlett-Packard",
        343 => "Intel",
        674 => "Dell Inc.",
        2011 => "Huawei",
        7244 => "Quanta",
        10876 => "Supermicro",
        19046 => "Lenovo",
        47196 => "Hewlett Packard Enterprise",
        49622 => "OpenBMC",
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ipmitool_bootdev_pxe_efiboot_flags() {
        // ipmitool "chassis bootdev pxe options=efiboot" sends parameter 5 = a0 04 00 00 00.
        let flags = BootFlags {
            valid: true,
            persistent: false,
            efi: true,
            device: boot_device::PXE,
        };
        assert_eq!(flags.encode(), [0xa0, 0x04, 0, 0, 0]);
        assert_eq!(BootFlags::parse(&flags.encode()), Ok(flags));
        assert_eq!(BootFlags::parse(&[0xc0, 0x18]).map(|f| f.device), Ok(6));
        assert_eq!(BootFlags::parse(&[0x80, 0x14]).map(|f| f.device), Ok(5));
        assert_eq!(BootFlags::parse(&[0x80, 0x08]).map(|f| f.device), Ok(2));
    }

    #[test]
    fn cipher_suite_records_round_trip() {
        let records = encode_cipher_suite_records(&[CipherSuite::Suite3, CipherSuite::Suite17]);
        assert_eq!(records, [0xc0, 3, 1, 0x41, 0x81, 0xc0, 17, 3, 0x44, 0x81]);
        assert_eq!(parse_cipher_suite_records(&records), vec![3, 17]);
        // An OEM record, then a standard one.
        assert_eq!(
            parse_cipher_suite_records(&[0xc1, 9, 1, 2, 3, 0x01, 0xc0, 3, 1]),
            vec![9, 3]
        );
    }

    #[test]
    fn guid_is_the_reversed_uuid() {
        let uuid = "8f1e5a3c-0000-4000-8000-000000000001";
        let guid = uuid_to_guid(uuid).unwrap();
        assert_eq!(guid[0], 0x01);
        assert_eq!(guid[15], 0x8f);
        assert_eq!(guid_to_uuid(&guid), uuid);
        assert_eq!(uuid_to_guid("not-a-uuid"), None);
    }

    #[test]
    fn device_id_round_trips() {
        let id = DeviceId {
            device_id: 0x20,
            device_revision: 1,
            firmware_major: 1,
            firmware_minor: 0x02,
            ipmi_version: 0x02,
            additional_support: 0x80,
            manufacturer_id: 32473,
            product_id: 0x0101,
            aux_firmware: Some([0; 4]),
        };
        assert_eq!(DeviceId::parse(&id.encode()), Ok(id.clone()));
        assert_eq!(id.firmware_revision(), "1.02");
    }

    #[test]
    fn channel_auth_capabilities_v2() {
        let caps = ChannelAuthCapabilities {
            channel: 1,
            auth_types: 0x80,
            login_status: 0x04,
            extended: 0x02,
            oem_id: 0,
        };
        let parsed = ChannelAuthCapabilities::parse(&caps.encode()).unwrap();
        assert!(parsed.supports_rmcp_plus());
        assert_eq!(lookup(NETFN_APP, 0x38), Some(GET_CHANNEL_AUTH_CAPABILITIES));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let _ = ChannelAuthCapabilities::parse(&bytes);
            let _ = parse_cipher_suite_records(&bytes);
            let _ = ChassisStatus::parse(&bytes);
            let _ = BootFlags::parse(&bytes);
            let _ = DeviceId::parse(&bytes);
            let _ = parse_guid(&bytes);
            let _ = parse_boot_option_response(&bytes);
        }
    }
}
