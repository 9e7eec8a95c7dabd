//! Parsing a DHCP request from the wire into the few facts a boot server decides on.
//! Our own strict TLV walk, so no input can make a decoder panic or misalign.

use std::net::Ipv4Addr;

use vmetal_api::mac::MacAddress;

use crate::error::BootError;

/// Offset of the options after the fixed BOOTP header and the magic cookie.
const OPTIONS_OFFSET: usize = 240;
/// RFC 2131 magic cookie.
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Largest datagram we look at; anything bigger is not a DHCP request we answer.
pub const MAX_REQUEST_LEN: usize = 1500;

/// DHCP message types (option 53) a boot server cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// 1: a client looks for servers.
    Discover,
    /// 3: a client asks for (or confirms) an offer.
    Request,
    /// 4: the client found the address in use.
    Decline,
    /// 7: the client gives its address back.
    Release,
    /// 8: a configured client asks for options only.
    Inform,
    /// Any other value (server-to-client types included).
    Other(u8),
}

impl MessageType {
    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Discover,
            3 => Self::Request,
            4 => Self::Decline,
            7 => Self::Release,
            8 => Self::Inform,
            other => Self::Other(other),
        }
    }

    /// A short label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Discover => "discover",
            Self::Request => "request",
            Self::Decline => "decline",
            Self::Release => "release",
            Self::Inform => "inform",
            Self::Other(_) => "other",
        }
    }
}

/// A parsed client request (BOOTREQUEST with a valid cookie and option 53).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Transaction id, echoed in the reply.
    pub xid: u32,
    /// Seconds since the client started.
    pub secs: u16,
    /// Flags; bit 15 is the broadcast flag.
    pub flags: u16,
    /// Client address (set when renewing or talking to port 4011).
    pub ciaddr: Ipv4Addr,
    /// Relay agent address; non-zero when a relay forwarded the request.
    pub giaddr: Ipv4Addr,
    /// Relay hop count.
    pub hops: u8,
    /// The client's hardware address.
    pub mac: MacAddress,
    /// Option 53.
    pub message_type: MessageType,
    /// Option 60 vendor class (`PXEClient:Arch:00007:UNDI:003016`).
    pub vendor_class: Option<Vec<u8>>,
    /// Option 93, first architecture in the list.
    pub arch: Option<u16>,
    /// Option 94 (type, major, minor).
    pub network_interface: Option<[u8; 3]>,
    /// Option 97 client machine id, mirrored back.
    pub machine_id: Option<Vec<u8>>,
    /// Option 77 user class, raw.
    pub user_class: Option<Vec<u8>>,
    /// Whether option 175 (iPXE encapsulated options) is present.
    pub has_ipxe_options: bool,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54: the server the client chose.
    pub server_id: Option<Ipv4Addr>,
    /// Option 82 relay agent information, echoed back to the relay (RFC 3046).
    pub relay_info: Option<Vec<u8>>,
}

/// What kind of network-boot client sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Option 60 starts with `PXEClient`.
    Pxe,
    /// Option 60 starts with `HTTPClient` (UEFI HTTP boot).
    Http,
    /// Not a network-boot client (an OS or the agent asking for an address).
    Plain,
}

impl Request {
    /// PXE, UEFI HTTP boot or a plain DHCP client, from option 60.
    pub fn client_kind(&self) -> ClientKind {
        match self.vendor_class.as_deref() {
            Some(v) if v.starts_with(b"HTTPClient") => ClientKind::Http,
            Some(v) if v.starts_with(b"PXEClient") => ClientKind::Pxe,
            _ => ClientKind::Plain,
        }
    }

    /// Whether the client is already iPXE: user class `iPXE` (raw, as iPXE sends it, or as an
    /// RFC 3004 length-prefixed list) or option 175 present.
    pub fn is_ipxe(&self) -> bool {
        self.has_ipxe_options
            || self
                .user_class
                .as_deref()
                .is_some_and(|u| u == b"iPXE" || user_class_items(u).any(|item| item == b"iPXE"))
    }

    /// Whether the broadcast flag is set.
    pub fn broadcast(&self) -> bool {
        self.flags & 0x8000 != 0
    }
}

/// Items of an RFC 3004 user class option; stops at the first inconsistent length.
fn user_class_items(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&len, tail) = rest.split_first()?;
        let item = tail.get(..usize::from(len))?;
        rest = &tail[item.len()..];
        Some(item)
    })
}

fn malformed(len: usize, reason: &'static str) -> BootError {
    BootError::MalformedDhcp { len, reason }
}

fn ipv4(data: &[u8]) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = data.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

/// Walks one option area, calling `f(code, data)` for each option; `Ok(true)` when an End
/// option was seen.
fn walk_options(
    area: &[u8],
    total: usize,
    f: &mut impl FnMut(u8, &[u8]) -> Result<(), BootError>,
) -> Result<bool, BootError> {
    let mut i = 0;
    while i < area.len() {
        let code = area[i];
        match code {
            0 => i += 1,
            255 => return Ok(true),
            _ => {
                let len = usize::from(
                    *area
                        .get(i + 1)
                        .ok_or_else(|| malformed(total, "option without a length byte"))?,
                );
                let data = area
                    .get(i + 2..i + 2 + len)
                    .ok_or_else(|| malformed(total, "option runs past the end of the packet"))?;
                f(code, data)?;
                i += 2 + len;
            }
        }
    }
    Ok(false)
}

/// Parses a datagram received on port 67 or 4011. Replies (BOOTREPLY), non-Ethernet
/// hardware, bad cookies, truncated or inconsistent options are errors; nothing panics.
pub fn parse(bytes: &[u8]) -> Result<Request, BootError> {
    let len = bytes.len();
    if len < OPTIONS_OFFSET {
        return Err(malformed(len, "shorter than the 240-byte BOOTP header"));
    }
    if len > MAX_REQUEST_LEN {
        return Err(malformed(len, "larger than 1500 bytes"));
    }
    if bytes[0] != 1 {
        return Err(malformed(len, "not a BOOTREQUEST (op != 1)"));
    }
    if bytes[1] != 1 || bytes[2] != 6 {
        return Err(malformed(
            len,
            "hardware type is not Ethernet (htype 1, hlen 6)",
        ));
    }
    if bytes[236..240] != MAGIC_COOKIE {
        return Err(malformed(len, "wrong DHCP magic cookie"));
    }
    let word =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let addr = |at: usize| Ipv4Addr::from(word(at));
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[28..34]);

    let mut message_type = None;
    let mut vendor_class = None;
    let mut arch = None;
    let mut network_interface = None;
    let mut machine_id = None;
    let mut user_class = None;
    let mut has_ipxe_options = false;
    let mut requested_ip = None;
    let mut server_id = None;
    let mut relay_info = None;
    let overload = std::cell::Cell::new(0u8);
    let mut handle = |code: u8, data: &[u8]| -> Result<(), BootError> {
        match code {
            53 => {
                let [t] = data else {
                    return Err(malformed(len, "option 53 is not one byte"));
                };
                message_type = Some(MessageType::from_code(*t));
            }
            52 => {
                let [o] = data else {
                    return Err(malformed(len, "option 52 is not one byte"));
                };
                if *o > 3 {
                    return Err(malformed(len, "option 52 overload value above 3"));
                }
                overload.set(*o);
            }
            60 => vendor_class = Some(data.to_vec()),
            93 => {
                if data.len() < 2 || !data.len().is_multiple_of(2) {
                    return Err(malformed(len, "option 93 is not a list of 16-bit values"));
                }
                arch = Some(u16::from_be_bytes([data[0], data[1]]));
            }
            94 => {
                let arr: [u8; 3] = data
                    .try_into()
                    .map_err(|_| malformed(len, "option 94 is not three bytes"))?;
                network_interface = Some(arr);
            }
            97 => machine_id = Some(data.to_vec()),
            77 => user_class = Some(data.to_vec()),
            175 => has_ipxe_options = true,
            50 => {
                requested_ip =
                    Some(ipv4(data).ok_or_else(|| malformed(len, "option 50 is not four bytes"))?)
            }
            54 => {
                server_id =
                    Some(ipv4(data).ok_or_else(|| malformed(len, "option 54 is not four bytes"))?)
            }
            82 => relay_info = Some(data.to_vec()),
            _ => {}
        }
        Ok(())
    };
    let ended = walk_options(&bytes[OPTIONS_OFFSET..], len, &mut handle)?;
    if !ended {
        return Err(malformed(len, "options have no End (255) marker"));
    }
    // RFC 2132 §9.3: with overload, the file (1) and/or sname (2) fields carry more options.
    if overload.get() & 1 != 0 {
        walk_options(&bytes[108..236], len, &mut handle)?;
    }
    if overload.get() & 2 != 0 {
        walk_options(&bytes[44..108], len, &mut handle)?;
    }
    let message_type = message_type.ok_or_else(|| malformed(len, "no option 53 (message type)"))?;
    Ok(Request {
        xid: word(4),
        secs: u16::from_be_bytes([bytes[8], bytes[9]]),
        flags: u16::from_be_bytes([bytes[10], bytes[11]]),
        ciaddr: addr(12),
        giaddr: addr(24),
        hops: bytes[3],
        mac: MacAddress::from_octets(mac),
        message_type,
        vendor_class,
        arch,
        network_interface,
        machine_id,
        user_class,
        has_ipxe_options,
        requested_ip,
        server_id,
        relay_info,
    })
}
