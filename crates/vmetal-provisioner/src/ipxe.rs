//! iPXE scripts: boot the vmetal agent ramdisk with the agent API URL and the host's MAC on the
//! kernel command line, or leave iPXE so the firmware boots the local disk.
//!
//! iPXE splits commands on whitespace and expands `${...}` before running a line, so every
//! value put into a script is validated first; nothing is quoted or escaped.

use vmetal_api::mac::normalize_mac;

use crate::error::ProvisionerError;

/// Seconds between attempts when fetching the kernel or initramfs fails.
pub const RETRY_DELAY_SECS: u32 = 5;

/// What the agent ramdisk needs to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// URL of the agent kernel (`http://…/vmlinuz`).
    pub kernel_url: String,
    /// URL of the agent initramfs.
    pub initramfs_url: String,
    /// Base URL of the agent API the agent calls (`http://10.0.0.1:6385`).
    pub agent_api_url: String,
    /// More kernel arguments, one per element (`ipa-debug=1`, `console=tty0`).
    pub extra_kernel_args: Vec<String>,
}

impl BootConfig {
    /// Checks that every field survives iPXE's parser and the kernel command line unchanged.
    pub fn validate(&self) -> Result<(), ProvisionerError> {
        validate_url("kernel_url", &self.kernel_url, &["http", "https", "tftp"])?;
        validate_url(
            "initramfs_url",
            &self.initramfs_url,
            &["http", "https", "tftp"],
        )?;
        validate_url("agent_api_url", &self.agent_api_url, &["http", "https"])?;
        for (i, arg) in self.extra_kernel_args.iter().enumerate() {
            validate_word(&format!("extra_kernel_args[{i}]"), arg)?;
        }
        Ok(())
    }
}

fn invalid(field: &str, value: &str, reason: &'static str) -> ProvisionerError {
    ProvisionerError::InvalidBootConfig {
        field: field.to_owned(),
        value: value.to_owned(),
        reason,
    }
}

/// One whitespace-free token with nothing iPXE would expand, split on or treat as a comment.
fn validate_word(field: &str, value: &str) -> Result<(), ProvisionerError> {
    if value.is_empty() {
        return Err(invalid(field, value, "is empty"));
    }
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(invalid(
            field,
            value,
            "contains whitespace, control or non-ASCII characters; percent-encode them",
        ));
    }
    // `$` starts a settings expansion; quotes and backslashes reach the kernel verbatim and
    // change how it splits arguments.
    if value.contains(['$', '"', '\'', '\\', '`']) {
        return Err(invalid(
            field,
            value,
            "contains one of $ \" ' \\ ` which iPXE or the kernel would interpret",
        ));
    }
    if value.starts_with('#') || value.starts_with(':') || value == "||" || value == "&&" {
        return Err(invalid(
            field,
            value,
            "would be read by iPXE as a comment, label or operator",
        ));
    }
    Ok(())
}

fn validate_url(field: &str, value: &str, schemes: &[&str]) -> Result<(), ProvisionerError> {
    validate_word(field, value)?;
    let ok = value.split_once("://").is_some_and(|(scheme, rest)| {
        schemes.iter().any(|s| scheme.eq_ignore_ascii_case(s)) && !rest.is_empty()
    });
    if ok {
        Ok(())
    } else if schemes.contains(&"tftp") {
        Err(invalid(
            field,
            value,
            "must be an absolute http://, https:// or tftp:// URL",
        ))
    } else {
        Err(invalid(
            field,
            value,
            "must be an absolute http:// or https:// URL",
        ))
    }
}

/// Renders the script that boots the agent ramdisk, or fails naming the field that iPXE
/// would misparse.
pub fn try_render_script(cfg: &BootConfig, boot_mac: &str) -> Result<String, ProvisionerError> {
    cfg.validate()?;
    let mac = normalize_mac(boot_mac)
        .map_err(|_| invalid("boot_mac", boot_mac, "is not a MAC address"))?;
    let mut args = vec![
        "initrd=initramfs".to_owned(),
        format!("vmetal.api={}", cfg.agent_api_url),
        format!("vmetal.mac={mac}"),
        "ip=dhcp".to_owned(),
        "console=ttyS0,115200".to_owned(),
    ];
    args.extend(cfg.extra_kernel_args.iter().cloned());
    let args = args.join(" ");
    Ok(format!(
        "#!ipxe\n\
         # vmetal agent for {mac}\n\
         :retry\n\
         kernel {kernel} {args} || goto failed\n\
         initrd --name initramfs {initramfs} || goto failed\n\
         boot || goto failed\n\
         :failed\n\
         imgfree\n\
         echo vmetal: could not load the agent, retrying in {delay} seconds\n\
         sleep {delay}\n\
         goto retry\n",
        kernel = cfg.kernel_url,
        initramfs = cfg.initramfs_url,
        delay = RETRY_DELAY_SECS,
    ))
}

/// Renders the script that boots the agent ramdisk. An invalid configuration renders a script
/// that prints the problem and boots from local disk instead (see [`try_render_script`]).
pub fn render_script(cfg: &BootConfig, boot_mac: &str) -> String {
    match try_render_script(cfg, boot_mac) {
        Ok(script) => script,
        Err(e) => {
            tracing::warn!(mac = %boot_mac, error = %e, "cannot render the agent boot script");
            // Only the field name goes into the script: values may hold what iPXE expands.
            let field = match &e {
                ProvisionerError::InvalidBootConfig { field, .. } => field.as_str(),
                _ => "unknown",
            };
            format!(
                "#!ipxe\n\
                 echo vmetal: invalid boot configuration ({field}), see the vmetal boot logs\n\
                 sleep {RETRY_DELAY_SECS}\n\
                 exit\n"
            )
        }
    }
}

/// The script for hosts that should not run the agent: leave iPXE so the firmware moves on
/// to the next boot device, the local disk.
pub fn render_exit_script() -> String {
    "#!ipxe\n# vmetal: nothing to do, boot from local disk\nexit\n".to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg() -> BootConfig {
        BootConfig {
            kernel_url: "http://172.22.0.2:8080/images/vmetal-agent.kernel".into(),
            initramfs_url: "http://172.22.0.2:8080/images/vmetal-agent.initramfs".into(),
            agent_api_url: "http://172.22.0.2:6385".into(),
            extra_kernel_args: vec!["console=tty0".into(), "vmetal.debug=1".into()],
        }
    }

    #[test]
    fn agent_script() {
        insta::assert_snapshot!(render_script(&cfg(), "52-54-00-AB-CD-EF"));
    }

    #[test]
    fn exit_script() {
        insta::assert_snapshot!(render_exit_script());
    }

    #[test]
    fn invalid_config_boots_from_disk_and_says_why() {
        let mut c = cfg();
        c.kernel_url = "http://host/${evil}".into();
        insta::assert_snapshot!(render_script(&c, "52:54:00:ab:cd:ef"));
    }

    #[test]
    fn query_strings_and_percent_encoding_are_fine() {
        let mut c = cfg();
        c.kernel_url = "https://h/k?arch=x86_64&v=2#frag".into();
        c.initramfs_url = "tftp://h/initrd%20x".into();
        assert!(try_render_script(&c, "525400abcdef").is_ok());
    }

    #[test]
    fn rejects_what_ipxe_would_misparse() {
        type Breaker = fn(&mut BootConfig);
        let bad: Vec<(&str, Breaker)> = vec![
            ("kernel_url", |c| c.kernel_url = "http://h/a b".into()),
            ("kernel_url", |c| c.kernel_url = "http://h/a\tb".into()),
            ("kernel_url", |c| c.kernel_url = "http://h/${x}".into()),
            ("kernel_url", |c| c.kernel_url = "/relative/kernel".into()),
            ("kernel_url", |c| c.kernel_url = "file:///kernel".into()),
            ("kernel_url", |c| c.kernel_url = String::new()),
            ("initramfs_url", |c| {
                c.initramfs_url = "http://h/i\nboot".into()
            }),
            ("agent_api_url", |c| c.agent_api_url = "tftp://h/".into()),
            ("agent_api_url", |c| c.agent_api_url = "http://".into()),
            ("extra_kernel_args[0]", |c| {
                c.extra_kernel_args[0] = "a=\"b c\"".into()
            }),
            ("extra_kernel_args[1]", |c| {
                c.extra_kernel_args[1] = "||".into()
            }),
            ("extra_kernel_args[1]", |c| {
                c.extra_kernel_args[1] = "#x".into()
            }),
            ("extra_kernel_args[1]", |c| {
                c.extra_kernel_args[1] = "é".into()
            }),
        ];
        for (field, break_it) in bad {
            let mut c = cfg();
            break_it(&mut c);
            match try_render_script(&c, "52:54:00:ab:cd:ef") {
                Err(ProvisionerError::InvalidBootConfig { field: f, .. }) => {
                    assert_eq!(f, field, "{c:?}")
                }
                other => panic!("{c:?} gave {other:?}"),
            }
            assert!(render_script(&c, "52:54:00:ab:cd:ef").ends_with("exit\n"));
        }
        let err = try_render_script(&cfg(), "not-a-mac").unwrap_err();
        assert!(err.to_string().contains("boot_mac"), "{err}");
    }
}
