//! The agent's settings from the kernel command line (`vmetal.api=`, `vmetal.mac=`,
//! `vmetal.debug`), split with the kernel's own quoting rules. Pure: `main` reads `/proc/cmdline`.
//!
//! The boot server's iPXE script passes
//! `vmetal.api=http://<boot>:8080 vmetal.mac=52:54:00:ab:cd:ef [vmetal.debug=1]`.

use vmetal_api::mac::normalize_mac;

use crate::error::{AgentError, redact_url};

/// One `name` or `name=value` parameter of a kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The name, as written (`vmetal.api`).
    pub name: String,
    /// The value with the kernel's quotes removed; `None` for a bare `name`.
    pub value: Option<String>,
}

/// What the agent needs from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// Base URL of the agent API (`vmetal.api`), without a trailing `/`.
    pub api_url: String,
    /// Canonical MACs to look up with (`vmetal.mac`, repeatable or comma-separated); empty
    /// means every NIC of the inventory.
    pub mac_addresses: Vec<String>,
    /// `vmetal.debug`: log at debug level.
    pub debug: bool,
    /// `vmetal.*` parameters the agent does not know (typos worth a log line).
    pub unknown: Vec<String>,
}

/// Split `cmdline` into parameters as the kernel's `next_arg` does: whitespace separates
/// parameters except inside double quotes; a value's leading quote and its parameter's
/// closing quote are dropped (`a="b c"` and `"a=b c"` both give `b c`), other quotes stay; an
/// unterminated quote runs to the end of the line. A bare `--` ends the kernel's parameters
/// (the rest is init's argv), so nothing after it is returned.
pub fn split(cmdline: &str) -> Vec<Param> {
    let chars: Vec<char> = cmdline.chars().collect();
    let mut params = Vec::new();
    let mut pos = skip_spaces(&chars, 0);
    while pos < chars.len() {
        let mut start = pos;
        let mut in_quote = false;
        let quoted = chars[start] == '"';
        if quoted {
            start += 1;
            in_quote = true;
        }
        let mut i = start;
        // Index of the first `=`; like the kernel, one at the very start does not count.
        let mut equals = None;
        while i < chars.len() {
            let c = chars[i];
            if is_space(c) && !in_quote {
                break;
            }
            if equals.is_none() && c == '=' && i > start {
                equals = Some(i);
            }
            if c == '"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        // The token is chars[start..end]; a closing quote is cut as the kernel does.
        let mut end = i;
        let (name, value) = match equals {
            None => {
                if quoted && end > start && chars[end - 1] == '"' {
                    end -= 1;
                }
                (collect(&chars[start..end]), None)
            }
            Some(eq) => {
                let mut vstart = eq + 1;
                if vstart < end && chars[vstart] == '"' {
                    vstart += 1;
                    if end > vstart && chars[end - 1] == '"' {
                        end -= 1;
                    }
                }
                if quoted && end > vstart && chars[end - 1] == '"' {
                    end -= 1;
                }
                (
                    collect(&chars[start..eq]),
                    Some(collect(&chars[vstart..end.max(vstart)])),
                )
            }
        };
        if name == "--" && value.is_none() && !quoted {
            break;
        }
        params.push(Param { name, value });
        pos = skip_spaces(&chars, i);
    }
    params
}

/// The kernel's `isspace` (ASCII whitespace and vertical tab).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn skip_spaces(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && is_space(chars[i]) {
        i += 1;
    }
    i
}

fn collect(chars: &[char]) -> String {
    chars.iter().collect()
}

/// The agent's settings from a kernel command line (the contents of `/proc/cmdline`).
///
/// `vmetal.api` is required (the last one wins, as for kernel parameters); `vmetal.mac` may be
/// absent or empty (look up with every NIC); `vmetal.debug` is on when bare or `1`/`y`/`yes`/
/// `true`/`on`. Malformed values are errors that name the parameter and the expected form.
pub fn parse(cmdline: &str) -> Result<BootSettings, AgentError> {
    let bad = |reason: String| AgentError::Cmdline { reason };
    let mut api = None;
    let mut macs: Vec<String> = Vec::new();
    let mut debug = false;
    let mut unknown = Vec::new();
    for p in split(cmdline) {
        if p.name == "vmetal.api" {
            api = Some(p.value.unwrap_or_default());
        } else if p.name == "vmetal.mac" {
            for raw in p.value.as_deref().unwrap_or("").split(',') {
                if raw.trim().is_empty() {
                    continue;
                }
                let mac = normalize_mac(raw).map_err(|_| {
                    bad(format!(
                        "vmetal.mac={raw:?} is not a MAC address (expected 52:54:00:ab:cd:ef)"
                    ))
                })?;
                if !macs.contains(&mac) {
                    macs.push(mac);
                }
            }
        } else if p.name == "vmetal.debug" {
            debug = match p.value.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("1" | "y" | "yes" | "true" | "on") => true,
                Some("0" | "n" | "no" | "false" | "off") => false,
                Some(other) => {
                    return Err(bad(format!(
                        "vmetal.debug={other:?} is neither on (1, yes, true) nor off (0, no, false)"
                    )));
                }
            };
        } else if p.name.starts_with("vmetal.") {
            unknown.push(p.name);
        }
    }
    let api = api.ok_or_else(|| {
        bad("vmetal.api= is missing, so the agent cannot reach the controller (expected vmetal.api=http://<boot-server>:8080)".into())
    })?;
    let api_url = validate_api_url(&api).map_err(|why| {
        bad(format!(
            "vmetal.api={:?} {why} (expected http://<boot-server>:8080)",
            redact_url(&api)
        ))
    })?;
    Ok(BootSettings {
        api_url,
        mac_addresses: macs,
        debug,
        unknown,
    })
}

/// `url` without a trailing `/` when it is an absolute http(s) URL with a host.
fn validate_api_url(url: &str) -> Result<String, &'static str> {
    if url.is_empty() {
        return Err("is empty");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace");
    }
    let lower = url.to_ascii_lowercase();
    if !lower.starts_with("http://") && !lower.starts_with("https://") {
        return Err("is not an http:// or https:// URL");
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| "is not a URL")?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(name: &str, value: Option<&str>) -> Param {
        Param {
            name: name.into(),
            value: value.map(String::from),
        }
    }

    /// The kernel arguments the iPXE script of vmetal-provisioner renders.
    const IPXE: &str = "BOOT_IMAGE=/boot/vmlinuz initrd=initramfs vmetal.api=http://10.0.0.2:8080 \
                        vmetal.mac=52:54:00:AB:CD:EF ip=dhcp console=ttyS0,115200 console=tty0\n";

    #[test]
    fn the_ipxe_command_line_gives_api_and_mac() {
        let s = parse(IPXE).unwrap();
        assert_eq!(s.api_url, "http://10.0.0.2:8080");
        assert_eq!(s.mac_addresses, vec!["52:54:00:ab:cd:ef"]);
        assert!(!s.debug);
        assert!(s.unknown.is_empty());
        let with_debug = format!("{} vmetal.debug=1", IPXE.trim());
        assert!(parse(&with_debug).unwrap().debug);
    }

    #[test]
    fn splitting_follows_the_kernel() {
        assert_eq!(
            split("  a=1\tb  c=\"x y\" \"d=e f\" g=h\"i j\"k =l m=\n"),
            vec![
                p("a", Some("1")),
                p("b", None),
                p("c", Some("x y")),
                p("d", Some("e f")),
                // Quotes in the middle of a value are kept.
                p("g", Some("h\"i j\"k")),
                // A leading `=` does not start a value.
                p("=l", None),
                p("m", Some("")),
            ]
        );
        assert_eq!(split(""), vec![]);
        assert_eq!(split(" \n"), vec![]);
        assert_eq!(split("a==b"), vec![p("a", Some("=b"))]);
    }

    #[test]
    fn an_unterminated_quote_runs_to_the_end() {
        assert_eq!(split("a=\"b c d"), vec![p("a", Some("b c d"))]);
        assert_eq!(split("\"a b"), vec![p("a b", None)]);
        assert_eq!(split("x=\""), vec![p("x", Some(""))]);
        assert_eq!(split("\""), vec![p("", None)]);
    }

    #[test]
    fn double_dash_ends_kernel_parameters() {
        assert_eq!(split("a -- vmetal.api=x"), vec![p("a", None)]);
        let err = parse("console=ttyS0 -- vmetal.api=http://h:1").unwrap_err();
        assert!(err.to_string().contains("vmetal.api= is missing"), "{err}");
    }

    #[test]
    fn quoted_api_and_last_value_win() {
        let s = parse("vmetal.api=http://old:1 \"vmetal.api=http://new:8080/\"").unwrap();
        assert_eq!(s.api_url, "http://new:8080");
        let s = parse("vmetal.api=\"https://boot.example:8443/\"").unwrap();
        assert_eq!(s.api_url, "https://boot.example:8443");
    }

    #[test]
    fn macs_are_canonical_repeatable_and_optional() {
        let s = parse("vmetal.api=http://h vmetal.mac=AA-BB-CC-DD-EE-FF,52:54:00:00:00:01 vmetal.mac=aa:bb:cc:dd:ee:ff").unwrap();
        assert_eq!(
            s.mac_addresses,
            vec!["aa:bb:cc:dd:ee:ff", "52:54:00:00:00:01"]
        );
        assert!(
            parse("vmetal.api=http://h")
                .unwrap()
                .mac_addresses
                .is_empty()
        );
        // An empty value (an unset template variable) means every NIC, not an error.
        assert!(
            parse("vmetal.api=http://h vmetal.mac=")
                .unwrap()
                .mac_addresses
                .is_empty()
        );
    }

    #[test]
    fn malformed_values_are_errors_naming_the_parameter() {
        let cases = [
            ("", "vmetal.api= is missing"),
            ("vmetal.api", "vmetal.api=\"\" is empty"),
            ("vmetal.api=", "is empty"),
            (
                "vmetal.api=10.0.0.2:8080",
                "is not an http:// or https:// URL",
            ),
            ("vmetal.api=ftp://h/", "is not an http:// or https:// URL"),
            ("vmetal.api=http://", "is not a URL"),
            ("vmetal.api=\"http://h /x\"", "contains whitespace"),
            (
                "vmetal.api=http://h vmetal.mac=52:54:00:zz:00:01",
                "vmetal.mac=\"52:54:00:zz:00:01\" is not a MAC address",
            ),
            ("vmetal.api=http://h vmetal.mac=52:54:00", "is not a MAC"),
            (
                "vmetal.api=http://h vmetal.debug=maybe",
                "vmetal.debug=\"maybe\" is neither",
            ),
        ];
        for (line, want) in cases {
            let err = parse(line).unwrap_err();
            assert!(matches!(err, AgentError::Cmdline { .. }), "{line}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(want), "{line:?}: {msg}");
            assert!(msg.contains("boot script"), "{msg}");
        }
    }

    #[test]
    fn credentials_in_the_api_url_stay_out_of_errors() {
        let err = parse("vmetal.api=ftp://user:s3cret@h/").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn debug_spellings_and_unknown_parameters() {
        for on in [
            "vmetal.debug",
            "vmetal.debug=1",
            "vmetal.debug=Yes",
            "vmetal.debug=on",
        ] {
            assert!(
                parse(&format!("vmetal.api=http://h {on}")).unwrap().debug,
                "{on}"
            );
        }
        for off in ["vmetal.debug=0", "vmetal.debug=off", "vmetal.debug=FALSE"] {
            assert!(
                !parse(&format!("vmetal.api=http://h {off}")).unwrap().debug,
                "{off}"
            );
        }
        let s = parse("vmetal.api=http://h vmetal.apii=x vmetal.macs=y other.x=1").unwrap();
        assert_eq!(s.unknown, vec!["vmetal.apii", "vmetal.macs"]);
    }

    #[test]
    fn non_ascii_bytes_do_not_panic() {
        let s = parse("vmetal.api=http://h/\u{fffd} \u{fffd}=\"\u{1F600}").unwrap();
        assert_eq!(s.api_url, "http://h/\u{fffd}");
    }
}
