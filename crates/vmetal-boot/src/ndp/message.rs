//! Router Solicitation parsing and Router Advertisement building (RFC 4861 §4.1, §4.2), on
//! ICMPv6 messages as a raw ICMPv6 socket delivers them (no IPv6 header; the kernel fills in
//! the checksum of what is sent).

use vmetal_api::mac::MacAddress;

/// ICMPv6 type of a Router Solicitation.
pub const ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 type of a Router Advertisement.
pub const ROUTER_ADVERTISEMENT: u8 = 134;
/// Option type of a source link-layer address.
const SOURCE_LINK_LAYER_ADDRESS: u8 = 1;

/// Why a message is not a usable Router Solicitation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NdpError {
    /// Shorter than its fixed part.
    #[error("ICMPv6 message of {0} bytes is too short for a router solicitation")]
    TooShort(usize),
    /// Another ICMPv6 message (the socket sees them all).
    #[error("ICMPv6 type {0} code {1} is not a router solicitation")]
    NotSolicitation(u8, u8),
    /// An option with length 0 or running past the end (RFC 4861 §4.6: discard).
    #[error("router solicitation with a malformed option at byte {0}")]
    BadOption(usize),
}

/// What a Router Solicitation says about its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solicitation {
    /// The sender's MAC, from its source link-layer address option (absent when the sender
    /// has no address yet).
    pub source_mac: Option<MacAddress>,
}

/// Parse an ICMPv6 message as a Router Solicitation.
pub fn parse_solicitation(msg: &[u8]) -> Result<Solicitation, NdpError> {
    if msg.len() < 2 {
        return Err(NdpError::TooShort(msg.len()));
    }
    if msg[0] != ROUTER_SOLICITATION || msg[1] != 0 {
        return Err(NdpError::NotSolicitation(msg[0], msg[1]));
    }
    // Type, code, checksum, 4 reserved bytes, then options.
    if msg.len() < 8 {
        return Err(NdpError::TooShort(msg.len()));
    }
    let mut source_mac = None;
    let mut at = 8;
    while at < msg.len() {
        let (Some(&kind), Some(&units)) = (msg.get(at), msg.get(at + 1)) else {
            return Err(NdpError::BadOption(at));
        };
        let len = usize::from(units) * 8;
        let Some(body) = msg.get(at + 2..at + len).filter(|_| len > 0) else {
            return Err(NdpError::BadOption(at));
        };
        if kind == SOURCE_LINK_LAYER_ADDRESS
            && let Some(mac) = body.get(..6)
        {
            let mut octets = [0u8; 6];
            octets.copy_from_slice(mac);
            source_mac = Some(MacAddress::from_octets(octets));
        }
        at += len;
    }
    Ok(Solicitation { source_mac })
}

/// Whether an ICMPv6 message is a Router Advertisement (another router's, for the server).
pub fn is_advertisement(msg: &[u8]) -> bool {
    msg.len() >= 16 && msg[0] == ROUTER_ADVERTISEMENT && msg[1] == 0
}

/// A Router Advertisement that announces nothing: not a default router (lifetime 0), no
/// prefixes, no managed/other-configuration flags, hop limit and timers unspecified. A host
/// that gets it has its answer and keeps its configuration.
pub fn empty_advertisement() -> Vec<u8> {
    vec![
        ROUTER_ADVERTISEMENT,
        0, // code
        0,
        0, // checksum, filled in by the kernel
        0, // current hop limit: unspecified
        0, // M and O flags clear
        0,
        0, // router lifetime 0: not a default router
        0,
        0,
        0,
        0, // reachable time: unspecified
        0,
        0,
        0,
        0, // retransmission timer: unspecified
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A solicitation as iPXE sends it: header plus its source link-layer address.
    const IPXE_RS: [u8; 16] = [
        133, 0, 0x12, 0x34, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0x00, 0x10, 0x00, 0x01,
    ];

    #[test]
    fn a_solicitation_names_its_sender() {
        let rs = parse_solicitation(&IPXE_RS).unwrap();
        assert_eq!(
            rs.source_mac,
            Some(MacAddress::from_octets([0x52, 0x54, 0, 0x10, 0, 1]))
        );
        // From an unspecified address: no option.
        let rs = parse_solicitation(&IPXE_RS[..8]).unwrap();
        assert_eq!(rs.source_mac, None);
        // Unknown options are skipped.
        let mut with_other = IPXE_RS[..8].to_vec();
        with_other.extend_from_slice(&[14, 1, 0, 0, 0, 0, 0, 0]);
        with_other.extend_from_slice(&IPXE_RS[8..]);
        assert!(
            parse_solicitation(&with_other)
                .unwrap()
                .source_mac
                .is_some()
        );
    }

    #[test]
    fn other_and_malformed_messages_are_refused() {
        let mut ns = IPXE_RS;
        ns[0] = 135;
        assert_eq!(
            parse_solicitation(&ns),
            Err(NdpError::NotSolicitation(135, 0))
        );
        let mut coded = IPXE_RS;
        coded[1] = 1;
        assert!(parse_solicitation(&coded).is_err());
        assert_eq!(
            parse_solicitation(&IPXE_RS[..5]),
            Err(NdpError::TooShort(5))
        );
        assert_eq!(parse_solicitation(&[]), Err(NdpError::TooShort(0)));
        let mut zero_len = IPXE_RS;
        zero_len[9] = 0;
        assert_eq!(parse_solicitation(&zero_len), Err(NdpError::BadOption(8)));
        let mut too_long = IPXE_RS;
        too_long[9] = 2;
        assert_eq!(parse_solicitation(&too_long), Err(NdpError::BadOption(8)));
        assert_eq!(
            parse_solicitation(&IPXE_RS[..9]),
            Err(NdpError::BadOption(8))
        );
    }

    #[test]
    fn the_advertisement_announces_nothing() {
        let ra = empty_advertisement();
        assert_eq!(ra.len(), 16);
        assert_eq!((ra[0], ra[1]), (ROUTER_ADVERTISEMENT, 0));
        assert_eq!(ra[5], 0, "no managed or other-config flag");
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime 0");
        assert!(ra[4..].iter().all(|b| *b == 0));
        assert!(is_advertisement(&ra));
        assert!(!is_advertisement(&ra[..15]));
        assert!(!is_advertisement(&IPXE_RS));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        for len in 0..40 {
            for seed in 0..64u8 {
                let msg: Vec<u8> = (0..len)
                    .map(|i| {
                        if i == 0 {
                            133
                        } else if i == 1 {
                            0
                        } else {
                            seed.wrapping_mul(i as u8 + 7)
                        }
                    })
                    .collect();
                let _ = parse_solicitation(&msg);
            }
        }
    }
}
