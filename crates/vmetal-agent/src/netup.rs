//! Network bring-up in the ramdisk: when no interface but `lo` has an IPv4 address, set every
//! physical NIC up and run busybox `udhcpc` on each, with a bounded number of DHCP tries.
//!
//! The kernel has no `ip=dhcp` support (no `CONFIG_IP_PNP`), so userspace must do DHCP. Each
//! `udhcpc` stays in the background once it has a lease and renews it while the agent runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::error::AgentError;

/// The `udhcpc` event script: addresses, default route and DNS from the lease. `$mask` is the
/// prefix length busybox computes from the subnet option.
pub const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# udhcpc event script written by vmetal-agent (netup.rs): address, default route, DNS.
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set dev "$interface" up
	;;
bound|renew)
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" broadcast "${broadcast:-+}" dev "$interface"
	for r in $router; do
		# The first lease's router wins; later NICs keep theirs out of the way.
		ip route add default via "$r" dev "$interface" 2>/dev/null || true
		break
	done
	if [ -n "$dns" ] && [ ! -s /etc/resolv.conf ]; then
		: >/etc/resolv.conf.tmp
		[ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf.tmp
		for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf.tmp; done
		mv /etc/resolv.conf.tmp /etc/resolv.conf
	fi
	;;
esac
exit 0
"#;

/// Where the tools are and how long to try.
#[derive(Debug, Clone)]
pub struct NetupConfig {
    /// Where `/sys` is (`/sys`).
    pub sys: PathBuf,
    /// The `ip` command (busybox or iproute2).
    pub ip: PathBuf,
    /// The `udhcpc` command.
    pub udhcpc: PathBuf,
    /// Where the event script, pid files and `udhcpc` logs are written.
    pub run_dir: PathBuf,
    /// DHCP discovers sent per NIC before giving up (`udhcpc -t`).
    pub dhcp_tries: u32,
    /// Seconds between discovers (`udhcpc -T`).
    pub dhcp_timeout_secs: u32,
    /// How long to wait for a carrier after setting a link up.
    pub carrier_wait: Duration,
}

impl Default for NetupConfig {
    fn default() -> Self {
        Self {
            sys: "/sys".into(),
            ip: "ip".into(),
            udhcpc: "udhcpc".into(),
            run_dir: "/run/vmetal-agent".into(),
            dhcp_tries: 6,
            dhcp_timeout_secs: 3,
            carrier_wait: Duration::from_secs(10),
        }
    }
}

/// A physical NIC and the IPv4 addresses it ended up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicAddress {
    /// Interface name (`eth0`).
    pub interface: String,
    /// MAC address, lower case.
    pub mac: String,
    /// `10.0.2.15/24`, ...; empty when DHCP got no lease.
    pub addresses: Vec<String>,
}

/// Make sure some NIC has an IPv4 address: a no-op when one already has, otherwise DHCP on
/// every physical NIC at once. Logs one line per NIC; fails when no NIC got a lease.
pub async fn bring_up(cfg: &NetupConfig) -> Result<Vec<NicAddress>, AgentError> {
    let existing = non_loopback(&ipv4_addresses(cfg).await?);
    if !existing.is_empty() {
        for (interface, addrs) in &existing {
            tracing::info!(interface, addresses = %addrs.join(","), "network already configured");
        }
        return Ok(existing
            .into_iter()
            .map(|(interface, addresses)| NicAddress {
                mac: read_mac(&cfg.sys, &interface),
                interface,
                addresses,
            })
            .collect());
    }
    let nics = physical_nics(&cfg.sys);
    if nics.is_empty() {
        return Err(AgentError::Network {
            interface: "*".into(),
            reason: format!(
                "no physical NIC under {}/class/net; is the NIC's driver module in the ramdisk and loaded?",
                cfg.sys.display()
            ),
        });
    }
    tokio::fs::create_dir_all(&cfg.run_dir)
        .await
        .map_err(|e| run_dir_error(cfg, &e))?;
    let script = cfg.run_dir.join("udhcpc.script");
    write_script(&script)
        .await
        .map_err(|e| run_dir_error(cfg, &e))?;
    let attempts = nics
        .iter()
        .map(|(name, mac)| dhcp_one(cfg, &script, name, mac));
    let outcomes = futures::future::join_all(attempts).await;
    let now = ipv4_addresses(cfg).await?;
    let mut result = Vec::new();
    for ((interface, mac), outcome) in nics.into_iter().zip(outcomes) {
        let addresses = now.get(&interface).cloned().unwrap_or_default();
        match (&outcome, addresses.is_empty()) {
            (Ok(elapsed), false) => tracing::info!(
                interface,
                mac,
                addresses = %addresses.join(","),
                "DHCP lease after {:.1} s",
                elapsed.as_secs_f64()
            ),
            (Ok(_), true) => tracing::warn!(
                interface,
                mac,
                "udhcpc reported a lease but the interface has no IPv4 address"
            ),
            (Err(e), _) => tracing::warn!(interface, mac, "{e}"),
        }
        result.push(NicAddress {
            interface,
            mac,
            addresses,
        });
    }
    if result.iter().all(|n| n.addresses.is_empty()) {
        return Err(AgentError::Network {
            interface: "*".into(),
            reason: format!(
                "no DHCP lease on any of {} NIC(s) after {} tries each; is a DHCP server answering on the provisioning network?",
                result.len(),
                cfg.dhcp_tries
            ),
        });
    }
    Ok(result)
}

fn run_dir_error(cfg: &NetupConfig, e: &std::io::Error) -> AgentError {
    AgentError::Network {
        interface: "*".into(),
        reason: format!(
            "cannot write the udhcpc script into {}: {e}",
            cfg.run_dir.display()
        ),
    }
}

async fn write_script(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::write(path, UDHCPC_SCRIPT).await?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).await
}

/// Set `interface` up, wait for its carrier, run `udhcpc` until it has a lease or gives up.
async fn dhcp_one(
    cfg: &NetupConfig,
    script: &Path,
    interface: &str,
    mac: &str,
) -> Result<Duration, AgentError> {
    let fail = |reason: String| AgentError::Network {
        interface: interface.into(),
        reason,
    };
    let started = Instant::now();
    let status = tokio::process::Command::new(&cfg.ip)
        .args(["link", "set", "dev", interface, "up"])
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(|e| fail(format!("cannot run {}: {e}", cfg.ip.display())))?;
    if !status.success() {
        return Err(fail(format!(
            "`ip link set dev {interface} up` failed ({status})"
        )));
    }
    if !wait_for_carrier(&cfg.sys, interface, cfg.carrier_wait).await {
        tracing::warn!(
            interface,
            mac,
            "no carrier after {} s (cable or switch port down?); trying DHCP anyway",
            cfg.carrier_wait.as_secs()
        );
    }
    tracing::info!(interface, mac, "starting DHCP");
    // udhcpc's background child keeps its stdio open for as long as it lives, so its output
    // goes to a file: a pipe would never reach end of file (and would hold init's console pipe).
    let log_path = cfg.run_dir.join(format!("udhcpc.{interface}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| fail(format!("cannot create {}: {e}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|e| fail(format!("cannot reopen {}: {e}", log_path.display())))?;
    let args = udhcpc_args(
        interface,
        script,
        &cfg.run_dir,
        cfg.dhcp_tries,
        cfg.dhcp_timeout_secs,
    );
    let mut child = tokio::process::Command::new(&cfg.udhcpc)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", cfg.udhcpc.display())))?;
    // udhcpc gives up by itself after its tries; the margin covers slow script runs.
    let limit = Duration::from_secs(u64::from(cfg.dhcp_tries * cfg.dhcp_timeout_secs) + 30);
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.map_err(|e| fail(format!("waiting for udhcpc: {e}")))?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(fail(format!(
                "udhcpc did not finish within {} s",
                limit.as_secs()
            )));
        }
    };
    let output = tokio::fs::read_to_string(&log_path)
        .await
        .unwrap_or_default();
    for line in output.lines() {
        tracing::debug!(interface, "udhcpc: {line}");
    }
    if status.success() {
        Ok(started.elapsed())
    } else {
        Err(fail(format!(
            "no DHCP lease after {} tries {} s apart{} (udhcpc {status})",
            cfg.dhcp_tries,
            cfg.dhcp_timeout_secs,
            output
                .lines()
                .last()
                .map(|l| format!("; last udhcpc line: {l:?}"))
                .unwrap_or_default()
        )))
    }
}

/// `udhcpc` arguments: give up after `tries` discovers (`-n`), otherwise go to the
/// background with the lease and keep renewing it.
pub fn udhcpc_args(
    interface: &str,
    script: &Path,
    run_dir: &Path,
    tries: u32,
    timeout_secs: u32,
) -> Vec<String> {
    vec![
        "-i".into(),
        interface.into(),
        "-s".into(),
        script.display().to_string(),
        "-p".into(),
        run_dir
            .join(format!("udhcpc.{interface}.pid"))
            .display()
            .to_string(),
        "-t".into(),
        tries.max(1).to_string(),
        "-T".into(),
        timeout_secs.max(1).to_string(),
        // Seconds to wait after a failed round; only matters when renewing later.
        "-A".into(),
        "5".into(),
        "-n".into(),
    ]
}

async fn wait_for_carrier(sys: &Path, interface: &str, limit: Duration) -> bool {
    let path = sys.join("class/net").join(interface).join("carrier");
    let deadline = Instant::now() + limit;
    loop {
        // Reading `carrier` fails while the link is still down administratively.
        if tokio::fs::read_to_string(&path)
            .await
            .is_ok_and(|s| s.trim() == "1")
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run `ip -o -4 addr show` and parse it.
async fn ipv4_addresses(cfg: &NetupConfig) -> Result<BTreeMap<String, Vec<String>>, AgentError> {
    let out = tokio::process::Command::new(&cfg.ip)
        .args(["-o", "-4", "addr", "show"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| AgentError::Network {
            interface: "*".into(),
            reason: format!(
                "cannot run `{} -o -4 addr show`: {e} (busybox or iproute2 must be installed)",
                cfg.ip.display()
            ),
        })?;
    if !out.status.success() {
        return Err(AgentError::Network {
            interface: "*".into(),
            reason: format!(
                "`{} -o -4 addr show` failed ({}): {}",
                cfg.ip.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(parse_ip_addr(&String::from_utf8_lossy(&out.stdout)))
}

/// IPv4 addresses per interface from `ip -o -4 addr show` (iproute2 or busybox):
/// `2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\       valid_lft ...`.
pub fn parse_ip_addr(output: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in output.lines() {
        let mut words = line.split_whitespace();
        let (Some(index), Some(name), Some("inet"), Some(addr)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        if !index.ends_with(':') || !addr.contains('/') {
            continue;
        }
        // `eth0.100@eth0` style names carry their parent after `@`.
        let name = name.split('@').next().unwrap_or(name).trim_end_matches(':');
        map.entry(name.to_string())
            .or_default()
            .push(addr.to_string());
    }
    map
}

/// Interfaces other than loopback that have an IPv4 address.
fn non_loopback(all: &BTreeMap<String, Vec<String>>) -> Vec<(String, Vec<String>)> {
    all.iter()
        .filter(|(name, addrs)| {
            name.as_str() != "lo" && addrs.iter().any(|a| !a.starts_with("127."))
        })
        .map(|(n, a)| (n.clone(), a.clone()))
        .collect()
}

/// Physical NICs (those with a `device` link) with their MACs, sorted by name.
pub fn physical_nics(sys: &Path) -> Vec<(String, String)> {
    let net = sys.join("class/net");
    let mut names: Vec<String> = std::fs::read_dir(&net)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter(|n| n != "lo" && std::fs::symlink_metadata(net.join(n).join("device")).is_ok())
        .map(|n| {
            let mac = read_mac(sys, &n);
            (n, mac)
        })
        .collect()
}

fn read_mac(sys: &Path, interface: &str) -> String {
    std::fs::read_to_string(sys.join("class/net").join(interface).join("address"))
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn iproute2_and_busybox_output_is_parsed() {
        let iproute2 = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
                        2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\\       valid_lft forever preferred_lft forever\n\
                        2: eth0    inet 10.0.3.1/16 scope global secondary eth0\\ \n\
                        5: vlan7@eth0    inet 192.168.7.2/24 scope global vlan7\\ \n";
        let m = parse_ip_addr(iproute2);
        assert_eq!(m["lo"], vec!["127.0.0.1/8"]);
        assert_eq!(m["eth0"], vec!["10.0.2.15/24", "10.0.3.1/16"]);
        assert_eq!(m["vlan7"], vec!["192.168.7.2/24"]);
        assert_eq!(
            non_loopback(&m)
                .into_iter()
                .map(|x| x.0)
                .collect::<Vec<_>>(),
            vec!["eth0", "vlan7"]
        );
        let busybox = "1: lo    inet 127.0.0.1/8 scope host lo\n";
        assert!(non_loopback(&parse_ip_addr(busybox)).is_empty());
        assert!(parse_ip_addr("").is_empty());
        assert!(parse_ip_addr("garbage\n3: eth1 inet6 fe80::1/64\n").is_empty());
    }

    #[test]
    fn only_nics_with_a_device_are_physical() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("class/net");
        for (name, mac, physical) in [
            ("lo", "00:00:00:00:00:00", false),
            ("eth1", "52:54:00:00:00:02", true),
            ("eth0", "52:54:00:AA:00:01", true),
            ("br0", "52:54:00:00:00:03", false),
        ] {
            std::fs::create_dir_all(net.join(name)).unwrap();
            std::fs::write(net.join(name).join("address"), format!("{mac}\n")).unwrap();
            if physical {
                std::os::unix::fs::symlink("../../devices/x", net.join(name).join("device"))
                    .unwrap();
            }
        }
        assert_eq!(
            physical_nics(dir.path()),
            vec![
                ("eth0".to_string(), "52:54:00:aa:00:01".to_string()),
                ("eth1".to_string(), "52:54:00:00:00:02".to_string()),
            ]
        );
        assert!(physical_nics(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn udhcpc_gives_up_after_its_tries() {
        let args = udhcpc_args("eth0", Path::new("/run/s"), Path::new("/run"), 0, 3);
        assert_eq!(
            args.join(" "),
            "-i eth0 -s /run/s -p /run/udhcpc.eth0.pid -t 1 -T 3 -A 5 -n"
        );
    }

    #[test]
    fn the_event_script_configures_address_route_and_dns() {
        assert!(UDHCPC_SCRIPT.starts_with("#!/bin/sh\n"));
        for needle in [
            "ip addr add \"$ip/${mask:-24}\"",
            "default via",
            "nameserver",
        ] {
            assert!(UDHCPC_SCRIPT.contains(needle), "{needle}");
        }
    }
}
