//! IPMI commands executed against the simulated server: chassis power and status, boot
//! options, device identity. Pure: a parsed request and the state in, completion code out.

use vmetal_bmc::ipmi::CipherSuite;
use vmetal_bmc::ipmi::commands::{
    self, BootFlags, ChannelAuthCapabilities, ChassisControl, ChassisStatus, DeviceId, boot_device,
    completion,
};
use vmetal_bmc::ipmi::message::Request;
use vmetal_bmc::ipmi::rakp::{PRIVILEGE_ADMINISTRATOR, PRIVILEGE_OPERATOR, PRIVILEGE_USER};
use vmetal_bmc::{BootDevice, BootModeOverride, BootOverride, PowerState};

use crate::sim::SimulatedServer;

/// IANA enterprise number the virtual BMC reports: 32473, reserved for documentation and
/// examples (RFC 5612), so it never impersonates a real vendor.
pub const MANUFACTURER_ID: u32 = 32473;
/// Product ID the virtual BMC reports.
pub const PRODUCT_ID: u16 = 0x0001;
/// The LAN channel number the virtual BMC answers as.
pub const LAN_CHANNEL: u8 = 1;
/// The cipher suites the virtual BMC offers, in list order.
pub const CIPHER_SUITES: [CipherSuite; 2] = [CipherSuite::Suite3, CipherSuite::Suite17];

/// BMC-wide boot-option state that is not part of the simulated server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParameters {
    /// Parameter 0: 0 set complete, 1 set in progress.
    pub set_in_progress: u8,
}

/// What a command answers: completion code and response data.
pub type Outcome = (u8, Vec<u8>);

fn ok(data: Vec<u8>) -> Outcome {
    (completion::OK, data)
}

fn fail(code: u8) -> Outcome {
    (code, Vec::new())
}

/// Execute `request` at session privilege `privilege` (0 outside a session).
pub fn execute(
    server: &SimulatedServer,
    boot: &mut BootParameters,
    guid: &[u8; 16],
    privilege: u8,
    request: &Request,
) -> Outcome {
    let Some(command) = commands::lookup(request.netfn, request.cmd) else {
        return fail(completion::INVALID_COMMAND);
    };
    let required = match command {
        commands::CHASSIS_CONTROL
        | commands::SET_SYSTEM_BOOT_OPTIONS
        | commands::GET_SYSTEM_BOOT_OPTIONS => PRIVILEGE_OPERATOR,
        commands::GET_CHANNEL_AUTH_CAPABILITIES | commands::GET_CHANNEL_CIPHER_SUITES => 0,
        _ => PRIVILEGE_USER,
    };
    if privilege < required {
        return fail(completion::INSUFFICIENT_PRIVILEGE);
    }
    let data = request.data.as_slice();
    match command {
        commands::GET_CHANNEL_AUTH_CAPABILITIES => channel_auth_capabilities(data),
        commands::GET_CHANNEL_CIPHER_SUITES => channel_cipher_suites(data),
        commands::GET_DEVICE_ID => ok(device_id().encode()),
        commands::GET_SELF_TEST_RESULTS => ok(vec![0x55, 0x00]),
        commands::GET_DEVICE_GUID | commands::GET_SYSTEM_GUID => ok(guid.to_vec()),
        commands::GET_CHASSIS_STATUS => ok(chassis_status(server).encode()),
        commands::CHASSIS_CONTROL => chassis_control(server, data),
        commands::SET_SYSTEM_BOOT_OPTIONS => set_boot_option(server, boot, data),
        commands::GET_SYSTEM_BOOT_OPTIONS => get_boot_option(server, boot, data),
        // Session commands are the handler's; anything else is unknown here.
        _ => fail(completion::INVALID_COMMAND),
    }
}

/// The Get Device ID answer: firmware 1.00, IPMI 2.0, a chassis device.
pub fn device_id() -> DeviceId {
    DeviceId {
        device_id: 0x20,
        device_revision: 0x01,
        firmware_major: 1,
        firmware_minor: 0x00,
        ipmi_version: 0x02,
        additional_support: 0x80,
        manufacturer_id: MANUFACTURER_ID,
        product_id: PRODUCT_ID,
        aux_firmware: Some([0; 4]),
    }
}

fn channel_auth_capabilities(data: &[u8]) -> Outcome {
    let [channel, privilege, ..] = *data else {
        return fail(completion::REQUEST_DATA_LENGTH_INVALID);
    };
    let number = channel & 0x0F;
    if (number != commands::CURRENT_CHANNEL && number != LAN_CHANNEL)
        || privilege & 0x0F > PRIVILEGE_ADMINISTRATOR
    {
        return fail(completion::INVALID_DATA_FIELD);
    }
    let v2 = channel & 0x80 != 0;
    let caps = ChannelAuthCapabilities {
        channel: LAN_CHANNEL,
        // No IPMI v1.5 session authentication types: RMCP+ only.
        auth_types: if v2 { 0x80 } else { 0x00 },
        login_status: 0x04,
        extended: if v2 { 0x02 } else { 0x00 },
        oem_id: 0,
    };
    ok(caps.encode())
}

fn channel_cipher_suites(data: &[u8]) -> Outcome {
    let [channel, payload_type, index, ..] = *data else {
        return fail(completion::REQUEST_DATA_LENGTH_INVALID);
    };
    let number = channel & 0x0F;
    if (number != commands::CURRENT_CHANNEL && number != LAN_CHANNEL) || payload_type != 0 {
        return fail(completion::INVALID_DATA_FIELD);
    }
    let records = commands::encode_cipher_suite_records(&CIPHER_SUITES);
    let page = commands::CIPHER_SUITE_RECORDS_PER_RESPONSE;
    let start = usize::from(index & 0x3F) * page;
    let mut out = vec![LAN_CHANNEL];
    out.extend(records.iter().skip(start).take(page));
    ok(out)
}

fn chassis_status(server: &SimulatedServer) -> ChassisStatus {
    let on = matches!(
        server.power_state(),
        PowerState::On | PowerState::PoweringOn
    );
    ChassisStatus {
        // Bits 6:5 = 01b: restore power to its state before a loss.
        power_state: 0x20 | u8::from(on),
        last_power_event: 0,
        misc: 0,
    }
}

fn chassis_control(server: &SimulatedServer, data: &[u8]) -> Outcome {
    let Some(&code) = data.first() else {
        return fail(completion::REQUEST_DATA_LENGTH_INVALID);
    };
    match ChassisControl::from_code(code) {
        Some(ChassisControl::PowerUp) => server.power_on(),
        Some(ChassisControl::PowerDown) => server.power_off(),
        Some(ChassisControl::PowerCycle) => server.power_cycle(),
        Some(ChassisControl::HardReset) => server.reset(),
        Some(ChassisControl::SoftShutdown) => server.soft_off(),
        Some(ChassisControl::DiagnosticInterrupt) | None => {
            return fail(completion::INVALID_DATA_FIELD);
        }
    }
    ok(Vec::new())
}

fn boot_flags(server: &SimulatedServer) -> BootFlags {
    let state = server.state();
    let efi = state.boot_mode == BootModeOverride::Uefi;
    match state.boot_override {
        None => BootFlags {
            valid: false,
            persistent: false,
            efi,
            device: boot_device::NONE,
        },
        Some(boot) => BootFlags {
            valid: true,
            persistent: boot.persistent,
            efi,
            device: match boot.device {
                BootDevice::Pxe | BootDevice::UefiHttp => boot_device::PXE,
                BootDevice::Disk => boot_device::DISK,
                BootDevice::Cd => boot_device::CD,
                BootDevice::BiosSetup => boot_device::BIOS_SETUP,
            },
        },
    }
}

fn set_boot_option(server: &SimulatedServer, boot: &mut BootParameters, data: &[u8]) -> Outcome {
    let Some((&selector, value)) = data.split_first() else {
        return fail(completion::REQUEST_DATA_LENGTH_INVALID);
    };
    match selector & 0x7F {
        commands::BOOT_PARAM_SET_IN_PROGRESS => {
            let Some(&v) = value.first() else {
                return fail(completion::REQUEST_DATA_LENGTH_INVALID);
            };
            match v & 0x03 {
                commands::SET_COMPLETE => boot.set_in_progress = commands::SET_COMPLETE,
                commands::SET_IN_PROGRESS if boot.set_in_progress == commands::SET_IN_PROGRESS => {
                    return fail(completion::SET_IN_PROGRESS_ACTIVE);
                }
                commands::SET_IN_PROGRESS => boot.set_in_progress = commands::SET_IN_PROGRESS,
                // Writes take effect at once, so there is nothing left to commit.
                commands::COMMIT_WRITE => {}
                _ => return fail(completion::INVALID_DATA_FIELD),
            }
            ok(Vec::new())
        }
        commands::BOOT_PARAM_INFO_ACK => {
            if value.len() < 2 {
                return fail(completion::REQUEST_DATA_LENGTH_INVALID);
            }
            ok(Vec::new())
        }
        commands::BOOT_PARAM_BOOT_FLAGS => {
            let Ok(flags) = BootFlags::parse(value) else {
                return fail(completion::REQUEST_DATA_LENGTH_INVALID);
            };
            if !flags.valid {
                server.clear_boot_override();
                return ok(Vec::new());
            }
            let device = match flags.device {
                boot_device::NONE => {
                    server.clear_boot_override();
                    return ok(Vec::new());
                }
                boot_device::PXE => BootDevice::Pxe,
                boot_device::DISK | boot_device::DISK_SAFE_MODE => BootDevice::Disk,
                boot_device::CD => BootDevice::Cd,
                boot_device::BIOS_SETUP => BootDevice::BiosSetup,
                _ => return fail(completion::INVALID_DATA_FIELD),
            };
            server.set_boot_override(BootOverride {
                device,
                persistent: flags.persistent,
                mode: Some(if flags.efi {
                    BootModeOverride::Uefi
                } else {
                    BootModeOverride::Legacy
                }),
            });
            ok(Vec::new())
        }
        _ => fail(completion::PARAMETER_NOT_SUPPORTED),
    }
}

fn get_boot_option(server: &SimulatedServer, boot: &BootParameters, data: &[u8]) -> Outcome {
    let Some(&selector) = data.first() else {
        return fail(completion::REQUEST_DATA_LENGTH_INVALID);
    };
    let parameter = selector & 0x7F;
    let mut out = vec![0x01, parameter];
    match parameter {
        commands::BOOT_PARAM_SET_IN_PROGRESS => out.push(boot.set_in_progress),
        commands::BOOT_PARAM_INFO_ACK => out.extend_from_slice(&[0x00, 0x00]),
        commands::BOOT_PARAM_BOOT_FLAGS => out.extend_from_slice(&boot_flags(server).encode()),
        _ => return fail(completion::PARAMETER_NOT_SUPPORTED),
    }
    ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::sim::ServerIdentity;

    fn run(
        server: &SimulatedServer,
        boot: &mut BootParameters,
        cmd: commands::Command,
        data: &[u8],
    ) -> Outcome {
        let req = Request::new(cmd.netfn, cmd.code, 1, data.to_vec());
        execute(server, boot, &[0; 16], PRIVILEGE_ADMINISTRATOR, &req)
    }

    #[test]
    fn ipmitool_bootdev_sequence_sets_pxe_once_uefi() {
        let server = SimulatedServer::new(ServerIdentity::numbered(0));
        let mut boot = BootParameters::default();
        let set = commands::SET_SYSTEM_BOOT_OPTIONS;
        assert_eq!(run(&server, &mut boot, set, &[0, 1]).0, 0);
        assert_eq!(run(&server, &mut boot, set, &[0, 1]).0, 0x81, "second lock");
        assert_eq!(run(&server, &mut boot, set, &[4, 1, 1]).0, 0);
        assert_eq!(run(&server, &mut boot, set, &[5, 0xa0, 0x04, 0, 0, 0]).0, 0);
        assert_eq!(run(&server, &mut boot, set, &[0, 2]).0, 0);
        assert_eq!(run(&server, &mut boot, set, &[0, 0]).0, 0);
        assert_eq!(
            server.state().boot_override,
            Some(BootOverride::once(
                BootDevice::Pxe,
                Some(BootModeOverride::Uefi)
            ))
        );
        let (cc, data) = run(
            &server,
            &mut boot,
            commands::GET_SYSTEM_BOOT_OPTIONS,
            &[5, 0, 0],
        );
        assert_eq!((cc, data), (0, vec![1, 5, 0xa0, 0x04, 0, 0, 0]));
    }

    #[test]
    fn chassis_control_and_status() {
        let server = SimulatedServer::new(ServerIdentity::numbered(0));
        let mut boot = BootParameters::default();
        assert_eq!(
            run(&server, &mut boot, commands::CHASSIS_CONTROL, &[1]).0,
            0
        );
        let (_, data) = run(&server, &mut boot, commands::GET_CHASSIS_STATUS, &[]);
        assert!(ChassisStatus::parse(&data).unwrap().power_on());
        assert_eq!(
            run(&server, &mut boot, commands::CHASSIS_CONTROL, &[0]).0,
            0
        );
        assert_eq!(server.power_state(), PowerState::Off);
        assert_eq!(
            run(&server, &mut boot, commands::CHASSIS_CONTROL, &[9]).0,
            0xCC
        );
        assert_eq!(
            run(&server, &mut boot, commands::CHASSIS_CONTROL, &[]).0,
            0xC7
        );
    }

    #[test]
    fn privileges_are_enforced_and_unknown_commands_refused() {
        let server = SimulatedServer::new(ServerIdentity::numbered(0));
        let mut boot = BootParameters::default();
        let req = Request::new(0x00, 0x02, 1, vec![1]);
        let (cc, _) = execute(&server, &mut boot, &[0; 16], PRIVILEGE_USER, &req);
        assert_eq!(cc, completion::INSUFFICIENT_PRIVILEGE);
        assert_eq!(server.power_state(), PowerState::Off);
        let req = Request::new(0x0A, 0x10, 1, vec![]);
        let (cc, _) = execute(&server, &mut boot, &[0; 16], PRIVILEGE_ADMINISTRATOR, &req);
        assert_eq!(cc, completion::INVALID_COMMAND);
    }

    #[test]
    fn cipher_suites_fit_one_page() {
        let (cc, data) = channel_cipher_suites(&[0x0e, 0, 0x80]);
        assert_eq!(cc, 0);
        assert_eq!(
            commands::parse_cipher_suite_records(&data[1..]),
            vec![3, 17]
        );
        assert_eq!(channel_cipher_suites(&[0x0e, 0, 0x81]).1, vec![LAN_CHANNEL]);
    }
}
