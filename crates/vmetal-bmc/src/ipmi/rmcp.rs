//! RMCP and IPMI session framing: the RMCP header, the IPMI v1.5 (authentication type none) and
//! v2.0 RMCP+ session headers. Sealing and opening authenticated payloads lives in `session`.

use super::DecodeError;
use super::wire::Reader;

/// RMCP version 1.0, reserved, sequence 0xFF (no RMCP ACK), class IPMI.
pub const RMCP_HEADER: [u8; 4] = [0x06, 0x00, 0xFF, 0x07];
/// Session authentication type "none" (IPMI v1.5 framing).
pub const AUTH_TYPE_NONE: u8 = 0x00;
/// Session authentication type "RMCP+" (IPMI v2.0 framing).
pub const AUTH_TYPE_RMCP_PLUS: u8 = 0x06;
/// Length of the v2.0 session header, from AuthType through Payload Length.
pub const V20_HEADER_LEN: usize = 12;
/// Next Header value in the session trailer.
pub const NEXT_HEADER: u8 = 0x07;

const ENCRYPTED: u8 = 0x80;
const AUTHENTICATED: u8 = 0x40;

/// RMCP+ payload types vmetal speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadType {
    /// An IPMI message.
    Ipmi,
    /// RMCP+ Open Session Request.
    OpenSessionRequest,
    /// RMCP+ Open Session Response.
    OpenSessionResponse,
    /// RAKP Message 1.
    Rakp1,
    /// RAKP Message 2.
    Rakp2,
    /// RAKP Message 3.
    Rakp3,
    /// RAKP Message 4.
    Rakp4,
}

impl PayloadType {
    /// The 6-bit payload type number.
    pub fn code(self) -> u8 {
        match self {
            Self::Ipmi => 0x00,
            Self::OpenSessionRequest => 0x10,
            Self::OpenSessionResponse => 0x11,
            Self::Rakp1 => 0x12,
            Self::Rakp2 => 0x13,
            Self::Rakp3 => 0x14,
            Self::Rakp4 => 0x15,
        }
    }

    /// The payload type with this number, if supported.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x00 => Self::Ipmi,
            0x10 => Self::OpenSessionRequest,
            0x11 => Self::OpenSessionResponse,
            0x12 => Self::Rakp1,
            0x13 => Self::Rakp2,
            0x14 => Self::Rakp3,
            0x15 => Self::Rakp4,
            _ => return None,
        })
    }
}

/// One decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// IPMI v1.5 framing with authentication type none: only used before a session, for Get
    /// Channel Authentication Capabilities.
    V15 {
        /// Session ID (0 outside a session).
        session_id: u32,
        /// Session sequence number.
        sequence: u32,
        /// The IPMI message.
        message: &'a [u8],
    },
    /// IPMI v2.0 / RMCP+ framing.
    V20(V20Packet<'a>),
}

/// An RMCP+ packet whose payload may still be encrypted and whose AuthCode is not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V20Packet<'a> {
    /// What the payload is.
    pub payload_type: PayloadType,
    /// The payload is encrypted.
    pub encrypted: bool,
    /// The packet carries a session trailer with an AuthCode.
    pub authenticated: bool,
    /// The receiver's session ID (0 before a session).
    pub session_id: u32,
    /// Session sequence number (0 before a session).
    pub sequence: u32,
    /// The payload as on the wire (IV and ciphertext when encrypted).
    pub payload: &'a [u8],
    /// Everything from AuthType to the end of the datagram: what the AuthCode covers, plus the
    /// AuthCode itself.
    pub session_bytes: &'a [u8],
}

/// Decode the RMCP and session headers of a datagram.
pub fn parse(datagram: &[u8]) -> Result<Packet<'_>, DecodeError> {
    let mut r = Reader::new("RMCP packet", datagram);
    let rmcp: [u8; 4] = r.array()?;
    if rmcp[0] != RMCP_HEADER[0] {
        return Err(DecodeError::Unexpected {
            what: "RMCP version",
            value: rmcp[0].into(),
        });
    }
    if rmcp[3] != RMCP_HEADER[3] {
        return Err(DecodeError::Unexpected {
            what: "RMCP message class",
            value: rmcp[3].into(),
        });
    }
    let session_bytes = &datagram[RMCP_HEADER.len()..];
    match r.u8()? {
        AUTH_TYPE_RMCP_PLUS => {
            let type_byte = r.u8()?;
            let code = type_byte & 0x3F;
            let payload_type = PayloadType::from_code(code).ok_or(DecodeError::Unexpected {
                what: "RMCP+ payload type",
                value: code.into(),
            })?;
            let session_id = r.u32_le()?;
            let sequence = r.u32_le()?;
            let len = r.u16_le()?;
            let payload = r.bytes(usize::from(len))?;
            Ok(Packet::V20(V20Packet {
                payload_type,
                encrypted: type_byte & ENCRYPTED != 0,
                authenticated: type_byte & AUTHENTICATED != 0,
                session_id,
                sequence,
                payload,
                session_bytes,
            }))
        }
        AUTH_TYPE_NONE => {
            let sequence = r.u32_le()?;
            let session_id = r.u32_le()?;
            let len = r.u8()?;
            let message = r.bytes(usize::from(len))?;
            Ok(Packet::V15 {
                session_id,
                sequence,
                message,
            })
        }
        other => Err(DecodeError::Unexpected {
            what: "session authentication type",
            value: other.into(),
        }),
    }
}

/// An IPMI v1.5 datagram outside a session (authentication type none, session 0).
pub fn encode_v15(message: &[u8]) -> Vec<u8> {
    let len = message.len().min(usize::from(u8::MAX));
    let mut out = Vec::with_capacity(RMCP_HEADER.len() + 10 + len);
    out.extend_from_slice(&RMCP_HEADER);
    out.push(AUTH_TYPE_NONE);
    out.extend_from_slice(&0u32.to_le_bytes()); // sequence
    out.extend_from_slice(&0u32.to_le_bytes()); // session ID
    out.push(len as u8);
    out.extend_from_slice(&message[..len]);
    out
}

/// An unauthenticated, unencrypted RMCP+ datagram outside a session (session ID and sequence 0):
/// Open Session, RAKP and sessionless IPMI messages.
pub fn encode_v20_plain(payload_type: PayloadType, payload: &[u8]) -> Vec<u8> {
    encode_v20_header(payload_type.code(), 0, 0, payload)
}

/// RMCP header, v2.0 session header with the given type byte (flags included) and payload.
pub(crate) fn encode_v20_header(
    type_byte: u8,
    session_id: u32,
    sequence: u32,
    payload: &[u8],
) -> Vec<u8> {
    let len = payload.len().min(usize::from(u16::MAX));
    let mut out = Vec::with_capacity(RMCP_HEADER.len() + V20_HEADER_LEN + len + 32);
    out.extend_from_slice(&RMCP_HEADER);
    out.push(AUTH_TYPE_RMCP_PLUS);
    out.push(type_byte);
    out.extend_from_slice(&session_id.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&payload[..len]);
    out
}

/// The type byte of a sealed (encrypted and authenticated) payload.
pub(crate) fn sealed_type_byte(payload_type: PayloadType) -> u8 {
    payload_type.code() | ENCRYPTED | AUTHENTICATED
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn v15_round_trip() {
        let bytes = encode_v15(&[0x20, 0x18, 0xc8, 0x81, 0x00, 0x38, 0x8e, 0x04, 0xb5]);
        assert_eq!(
            bytes[..14],
            [0x06, 0x00, 0xff, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x09]
        );
        match parse(&bytes) {
            Ok(Packet::V15 { message, .. }) => assert_eq!(message.len(), 9),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v20_plain_round_trip() {
        let bytes = encode_v20_plain(PayloadType::OpenSessionRequest, &[1, 2, 3]);
        let Ok(Packet::V20(p)) = parse(&bytes) else {
            panic!("not v2.0")
        };
        assert_eq!(p.payload_type, PayloadType::OpenSessionRequest);
        assert!(!p.encrypted && !p.authenticated);
        assert_eq!(p.payload, &[1, 2, 3]);
    }

    #[test]
    fn unknown_framing_is_an_error() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0x06, 0x00, 0xff, 0x06, 0x80]).is_err()); // ASF class
        assert!(parse(&[0x06, 0x00, 0xff, 0x07, 0x02]).is_err()); // MD5 auth type
        assert!(parse(&[0x06, 0x00, 0xff, 0x07, 0x06, 0x02]).is_err()); // OEM payload
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_plausible_headers(
            auth in prop_oneof![Just(0u8), Just(6u8)],
            tail in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let mut bytes = RMCP_HEADER.to_vec();
            bytes.push(auth);
            bytes.extend(tail);
            let _ = parse(&bytes);
        }
    }
}
