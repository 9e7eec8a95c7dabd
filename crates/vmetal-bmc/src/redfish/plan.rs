//! Pure decisions from what a BMC advertises: which `ResetType`s to send, which boot override
//! to PATCH, how to read `PowerState`, and which virtual media device is the CD drive.

use crate::{BootDevice, BootModeOverride, BootOverride, PowerAction, PowerState};

use super::model::{Boot, BootPatch, BootPatchInner, VirtualMedia};

/// Why a request cannot be planned with what the BMC offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unsupported(pub String);

/// The `ResetType` values to POST, in order, to carry out `action`.
///
/// `allowable` is `None` when the BMC does not advertise values (then the standard ones are
/// assumed). A restart of a server that is off becomes `On`, as some BMCs refuse to restart a
/// powered-off system; when `ForceRestart` is not offered it falls back to `PowerCycle`, then to
/// `ForceOff` followed by `On`.
pub(crate) fn reset_types(
    action: PowerAction,
    allowable: Option<&[String]>,
    current: Option<PowerState>,
) -> Result<Vec<&'static str>, Unsupported> {
    let offers = |value: &str| allowable.is_none_or(|list| list.iter().any(|v| v == value));
    let first_offered =
        |candidates: &[&'static str]| candidates.iter().copied().find(|c| offers(c));
    let power_on = || {
        first_offered(&["On", "ForceOn"])
            .map(|t| vec![t])
            .ok_or_else(|| not_offered("power on", &["On", "ForceOn"], allowable))
    };
    match action {
        PowerAction::On => power_on(),
        PowerAction::ForceOff => single("ForceOff", "hard power off", &offers, allowable),
        PowerAction::GracefulShutdown => {
            single("GracefulShutdown", "graceful shutdown", &offers, allowable)
        }
        PowerAction::ForceRestart | PowerAction::PowerCycle if current == Some(PowerState::Off) => {
            power_on()
        }
        PowerAction::ForceRestart | PowerAction::PowerCycle => {
            let preferred: &[&'static str] = if action == PowerAction::ForceRestart {
                &["ForceRestart", "PowerCycle"]
            } else {
                &["PowerCycle", "ForceRestart"]
            };
            if let Some(t) = first_offered(preferred) {
                return Ok(vec![t]);
            }
            match (offers("ForceOff"), first_offered(&["On", "ForceOn"])) {
                (true, Some(on)) => Ok(vec!["ForceOff", on]),
                _ => Err(not_offered(
                    "restart",
                    &["ForceRestart", "PowerCycle", "ForceOff and On"],
                    allowable,
                )),
            }
        }
    }
}

fn single(
    value: &'static str,
    what: &str,
    offers: &dyn Fn(&str) -> bool,
    allowable: Option<&[String]>,
) -> Result<Vec<&'static str>, Unsupported> {
    if offers(value) {
        Ok(vec![value])
    } else {
        Err(not_offered(what, &[value], allowable))
    }
}

fn not_offered(what: &str, wanted: &[&str], allowable: Option<&[String]>) -> Unsupported {
    Unsupported(format!(
        "{what}: needs ResetType {} but the system offers {}",
        wanted.join(" or "),
        allowable.map_or_else(|| "none".to_string(), |l| l.join(", "))
    ))
}

/// Redfish `PowerState` to ours; `Paused` counts as on, unknown values are `None`.
pub(crate) fn power_state(value: &str) -> Option<PowerState> {
    match value {
        "On" | "Paused" => Some(PowerState::On),
        "Off" => Some(PowerState::Off),
        "PoweringOn" => Some(PowerState::PoweringOn),
        "PoweringOff" => Some(PowerState::PoweringOff),
        _ => None,
    }
}

/// Redfish `BootSourceOverrideTarget` for a device.
pub(crate) fn boot_target(device: BootDevice) -> &'static str {
    match device {
        BootDevice::Pxe => "Pxe",
        BootDevice::Disk => "Hdd",
        BootDevice::Cd => "Cd",
        BootDevice::BiosSetup => "BiosSetup",
        BootDevice::UefiHttp => "UefiHttp",
    }
}

/// The boot override PATCH body for `boot`, checked against what the system's `Boot` offers.
///
/// The mode is sent only when the system shows `BootSourceOverrideMode` at all (some BMCs reject
/// the property) and the requested mode differs from the current one (some reject re-setting it).
pub(crate) fn boot_patch(
    boot: BootOverride,
    current: Option<&Boot>,
) -> Result<BootPatch<'static>, Unsupported> {
    let target = boot_target(boot.device);
    if let Some(allowed) = current.and_then(|b| b.target_allowable.as_deref())
        && !allowed.iter().any(|v| v == target)
    {
        return Err(Unsupported(format!(
            "boot from {target}: the system offers BootSourceOverrideTarget {}",
            allowed.join(", ")
        )));
    }
    let current_mode = current.and_then(|b| b.mode.as_deref());
    let mode = match (boot.mode, current_mode) {
        (Some(wanted), Some(now)) if !now.eq_ignore_ascii_case(mode_name(wanted)) => {
            Some(mode_name(wanted))
        }
        _ => None,
    };
    Ok(BootPatch {
        boot: BootPatchInner {
            target,
            enabled: if boot.persistent {
                "Continuous"
            } else {
                "Once"
            },
            mode,
        },
    })
}

fn mode_name(mode: BootModeOverride) -> &'static str {
    match mode {
        BootModeOverride::Uefi => "UEFI",
        BootModeOverride::Legacy => "Legacy",
    }
}

/// The CD/DVD drive among a manager's virtual media devices.
pub(crate) fn cd_drive(devices: &[VirtualMedia]) -> Option<&VirtualMedia> {
    devices.iter().find(|d| {
        d.media_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case("CD") || t.eq_ignore_ascii_case("DVD"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn restart_falls_back_to_power_cycle_then_off_and_on() {
        let all = values(&["On", "ForceOff", "ForceRestart", "PowerCycle"]);
        let no_restart = values(&["On", "ForceOff", "PowerCycle"]);
        let minimal = values(&["ForceOn", "ForceOff"]);
        let on = Some(PowerState::On);
        let restart = PowerAction::ForceRestart;
        assert_eq!(
            reset_types(restart, Some(&all), on),
            Ok(vec!["ForceRestart"])
        );
        assert_eq!(
            reset_types(restart, Some(&no_restart), on),
            Ok(vec!["PowerCycle"])
        );
        assert_eq!(
            reset_types(restart, Some(&minimal), on),
            Ok(vec!["ForceOff", "ForceOn"])
        );
        assert_eq!(reset_types(restart, None, on), Ok(vec!["ForceRestart"]));
    }

    #[test]
    fn restart_of_a_powered_off_server_powers_it_on() {
        let all = values(&["On", "ForceOff", "ForceRestart"]);
        assert_eq!(
            reset_types(PowerAction::ForceRestart, Some(&all), Some(PowerState::Off)),
            Ok(vec!["On"])
        );
    }

    #[test]
    fn missing_values_are_reported_with_what_is_offered() {
        let only_on = values(&["On"]);
        let err = reset_types(PowerAction::ForceOff, Some(&only_on), None);
        assert_eq!(
            err,
            Err(Unsupported(
                "hard power off: needs ResetType ForceOff but the system offers On".into()
            ))
        );
    }

    #[test]
    fn boot_mode_is_sent_only_when_it_changes_and_exists() {
        let uefi = Boot {
            mode: Some("UEFI".into()),
            ..Boot::default()
        };
        let legacy_pxe = BootOverride::once(BootDevice::Pxe, Some(BootModeOverride::Legacy));
        let uefi_pxe = BootOverride::once(BootDevice::Pxe, Some(BootModeOverride::Uefi));
        assert_eq!(
            boot_patch(legacy_pxe, Some(&uefi)).map(|p| p.boot.mode),
            Ok(Some("Legacy"))
        );
        assert_eq!(
            boot_patch(uefi_pxe, Some(&uefi)).map(|p| p.boot.mode),
            Ok(None)
        );
        assert_eq!(boot_patch(legacy_pxe, None).map(|p| p.boot.mode), Ok(None));
    }

    #[test]
    fn boot_target_must_be_offered() {
        let boot = Boot {
            target_allowable: Some(values(&["None", "Pxe", "Hdd"])),
            ..Boot::default()
        };
        let cd = BootOverride::once(BootDevice::Cd, None);
        assert!(boot_patch(cd, Some(&boot)).is_err());
    }

    #[test]
    fn the_cd_drive_is_found_by_media_type() {
        let floppy = VirtualMedia {
            odata_id: "/m/Floppy".into(),
            media_types: values(&["Floppy", "USBStick"]),
            ..VirtualMedia::default()
        };
        let cd = VirtualMedia {
            odata_id: "/m/Cd".into(),
            media_types: values(&["CD", "DVD"]),
            ..VirtualMedia::default()
        };
        let devices = [floppy, cd];
        assert_eq!(
            cd_drive(&devices).map(|d| d.odata_id.as_str()),
            Some("/m/Cd")
        );
    }
}
