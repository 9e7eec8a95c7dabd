//! Parsing of Metal3 `spec.bmc.address` strings (`ipmi://`, `redfish+https://`, bare `host:port`)
//! into the driver, endpoint and options vmetal uses to talk to a host's BMC.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Scheme names listed in errors so the user can pick a supported one.
const SUPPORTED_SCHEMES: &str = "ipmi, libvirt, redfish, redfish-virtualmedia, redfish-uefihttp, \
     idrac-redfish, idrac-virtualmedia (the redfish and idrac ones also as <name>+http and \
     <name>+https), or a bare host[:port] for IPMI";

/// A `spec.bmc.address` that cannot be used. Every message names the address, with any embedded
/// credentials redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BmcAddressError {
    /// The address is empty or only whitespace.
    #[error(
        "BMC address is empty; set spec.bmc.address, e.g. \"redfish://10.0.0.5/redfish/v1/Systems/1\" \
         or \"ipmi://10.0.0.5\""
    )]
    Empty,
    /// The scheme names no driver vmetal knows.
    #[error(
        "BMC address {address:?} has unknown scheme {scheme:?}; use one of {SUPPORTED_SCHEMES}"
    )]
    UnknownScheme {
        /// The address as given.
        address: String,
        /// The scheme, lower-cased.
        scheme: String,
    },
    /// The scheme names a driver that Metal3 has removed.
    #[error(
        "BMC address {address:?} uses the {scheme:?} driver, which was removed in Metal3; use \
         \"redfish://\" (or \"redfish-virtualmedia://\") with the BMC's Redfish endpoint instead"
    )]
    RemovedDriver {
        /// The address as given.
        address: String,
        /// The removed scheme, lower-cased.
        scheme: String,
    },
    /// Nothing where the host name or IP should be.
    #[error("BMC address {address:?} has no host; write the BMC's hostname or IP after the scheme")]
    MissingHost {
        /// The address as given.
        address: String,
    },
    /// The host is neither an IP literal nor a valid DNS name.
    #[error(
        "BMC address {address:?} has invalid host {host:?}; use an IP address or a DNS name \
         (labels of 1-63 letters, digits or '-', not starting or ending with '-', 253 characters \
         at most)"
    )]
    InvalidHost {
        /// The address as given.
        address: String,
        /// The rejected host.
        host: String,
    },
    /// The port is not a number in 1..=65535.
    #[error("BMC address {address:?} has invalid port {port:?}; use a number from 1 to 65535")]
    InvalidPort {
        /// The address as given.
        address: String,
        /// The rejected port text.
        port: String,
    },
    /// A `[` without its `]`, or the other way round.
    #[error(
        "BMC address {address:?} has an unbalanced '[' or ']'; write IPv6 hosts as [addr] or \
         [addr]:port"
    )]
    UnbalancedBracket {
        /// The address as given.
        address: String,
    },
    /// The text inside `[...]` is not an IPv6 address.
    #[error(
        "BMC address {address:?} has {host:?} in brackets, which is not an IPv6 address; \
         brackets are only for IPv6 literals such as [fd00::5]"
    )]
    InvalidIpv6 {
        /// The address as given.
        address: String,
        /// The text between the brackets.
        host: String,
    },
    /// An IPv6 literal without brackets after a scheme, where its colons clash with the port.
    #[error(
        "BMC address {address:?} has an IPv6 host without brackets; write it as [addr] or \
         [addr]:port"
    )]
    UnbracketedIpv6 {
        /// The address as given.
        address: String,
    },
    /// `?privilegelevel=` is not an IPMI privilege level.
    #[error(
        "BMC address {address:?} has invalid privilegelevel {value:?}; use callback, user, \
         operator or administrator (the default)"
    )]
    InvalidPrivilegeLevel {
        /// The address as given.
        address: String,
        /// The rejected value.
        value: String,
    },
    /// `?ciphersuite=` is not a supported IPMI cipher suite.
    #[error(
        "BMC address {address:?} has unsupported ciphersuite {value:?}; use 3 or 17, or leave it \
         out to negotiate"
    )]
    InvalidCipherSuite {
        /// The address as given.
        address: String,
        /// The rejected value.
        value: String,
    },
    /// An IPMI address with a path, which IPMI has no use for.
    #[error(
        "BMC address {address:?} has path {path:?}, but IPMI addresses take no path; remove it"
    )]
    UnexpectedPath {
        /// The address as given.
        address: String,
        /// The rejected path.
        path: String,
    },
    /// Credentials embedded as `user:pass@`; the address is stored with them redacted.
    #[error(
        "BMC address {address:?} embeds credentials; remove them from the address and put the \
         username and password in the Secret named by spec.bmc.credentialsName"
    )]
    Userinfo {
        /// The address with everything before the `@` in the authority replaced by `***`.
        address: String,
    },
    /// A Redfish system path that does not start with `/` or contains whitespace.
    #[error(
        "BMC address {address:?} has invalid Redfish system path {path:?}; use an absolute path \
         without spaces such as /redfish/v1/Systems/1, or none to use the only system"
    )]
    InvalidRedfishPath {
        /// The address as given.
        address: String,
        /// The rejected path.
        path: String,
    },
    /// A query parameter the driver does not understand.
    #[error(
        "BMC address {address:?} has unknown query parameter {parameter:?}; IPMI addresses accept \
         privilegelevel and ciphersuite, Redfish addresses none"
    )]
    UnknownQueryParameter {
        /// The address as given.
        address: String,
        /// The parameter name.
        parameter: String,
    },
    /// The same query parameter given twice.
    #[error("BMC address {address:?} gives query parameter {parameter:?} twice; keep one")]
    DuplicateQueryParameter {
        /// The address as given.
        address: String,
        /// The parameter name.
        parameter: String,
    },
}

/// The wire protocol spoken to the BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// IPMI over LAN (RMCP+), UDP port 623 by default.
    Ipmi,
    /// Redfish over HTTP(S).
    Redfish,
}

/// How the host is booted into the provisioning agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootInterface {
    /// Network boot (PXE/iPXE); needs DHCP on a provisioning network.
    Pxe,
    /// An ISO attached as virtual media; works over routed (L3) networks.
    VirtualMedia,
    /// UEFI HTTP boot.
    UefiHttp,
}

/// The Metal3 driver selected by the address scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BmcDriver {
    /// `ipmi://` or a bare host: IPMI power, PXE boot.
    Ipmi,
    /// `libvirt://`: IPMI through VirtualBMC for test VMs; needs `bootMACAddress`.
    Libvirt,
    /// `redfish://`: Redfish power, PXE boot.
    Redfish,
    /// `redfish-virtualmedia://`: Redfish power, virtual-media boot.
    RedfishVirtualMedia,
    /// `redfish-uefihttp://`: Redfish power, UEFI HTTP boot.
    RedfishUefiHttp,
    /// `idrac-redfish://`: Dell iDRAC over Redfish, PXE boot.
    IdracRedfish,
    /// `idrac-virtualmedia://`: Dell iDRAC over Redfish, virtual-media boot.
    IdracVirtualMedia,
}

impl BmcDriver {
    /// The wire protocol this driver speaks.
    pub fn protocol(self) -> Protocol {
        match self {
            Self::Ipmi | Self::Libvirt => Protocol::Ipmi,
            Self::Redfish
            | Self::RedfishVirtualMedia
            | Self::RedfishUefiHttp
            | Self::IdracRedfish
            | Self::IdracVirtualMedia => Protocol::Redfish,
        }
    }

    /// How hosts managed by this driver are booted.
    pub fn boot_interface(self) -> BootInterface {
        match self {
            Self::Ipmi | Self::Libvirt | Self::Redfish | Self::IdracRedfish => BootInterface::Pxe,
            Self::RedfishVirtualMedia | Self::IdracVirtualMedia => BootInterface::VirtualMedia,
            Self::RedfishUefiHttp => BootInterface::UefiHttp,
        }
    }

    /// The canonical scheme name, without `+http`/`+https`.
    pub fn scheme(self) -> &'static str {
        match self {
            Self::Ipmi => "ipmi",
            Self::Libvirt => "libvirt",
            Self::Redfish => "redfish",
            Self::RedfishVirtualMedia => "redfish-virtualmedia",
            Self::RedfishUefiHttp => "redfish-uefihttp",
            Self::IdracRedfish => "idrac-redfish",
            Self::IdracVirtualMedia => "idrac-virtualmedia",
        }
    }

    /// Whether the host must have `bootMACAddress` set (only libvirt).
    pub fn needs_mac(self) -> bool {
        self == Self::Libvirt
    }

    /// Whether booting needs DHCP on a provisioning network (the PXE-booting drivers).
    pub fn requires_provisioning_network(self) -> bool {
        self.boot_interface() == BootInterface::Pxe
    }

    /// Looks up a lower-cased scheme name without `+http`/`+https`, including deprecated aliases.
    fn from_scheme(name: &str) -> Option<Self> {
        Some(match name {
            "ipmi" => Self::Ipmi,
            "libvirt" => Self::Libvirt,
            "redfish" | "ilo5-redfish" => Self::Redfish,
            "redfish-virtualmedia" | "ilo5-virtualmedia" => Self::RedfishVirtualMedia,
            "redfish-uefihttp" => Self::RedfishUefiHttp,
            "idrac-redfish" => Self::IdracRedfish,
            "idrac-virtualmedia" => Self::IdracVirtualMedia,
            _ => return None,
        })
    }
}

/// HTTP or HTTPS, for the Redfish-family drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpScheme {
    /// Plain HTTP (`+http`), default port 80.
    Http,
    /// HTTPS, the default, port 443.
    Https,
}

impl HttpScheme {
    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// The IPMI session privilege level requested from the BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IpmiPrivilege {
    /// CALLBACK (1).
    Callback,
    /// USER (2).
    User,
    /// OPERATOR (3).
    Operator,
    /// ADMINISTRATOR (4), the Metal3 default.
    #[default]
    Administrator,
}

impl IpmiPrivilege {
    /// The privilege level code used in IPMI messages.
    pub fn code(self) -> u8 {
        match self {
            Self::Callback => 1,
            Self::User => 2,
            Self::Operator => 3,
            Self::Administrator => 4,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Callback => "CALLBACK",
            Self::User => "USER",
            Self::Operator => "OPERATOR",
            Self::Administrator => "ADMINISTRATOR",
        }
    }

    fn from_query(value: &str) -> Option<Self> {
        [
            Self::Callback,
            Self::User,
            Self::Operator,
            Self::Administrator,
        ]
        .into_iter()
        .find(|p| p.as_str().eq_ignore_ascii_case(value))
    }
}

/// The IPMI port used when the address gives none.
const IPMI_PORT: u16 = 623;
/// The IPMI cipher suites vmetal implements.
const CIPHER_SUITES: [u8; 2] = [3, 17];

/// A parsed `spec.bmc.address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcAddress {
    /// The driver chosen by the scheme.
    pub driver: BmcDriver,
    /// Hostname or IP; IPv6 without brackets.
    pub host: String,
    /// The port, with the driver's default filled in (IPMI 623, HTTPS 443, HTTP 80).
    pub port: u16,
    /// `Some` for the Redfish family, `None` for IPMI and libvirt.
    pub http_scheme: Option<HttpScheme>,
    /// The Redfish system path (e.g. `/redfish/v1/Systems/1`); empty means "the only member of
    /// `/redfish/v1/Systems`". Always empty for IPMI; for libvirt kept as written but unused.
    pub path: String,
    /// From `?privilegelevel=` (IPMI only), default administrator.
    pub privilege_level: IpmiPrivilege,
    /// From `?ciphersuite=` (IPMI only, 3 or 17); `None` negotiates.
    pub cipher_suite: Option<u8>,
}

impl BmcAddress {
    /// Parses a Metal3 BMC address; see the module docs for the accepted forms.
    pub fn parse(address: &str) -> Result<BmcAddress, BmcAddressError> {
        let address = address.trim();
        if address.is_empty() {
            return Err(BmcAddressError::Empty);
        }
        // Checked first so that no other error can echo a password back.
        if address.contains('@') {
            return Err(BmcAddressError::Userinfo {
                address: redact_userinfo(address),
            });
        }
        let (driver, http_scheme, rest, bare) = split_scheme(address)?;
        let a = || address.to_owned();

        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, after) = rest.split_at(authority_end);
        let (path, query) = match after.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (after, None),
        };

        let (host, port) = split_host_port(address, authority, bare)?;
        let port = match port {
            Some(port) => port,
            None => match http_scheme {
                Some(scheme) => scheme.default_port(),
                None => IPMI_PORT,
            },
        };

        let path = match driver {
            BmcDriver::Ipmi if path.is_empty() || path == "/" => String::new(),
            BmcDriver::Ipmi => {
                return Err(BmcAddressError::UnexpectedPath {
                    address: a(),
                    path: path.to_owned(),
                });
            }
            _ if path == "/" => String::new(),
            _ if !path.is_empty()
                && (!path.starts_with('/') || path.chars().any(|c| c.is_whitespace())) =>
            {
                return Err(BmcAddressError::InvalidRedfishPath {
                    address: a(),
                    path: path.to_owned(),
                });
            }
            _ => path.to_owned(),
        };

        let mut privilege_level = None;
        let mut cipher_suite = None;
        for param in query.unwrap_or_default().split('&') {
            if param.is_empty() {
                continue;
            }
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            let name_lc = name.to_ascii_lowercase();
            let duplicate = || BmcAddressError::DuplicateQueryParameter {
                address: a(),
                parameter: name.to_owned(),
            };
            match name_lc.as_str() {
                "privilegelevel" if driver.protocol() == Protocol::Ipmi => {
                    let level = IpmiPrivilege::from_query(value).ok_or_else(|| {
                        BmcAddressError::InvalidPrivilegeLevel {
                            address: a(),
                            value: value.to_owned(),
                        }
                    })?;
                    if privilege_level.replace(level).is_some() {
                        return Err(duplicate());
                    }
                }
                "ciphersuite" if driver.protocol() == Protocol::Ipmi => {
                    let suite = value
                        .parse::<u8>()
                        .ok()
                        .filter(|s| {
                            CIPHER_SUITES.contains(s) && value.bytes().all(|b| b.is_ascii_digit())
                        })
                        .ok_or_else(|| BmcAddressError::InvalidCipherSuite {
                            address: a(),
                            value: value.to_owned(),
                        })?;
                    if cipher_suite.replace(suite).is_some() {
                        return Err(duplicate());
                    }
                }
                _ => {
                    return Err(BmcAddressError::UnknownQueryParameter {
                        address: a(),
                        parameter: name.to_owned(),
                    });
                }
            }
        }

        Ok(BmcAddress {
            driver,
            host,
            port,
            http_scheme,
            path,
            privilege_level: privilege_level.unwrap_or_default(),
            cipher_suite,
        })
    }

    /// `scheme://host:port` for Redfish drivers (IPv6 bracketed); `None` for IPMI and libvirt.
    pub fn base_url(&self) -> Option<String> {
        self.http_scheme
            .map(|scheme| format!("{}://{}:{}", scheme.as_str(), self.socket_host(), self.port))
    }

    /// The host ready for `host:port` formatting: IPv6 literals in brackets.
    pub fn socket_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

/// Canonical form: driver scheme (`+http` only when not HTTPS), host, explicit port, path, and
/// the IPMI options that differ from the defaults. Parsing it gives back the same value.
impl fmt::Display for BmcAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = match self.http_scheme {
            Some(HttpScheme::Http) => "+http",
            Some(HttpScheme::Https) | None => "",
        };
        write!(
            f,
            "{}{}://{}:{}{}",
            self.driver.scheme(),
            suffix,
            self.socket_host(),
            self.port,
            self.path
        )?;
        let mut sep = '?';
        if self.privilege_level != IpmiPrivilege::default() {
            write!(f, "{sep}privilegelevel={}", self.privilege_level.as_str())?;
            sep = '&';
        }
        if let Some(suite) = self.cipher_suite {
            write!(f, "{sep}ciphersuite={suite}")?;
        }
        Ok(())
    }
}

impl FromStr for BmcAddress {
    type Err = BmcAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Splits off and resolves the scheme. Returns the driver, HTTP scheme, the text after `://`
/// and whether the address was bare (no scheme, so IPMI).
fn split_scheme(
    address: &str,
) -> Result<(BmcDriver, Option<HttpScheme>, &str, bool), BmcAddressError> {
    let Some((scheme, rest)) = address.split_once("://").filter(|(s, _)| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    }) else {
        return Ok((BmcDriver::Ipmi, None, address, true));
    };
    let scheme = scheme.to_ascii_lowercase();
    let unknown = || BmcAddressError::UnknownScheme {
        address: address.to_owned(),
        scheme: scheme.clone(),
    };
    if matches!(
        scheme.as_str(),
        "irmc" | "ilo4" | "ilo4-virtualmedia" | "ilo5"
    ) {
        return Err(BmcAddressError::RemovedDriver {
            address: address.to_owned(),
            scheme,
        });
    }
    let (name, explicit) = match scheme.rsplit_once('+') {
        Some((name, "http")) => (name, Some(HttpScheme::Http)),
        Some((name, "https")) => (name, Some(HttpScheme::Https)),
        Some(_) => return Err(unknown()),
        None => (scheme.as_str(), None),
    };
    let driver = BmcDriver::from_scheme(name).ok_or_else(unknown)?;
    let http_scheme = match (driver.protocol(), explicit) {
        (Protocol::Ipmi, None) => None,
        (Protocol::Ipmi, Some(_)) => return Err(unknown()),
        (Protocol::Redfish, explicit) => Some(explicit.unwrap_or(HttpScheme::Https)),
    };
    Ok((driver, http_scheme, rest, false))
}

/// Splits `host`, `host:port`, `[v6]`, `[v6]:port` (and, when bare, an unbracketed IPv6
/// literal) into a validated host and optional port.
fn split_host_port(
    address: &str,
    authority: &str,
    bare: bool,
) -> Result<(String, Option<u16>), BmcAddressError> {
    let a = || address.to_owned();
    if let Some(inner) = authority.strip_prefix('[') {
        let (v6, after) = inner
            .split_once(']')
            .ok_or_else(|| BmcAddressError::UnbalancedBracket { address: a() })?;
        if v6.contains('[') || after.contains(['[', ']']) {
            return Err(BmcAddressError::UnbalancedBracket { address: a() });
        }
        if v6.is_empty() {
            return Err(BmcAddressError::MissingHost { address: a() });
        }
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(BmcAddressError::InvalidIpv6 {
                address: a(),
                host: v6.to_owned(),
            });
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(parse_port(address, port)?),
                None => {
                    return Err(BmcAddressError::InvalidHost {
                        address: a(),
                        host: authority.to_owned(),
                    });
                }
            },
        };
        return Ok((v6.to_owned(), port));
    }
    if authority.contains(['[', ']']) {
        return Err(BmcAddressError::UnbalancedBracket { address: a() });
    }
    if authority.matches(':').count() > 1 {
        // A bare IPv6 literal has no room for a port; after a scheme we insist on brackets.
        return if bare && authority.parse::<Ipv6Addr>().is_ok() {
            Ok((authority.to_owned(), None))
        } else if bare {
            Err(BmcAddressError::InvalidHost {
                address: a(),
                host: authority.to_owned(),
            })
        } else {
            Err(BmcAddressError::UnbracketedIpv6 { address: a() })
        };
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(parse_port(address, port)?)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err(BmcAddressError::MissingHost { address: a() });
    }
    if host.parse::<Ipv4Addr>().is_err() && !is_dns_name(host) {
        return Err(BmcAddressError::InvalidHost {
            address: a(),
            host: host.to_owned(),
        });
    }
    Ok((host.to_owned(), port))
}

fn parse_port(address: &str, port: &str) -> Result<u16, BmcAddressError> {
    // u16::from_str accepts a leading '+', so check the digits ourselves.
    port.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| port.parse::<u16>().ok())
        .flatten()
        .filter(|p| *p != 0)
        .ok_or_else(|| BmcAddressError::InvalidPort {
            address: address.to_owned(),
            port: port.to_owned(),
        })
}

/// Labels of 1-63 `[A-Za-z0-9-]`, not starting or ending with `-`, 253 characters in total.
fn is_dns_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.first() != Some(&b'-')
                && b.last() != Some(&b'-')
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

/// Replaces everything between `://` (or the start) and the last `@` with `***`.
fn redact_userinfo(address: &str) -> String {
    let Some(at) = address.rfind('@') else {
        return address.to_owned();
    };
    let start = address
        .find("://")
        .map(|i| i + 3)
        .filter(|&i| i <= at)
        .unwrap_or(0);
    format!("{}***{}", &address[..start], &address[at..])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn redfish(
        driver: BmcDriver,
        scheme: HttpScheme,
        host: &str,
        port: u16,
        path: &str,
    ) -> BmcAddress {
        BmcAddress {
            driver,
            host: host.into(),
            port,
            http_scheme: Some(scheme),
            path: path.into(),
            privilege_level: IpmiPrivilege::Administrator,
            cipher_suite: None,
        }
    }

    fn ipmi(host: &str, port: u16) -> BmcAddress {
        BmcAddress {
            driver: BmcDriver::Ipmi,
            host: host.into(),
            port,
            http_scheme: None,
            path: String::new(),
            privilege_level: IpmiPrivilege::Administrator,
            cipher_suite: None,
        }
    }

    #[test]
    fn every_redfish_family_scheme_with_every_suffix() {
        use BmcDriver::*;
        use HttpScheme::*;
        let drivers = [
            ("redfish", Redfish),
            ("redfish-virtualmedia", RedfishVirtualMedia),
            ("redfish-uefihttp", RedfishUefiHttp),
            ("idrac-redfish", IdracRedfish),
            ("idrac-virtualmedia", IdracVirtualMedia),
            ("ilo5-redfish", Redfish),
            ("ilo5-virtualmedia", RedfishVirtualMedia),
        ];
        for (name, driver) in drivers {
            for (suffix, scheme, port) in [
                ("", Https, 443),
                ("+https", Https, 443),
                ("+http", Http, 80),
            ] {
                let input = format!("{name}{suffix}://bmc.example.com/redfish/v1/Systems/1");
                let want = redfish(
                    driver,
                    scheme,
                    "bmc.example.com",
                    port,
                    "/redfish/v1/Systems/1",
                );
                assert_eq!(BmcAddress::parse(&input), Ok(want), "{input}");
                let upper = input.replacen(name, &name.to_uppercase(), 1);
                assert_eq!(BmcAddress::parse(&upper).unwrap().driver, driver, "{upper}");
            }
        }
    }

    #[test]
    fn ipmi_forms_and_defaults() {
        let cases: &[(&str, BmcAddress)] = &[
            ("ipmi://10.0.0.5", ipmi("10.0.0.5", 623)),
            ("IPMI://10.0.0.5:6230", ipmi("10.0.0.5", 6230)),
            ("ipmi://bmc-1.rack.example", ipmi("bmc-1.rack.example", 623)),
            ("ipmi://10.0.0.5/", ipmi("10.0.0.5", 623)),
            ("10.0.0.5", ipmi("10.0.0.5", 623)),
            ("10.0.0.5:6231", ipmi("10.0.0.5", 6231)),
            ("bmc1", ipmi("bmc1", 623)),
            ("bmc1:1", ipmi("bmc1", 1)),
            ("bmc1:65535", ipmi("bmc1", 65535)),
            ("  bmc1:623 \n", ipmi("bmc1", 623)),
            ("[fd00::5]", ipmi("fd00::5", 623)),
            ("[fd00::5]:6230", ipmi("fd00::5", 6230)),
            ("fd00::5", ipmi("fd00::5", 623)),
            ("::1", ipmi("::1", 623)),
            ("ipmi://[fd00::5]", ipmi("fd00::5", 623)),
            ("ipmi://[fd00::5]:6230", ipmi("fd00::5", 6230)),
        ];
        for (input, want) in cases {
            assert_eq!(BmcAddress::parse(input).as_ref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn libvirt_is_ipmi_via_virtualbmc_and_needs_mac() {
        let addr = BmcAddress::parse("libvirt://192.168.122.1:6233/").unwrap();
        assert_eq!(addr.driver, BmcDriver::Libvirt);
        assert_eq!(addr.port, 6233);
        assert_eq!(addr.http_scheme, None);
        assert_eq!(addr.path, "");
        assert_eq!(addr.driver.protocol(), Protocol::Ipmi);
        assert!(addr.driver.needs_mac());
        assert_eq!(BmcAddress::parse("libvirt://vbmc").unwrap().port, 623);
        let with_path = BmcAddress::parse("libvirt://vbmc/vm-1").unwrap();
        assert_eq!(with_path.path, "/vm-1");
        assert_eq!(with_path.to_string(), "libvirt://vbmc:623/vm-1");
    }

    #[test]
    fn redfish_ports_paths_and_ipv6() {
        use BmcDriver::*;
        use HttpScheme::*;
        let cases: &[(&str, BmcAddress)] = &[
            (
                "redfish://10.0.0.5",
                redfish(Redfish, Https, "10.0.0.5", 443, ""),
            ),
            (
                "redfish://10.0.0.5/",
                redfish(Redfish, Https, "10.0.0.5", 443, ""),
            ),
            (
                "redfish://10.0.0.5:8443",
                redfish(Redfish, Https, "10.0.0.5", 8443, ""),
            ),
            (
                "redfish+http://10.0.0.5:8000/redfish/v1/Systems/abc/",
                redfish(Redfish, Http, "10.0.0.5", 8000, "/redfish/v1/Systems/abc/"),
            ),
            (
                "redfish://[fd00::5]/redfish/v1/Systems/1",
                redfish(Redfish, Https, "fd00::5", 443, "/redfish/v1/Systems/1"),
            ),
            (
                "redfish+http://[fd00::5]:8000",
                redfish(Redfish, Http, "fd00::5", 8000, ""),
            ),
            (
                "redfish-virtualmedia://[::1]:8443/redfish/v1/Systems/System.Embedded.1",
                redfish(
                    RedfishVirtualMedia,
                    Https,
                    "::1",
                    8443,
                    "/redfish/v1/Systems/System.Embedded.1",
                ),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(BmcAddress::parse(input).as_ref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn query_parameters() {
        let a = BmcAddress::parse("ipmi://h?privilegelevel=operator&ciphersuite=17").unwrap();
        assert_eq!(a.privilege_level, IpmiPrivilege::Operator);
        assert_eq!(a.cipher_suite, Some(17));
        for (value, want) in [
            ("CALLBACK", IpmiPrivilege::Callback),
            ("User", IpmiPrivilege::User),
            ("operator", IpmiPrivilege::Operator),
            ("ADMINISTRATOR", IpmiPrivilege::Administrator),
        ] {
            let a = BmcAddress::parse(&format!("h:623?privilegelevel={value}")).unwrap();
            assert_eq!(a.privilege_level, want, "{value}");
        }
        assert_eq!(
            BmcAddress::parse("h?ciphersuite=3").unwrap().cipher_suite,
            Some(3)
        );
        assert_eq!(BmcAddress::parse("ipmi://h?").unwrap(), ipmi("h", 623));
        let libvirt = BmcAddress::parse("libvirt://h?privilegelevel=user").unwrap();
        assert_eq!(libvirt.privilege_level, IpmiPrivilege::User);
        assert_eq!(
            [
                IpmiPrivilege::Callback,
                IpmiPrivilege::User,
                IpmiPrivilege::Operator,
                IpmiPrivilege::Administrator
            ]
            .map(IpmiPrivilege::code),
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn driver_capabilities() {
        use BmcDriver::*;
        let table = [
            (Ipmi, Protocol::Ipmi, BootInterface::Pxe, true, false),
            (Libvirt, Protocol::Ipmi, BootInterface::Pxe, true, true),
            (Redfish, Protocol::Redfish, BootInterface::Pxe, true, false),
            (
                RedfishVirtualMedia,
                Protocol::Redfish,
                BootInterface::VirtualMedia,
                false,
                false,
            ),
            (
                RedfishUefiHttp,
                Protocol::Redfish,
                BootInterface::UefiHttp,
                false,
                false,
            ),
            (
                IdracRedfish,
                Protocol::Redfish,
                BootInterface::Pxe,
                true,
                false,
            ),
            (
                IdracVirtualMedia,
                Protocol::Redfish,
                BootInterface::VirtualMedia,
                false,
                false,
            ),
        ];
        for (driver, protocol, boot, prov_net, mac) in table {
            assert_eq!(driver.protocol(), protocol, "{driver:?}");
            assert_eq!(driver.boot_interface(), boot, "{driver:?}");
            assert_eq!(
                driver.requires_provisioning_network(),
                prov_net,
                "{driver:?}"
            );
            assert_eq!(driver.needs_mac(), mac, "{driver:?}");
            assert_eq!(BmcDriver::from_scheme(driver.scheme()), Some(driver));
        }
    }

    #[test]
    fn base_url_and_socket_host() {
        let r = BmcAddress::parse("redfish://[fd00::5]/redfish/v1/Systems/1").unwrap();
        assert_eq!(r.base_url().as_deref(), Some("https://[fd00::5]:443"));
        assert_eq!(r.socket_host(), "[fd00::5]");
        let h = BmcAddress::parse("redfish+http://bmc:8000").unwrap();
        assert_eq!(h.base_url().as_deref(), Some("http://bmc:8000"));
        assert_eq!(h.socket_host(), "bmc");
        assert_eq!(BmcAddress::parse("ipmi://bmc").unwrap().base_url(), None);
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        let cases = [
            ("10.0.0.5", "ipmi://10.0.0.5:623"),
            ("fd00::5", "ipmi://[fd00::5]:623"),
            (
                "ipmi://h:6230?privilegelevel=user&ciphersuite=3",
                "ipmi://h:6230?privilegelevel=USER&ciphersuite=3",
            ),
            ("ipmi://h?ciphersuite=17", "ipmi://h:623?ciphersuite=17"),
            (
                "redfish://h/redfish/v1/Systems/1",
                "redfish://h:443/redfish/v1/Systems/1",
            ),
            ("REDFISH+HTTPS://h", "redfish://h:443"),
            (
                "ilo5-virtualmedia+http://[::1]:8000/",
                "redfish-virtualmedia+http://[::1]:8000",
            ),
            (
                "idrac-virtualmedia://h/redfish/v1/Systems/System.Embedded.1",
                "idrac-virtualmedia://h:443/redfish/v1/Systems/System.Embedded.1",
            ),
            ("redfish-uefihttp+http://h", "redfish-uefihttp+http://h:80"),
            ("idrac-redfish://h:8443", "idrac-redfish://h:8443"),
            (
                "libvirt://h?privilegelevel=operator",
                "libvirt://h:623?privilegelevel=OPERATOR",
            ),
        ];
        for (input, canonical) in cases {
            let parsed = BmcAddress::parse(input).unwrap();
            assert_eq!(parsed.to_string(), canonical, "{input}");
            assert_eq!(canonical.parse::<BmcAddress>(), Ok(parsed), "{input}");
        }
    }

    #[test]
    fn malformed_addresses_give_specific_errors() {
        // (input, expected variant, text the message must quote besides the address)
        let cases: &[(&str, &str, &str)] = &[
            ("", "Empty", "spec.bmc.address"),
            ("  \t", "Empty", "spec.bmc.address"),
            ("foo://h", "UnknownScheme", "\"foo\""),
            ("ipmi+https://h", "UnknownScheme", "\"ipmi+https\""),
            ("libvirt+http://h", "UnknownScheme", "\"libvirt+http\""),
            ("redfish+ftp://h", "UnknownScheme", "\"redfish+ftp\""),
            ("://h", "UnknownScheme", "\"\""),
            ("iRMC://h", "RemovedDriver", "\"irmc\""),
            ("ilo4://h", "RemovedDriver", "\"ilo4\""),
            (
                "ilo4-virtualmedia://h",
                "RemovedDriver",
                "\"ilo4-virtualmedia\"",
            ),
            ("ilo5://h", "RemovedDriver", "\"ilo5\""),
            ("redfish://", "MissingHost", "no host"),
            ("ipmi://:623", "MissingHost", "no host"),
            ("redfish:///redfish/v1/Systems/1", "MissingHost", "no host"),
            ("redfish://[]:443", "MissingHost", "no host"),
            ("ipmi://bad_host", "InvalidHost", "\"bad_host\""),
            ("ipmi://-bmc", "InvalidHost", "\"-bmc\""),
            ("ipmi://bmc-", "InvalidHost", "\"bmc-\""),
            ("bmc..example", "InvalidHost", "\"bmc..example\""),
            ("fd00::zz", "InvalidHost", "\"fd00::zz\""),
            ("[::1]x", "InvalidHost", "\"[::1]x\""),
            ("ipmi://h:0", "InvalidPort", "\"0\""),
            ("ipmi://h:65536", "InvalidPort", "\"65536\""),
            ("ipmi://h:abc", "InvalidPort", "\"abc\""),
            ("ipmi://h:+623", "InvalidPort", "\"+623\""),
            ("h:", "InvalidPort", "\"\""),
            ("redfish://[fd00::5]:", "InvalidPort", "\"\""),
            ("redfish://[fd00::5", "UnbalancedBracket", "[addr]"),
            ("redfish://fd00::5]", "UnbalancedBracket", "[addr]"),
            ("redfish://[[fd00::5]]", "UnbalancedBracket", "[addr]"),
            ("redfish://[10.0.0.5]", "InvalidIpv6", "\"10.0.0.5\""),
            ("redfish://[bmc]:443", "InvalidIpv6", "\"bmc\""),
            ("redfish://fd00::5", "UnbracketedIpv6", "[addr]"),
            (
                "ipmi://h?privilegelevel=root",
                "InvalidPrivilegeLevel",
                "\"root\"",
            ),
            ("ipmi://h?privilegelevel", "InvalidPrivilegeLevel", "\"\""),
            ("ipmi://h?ciphersuite=1", "InvalidCipherSuite", "\"1\""),
            ("ipmi://h?ciphersuite=+3", "InvalidCipherSuite", "\"+3\""),
            ("ipmi://h/redfish/v1", "UnexpectedPath", "\"/redfish/v1\""),
            ("h:623/x", "UnexpectedPath", "\"/x\""),
            ("redfish://admin:pw@h", "Userinfo", "\"redfish://***@h\""),
            ("admin@h", "Userinfo", "\"***@h\""),
            (
                "redfish://h/Systems/my system",
                "InvalidRedfishPath",
                "\"/Systems/my system\"",
            ),
            (
                "redfish://h/?privilegelevel=user",
                "UnknownQueryParameter",
                "\"privilegelevel\"",
            ),
            ("ipmi://h?timeout=5", "UnknownQueryParameter", "\"timeout\""),
            (
                "h?ciphersuite=3&ciphersuite=17",
                "DuplicateQueryParameter",
                "\"ciphersuite\"",
            ),
        ];
        for (input, variant, detail) in cases {
            let err = BmcAddress::parse(input).unwrap_err();
            let debug = format!("{err:?}");
            assert_eq!(
                debug.split([' ', '{']).next(),
                Some(*variant),
                "{input:?}: {debug}"
            );
            let msg = err.to_string();
            assert!(msg.contains(detail), "{input:?}: {msg}");
            if !matches!(
                err,
                BmcAddressError::Empty | BmcAddressError::Userinfo { .. }
            ) {
                assert!(
                    msg.contains(&format!("{:?}", input.trim())),
                    "{input:?}: {msg}"
                );
            }
        }
        assert_eq!(
            BmcAddress::parse("ipmi://h:0"),
            Err(BmcAddressError::InvalidPort {
                address: "ipmi://h:0".into(),
                port: "0".into(),
            })
        );
    }

    #[test]
    fn dns_name_limits() {
        let label63 = "a".repeat(63);
        assert!(BmcAddress::parse(&format!("ipmi://{label63}.example")).is_ok());
        let label64 = "a".repeat(64);
        assert!(matches!(
            BmcAddress::parse(&format!("ipmi://{label64}.example")),
            Err(BmcAddressError::InvalidHost { .. })
        ));
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        assert!(BmcAddress::parse(&long).is_ok());
        assert!(matches!(
            BmcAddress::parse(&format!("{long}e")),
            Err(BmcAddressError::InvalidHost { .. })
        ));
    }

    #[test]
    fn error_messages_never_contain_the_password() {
        for input in [
            "redfish://admin:s3cret@host",
            "redfish://admin:s3cret@host:badport/x",
            "nosuch://admin:s3cret@host",
            "admin:s3cret@host",
            "redfish://admin:s3/cret@host/redfish/v1/Systems/1",
            "redfish://admin:s3cret@@host",
        ] {
            let err = BmcAddress::parse(input).unwrap_err();
            assert!(
                matches!(err, BmcAddressError::Userinfo { .. }),
                "{input}: {err:?}"
            );
            let msg = err.to_string();
            assert!(!msg.contains("s3cret") && !msg.contains("s3/cret"), "{msg}");
            assert!(!format!("{err:?}").contains("s3"), "{err:?}");
            assert!(msg.contains("credentialsName"), "{msg}");
        }
    }

    #[test]
    fn unknown_scheme_lists_supported_ones() {
        let msg = BmcAddress::parse("amt://h").unwrap_err().to_string();
        for scheme in [
            "ipmi",
            "libvirt",
            "redfish-virtualmedia",
            "redfish-uefihttp",
            "idrac-redfish",
            "idrac-virtualmedia",
            "+https",
        ] {
            assert!(msg.contains(scheme), "{scheme} missing from {msg}");
        }
        let removed = BmcAddress::parse("ilo4://h").unwrap_err().to_string();
        assert!(
            removed.contains("removed") && removed.contains("redfish://"),
            "{removed}"
        );
    }

    fn any_driver() -> impl Strategy<Value = BmcDriver> {
        prop::sample::select(vec![
            BmcDriver::Ipmi,
            BmcDriver::Libvirt,
            BmcDriver::Redfish,
            BmcDriver::RedfishVirtualMedia,
            BmcDriver::RedfishUefiHttp,
            BmcDriver::IdracRedfish,
            BmcDriver::IdracVirtualMedia,
        ])
    }

    fn any_host() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
            any::<Ipv6Addr>().prop_map(|ip| ip.to_string()),
            "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z]{1,8}){0,3}",
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = BmcAddress::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_address_like_text(s in "[a-z+:/\\[\\]@?=&.0-9 -]{0,40}") {
            let _ = BmcAddress::parse(&s);
        }

        #[test]
        fn display_round_trips(
            driver in any_driver(),
            host in any_host(),
            port in 1u16..,
            http in any::<bool>(),
            path in "(/[A-Za-z0-9._-]{1,12}){0,4}",
            privilege in prop::sample::select(vec![IpmiPrivilege::Callback, IpmiPrivilege::User, IpmiPrivilege::Operator, IpmiPrivilege::Administrator]),
            cipher in prop::option::of(prop::sample::select(vec![3u8, 17])),
        ) {
            let is_ipmi = driver.protocol() == Protocol::Ipmi;
            let addr = BmcAddress {
                driver,
                host,
                port,
                http_scheme: (!is_ipmi).then_some(if http { HttpScheme::Http } else { HttpScheme::Https }),
                path: if driver == BmcDriver::Ipmi { String::new() } else { path },
                privilege_level: if is_ipmi { privilege } else { IpmiPrivilege::Administrator },
                cipher_suite: if is_ipmi { cipher } else { None },
            };
            let shown = addr.to_string();
            prop_assert_eq!(BmcAddress::parse(&shown), Ok(addr), "{}", shown);
        }
    }
}
