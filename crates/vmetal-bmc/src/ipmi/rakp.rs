//! RMCP+ session establishment for both sides: Open Session Request/Response, RAKP Messages 1-4,
//! and the RAKP-HMAC computations (RAKP 2 and 3 auth codes, SIK, RAKP 4 integrity check value).

use zeroize::Zeroizing;

use super::DecodeError;
use super::crypto::CipherSuite;
use super::wire::Reader;

/// Privilege level CALLBACK.
pub const PRIVILEGE_CALLBACK: u8 = 1;
/// Privilege level USER.
pub const PRIVILEGE_USER: u8 = 2;
/// Privilege level OPERATOR.
pub const PRIVILEGE_OPERATOR: u8 = 3;
/// Privilege level ADMINISTRATOR.
pub const PRIVILEGE_ADMINISTRATOR: u8 = 4;
/// RAKP 1 role bit: look the user up by name only (not name and privilege).
pub const NAME_ONLY_LOOKUP: u8 = 0x10;
/// Longest IPMI user name.
pub const MAX_USERNAME_LEN: usize = 16;
/// Longest IPMI 2.0 password.
pub const MAX_PASSWORD_LEN: usize = 20;

/// RMCP+ status codes carried by Open Session Response and RAKP 2-4.
pub mod status {
    /// No errors.
    pub const NO_ERRORS: u8 = 0x00;
    /// Insufficient resources to create a session.
    pub const INSUFFICIENT_RESOURCES: u8 = 0x01;
    /// Invalid session ID.
    pub const INVALID_SESSION_ID: u8 = 0x02;
    /// Invalid authentication algorithm.
    pub const INVALID_AUTHENTICATION_ALGORITHM: u8 = 0x04;
    /// Invalid integrity algorithm.
    pub const INVALID_INTEGRITY_ALGORITHM: u8 = 0x05;
    /// Invalid role.
    pub const INVALID_ROLE: u8 = 0x09;
    /// Unauthorized role or privilege level requested.
    pub const UNAUTHORIZED_ROLE: u8 = 0x0A;
    /// Insufficient resources to create a session at the requested role.
    pub const INSUFFICIENT_RESOURCES_FOR_ROLE: u8 = 0x0B;
    /// Invalid name length.
    pub const INVALID_NAME_LENGTH: u8 = 0x0C;
    /// Unauthorized name.
    pub const UNAUTHORIZED_NAME: u8 = 0x0D;
    /// Unauthorized GUID.
    pub const UNAUTHORIZED_GUID: u8 = 0x0E;
    /// Invalid integrity check value.
    pub const INVALID_INTEGRITY_CHECK_VALUE: u8 = 0x0F;
    /// Invalid confidentiality algorithm.
    pub const INVALID_CONFIDENTIALITY_ALGORITHM: u8 = 0x10;
    /// No cipher suite match with proposed security algorithms.
    pub const NO_CIPHER_SUITE_MATCH: u8 = 0x11;

    /// What a status code means, for error messages.
    pub fn describe(code: u8) -> &'static str {
        match code {
            NO_ERRORS => "no errors",
            INSUFFICIENT_RESOURCES => "insufficient resources to create a session",
            INVALID_SESSION_ID => "invalid session ID",
            0x03 => "invalid payload type",
            INVALID_AUTHENTICATION_ALGORITHM => "invalid authentication algorithm",
            INVALID_INTEGRITY_ALGORITHM => "invalid integrity algorithm",
            0x06 => "no matching authentication payload",
            0x07 => "no matching integrity payload",
            0x08 => "inactive session ID",
            INVALID_ROLE => "invalid role",
            UNAUTHORIZED_ROLE => "unauthorized role or privilege level requested",
            INSUFFICIENT_RESOURCES_FOR_ROLE => {
                "insufficient resources to create a session at the requested role"
            }
            INVALID_NAME_LENGTH => "invalid name length",
            UNAUTHORIZED_NAME => "unauthorized name",
            UNAUTHORIZED_GUID => "unauthorized GUID",
            INVALID_INTEGRITY_CHECK_VALUE => "invalid integrity check value",
            INVALID_CONFIDENTIALITY_ALGORITHM => "invalid confidentiality algorithm",
            NO_CIPHER_SUITE_MATCH => "no cipher suite match with proposed security algorithms",
            0x12 => "illegal or unrecognized parameter",
            _ => "unknown RMCP+ status code",
        }
    }
}

/// Open Session Request (payload type 0x10), from the remote console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSessionRequest {
    /// Message tag, echoed in the response.
    pub tag: u8,
    /// Requested maximum privilege level (0: the highest the BMC allows).
    pub max_privilege: u8,
    /// The remote console's session ID.
    pub console_session_id: u32,
    /// Authentication algorithm.
    pub auth_algorithm: u8,
    /// Integrity algorithm.
    pub integrity_algorithm: u8,
    /// Confidentiality algorithm.
    pub confidentiality_algorithm: u8,
}

/// Open Session Response (payload type 0x11), from the BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSessionResponse {
    /// The request's tag.
    pub tag: u8,
    /// RMCP+ status code; on error the fields below are zero.
    pub status: u8,
    /// The maximum privilege level granted.
    pub max_privilege: u8,
    /// The remote console's session ID.
    pub console_session_id: u32,
    /// The session ID the BMC assigned.
    pub bmc_session_id: u32,
    /// Authentication algorithm.
    pub auth_algorithm: u8,
    /// Integrity algorithm.
    pub integrity_algorithm: u8,
    /// Confidentiality algorithm.
    pub confidentiality_algorithm: u8,
}

/// RAKP Message 1 (payload type 0x12), from the remote console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp1 {
    /// Message tag.
    pub tag: u8,
    /// The BMC's session ID.
    pub bmc_session_id: u32,
    /// Remote console random number Rm.
    pub console_random: [u8; 16],
    /// Requested maximum privilege (bits 3:0) and [`NAME_ONLY_LOOKUP`].
    pub role: u8,
    /// User name (up to 16 bytes).
    pub username: Vec<u8>,
}

/// RAKP Message 2 (payload type 0x13), from the BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp2 {
    /// Message tag.
    pub tag: u8,
    /// RMCP+ status code; on error the fields below are empty.
    pub status: u8,
    /// The remote console's session ID.
    pub console_session_id: u32,
    /// BMC random number Rc.
    pub bmc_random: [u8; 16],
    /// BMC GUID.
    pub bmc_guid: [u8; 16],
    /// Key exchange authentication code (full HMAC).
    pub auth_code: Vec<u8>,
}

/// RAKP Message 3 (payload type 0x14), from the remote console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp3 {
    /// Message tag.
    pub tag: u8,
    /// RMCP+ status code: non-zero when the console rejects RAKP 2.
    pub status: u8,
    /// The BMC's session ID.
    pub bmc_session_id: u32,
    /// Key exchange authentication code (full HMAC).
    pub auth_code: Vec<u8>,
}

/// RAKP Message 4 (payload type 0x15), from the BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp4 {
    /// Message tag.
    pub tag: u8,
    /// RMCP+ status code.
    pub status: u8,
    /// The remote console's session ID.
    pub console_session_id: u32,
    /// Integrity check value (truncated HMAC).
    pub integrity_check_value: Vec<u8>,
}

fn algorithm_payload(out: &mut Vec<u8>, kind: u8, algorithm: u8) {
    out.extend_from_slice(&[kind, 0, 0, 8, algorithm, 0, 0, 0]);
}

fn read_algorithm_payload(r: &mut Reader<'_>, kind: u8) -> Result<u8, DecodeError> {
    let [k, _, _, len, algorithm, _, _, _] = r.array()?;
    if k != kind || len != 8 {
        return Err(DecodeError::Unexpected {
            what: "algorithm payload header",
            value: u32::from(k) << 8 | u32::from(len),
        });
    }
    Ok(algorithm)
}

impl OpenSessionRequest {
    /// Wire bytes (32).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.tag, self.max_privilege, 0, 0];
        out.extend_from_slice(&self.console_session_id.to_le_bytes());
        algorithm_payload(&mut out, 0, self.auth_algorithm);
        algorithm_payload(&mut out, 1, self.integrity_algorithm);
        algorithm_payload(&mut out, 2, self.confidentiality_algorithm);
        out
    }

    /// Decode.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("Open Session Request", bytes);
        let tag = r.u8()?;
        let max_privilege = r.u8()? & 0x0F;
        r.bytes(2)?;
        let console_session_id = r.u32_le()?;
        Ok(Self {
            tag,
            max_privilege,
            console_session_id,
            auth_algorithm: read_algorithm_payload(&mut r, 0)? & 0x3F,
            integrity_algorithm: read_algorithm_payload(&mut r, 1)? & 0x3F,
            confidentiality_algorithm: read_algorithm_payload(&mut r, 2)? & 0x3F,
        })
    }
}

impl OpenSessionResponse {
    /// An error response: only the tag, status and console session ID.
    pub fn error(tag: u8, status: u8, console_session_id: u32) -> Self {
        Self {
            tag,
            status,
            max_privilege: 0,
            console_session_id,
            bmc_session_id: 0,
            auth_algorithm: 0,
            integrity_algorithm: 0,
            confidentiality_algorithm: 0,
        }
    }

    /// Wire bytes (36, or 8 for an error).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.tag, self.status, self.max_privilege, 0];
        out.extend_from_slice(&self.console_session_id.to_le_bytes());
        if self.status != status::NO_ERRORS {
            return out;
        }
        out.extend_from_slice(&self.bmc_session_id.to_le_bytes());
        algorithm_payload(&mut out, 0, self.auth_algorithm);
        algorithm_payload(&mut out, 1, self.integrity_algorithm);
        algorithm_payload(&mut out, 2, self.confidentiality_algorithm);
        out
    }

    /// Decode; an error status needs only the first 8 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("Open Session Response", bytes);
        let tag = r.u8()?;
        let status = r.u8()?;
        let max_privilege = r.u8()? & 0x0F;
        r.u8()?;
        let console_session_id = r.u32_le()?;
        if status != status::NO_ERRORS {
            return Ok(Self::error(tag, status, console_session_id));
        }
        Ok(Self {
            tag,
            status,
            max_privilege,
            console_session_id,
            bmc_session_id: r.u32_le()?,
            auth_algorithm: read_algorithm_payload(&mut r, 0)? & 0x3F,
            integrity_algorithm: read_algorithm_payload(&mut r, 1)? & 0x3F,
            confidentiality_algorithm: read_algorithm_payload(&mut r, 2)? & 0x3F,
        })
    }
}

impl Rakp1 {
    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let name = &self.username[..self.username.len().min(MAX_USERNAME_LEN)];
        let mut out = vec![self.tag, 0, 0, 0];
        out.extend_from_slice(&self.bmc_session_id.to_le_bytes());
        out.extend_from_slice(&self.console_random);
        out.extend_from_slice(&[self.role, 0, 0, name.len() as u8]);
        out.extend_from_slice(name);
        out
    }

    /// Decode.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("RAKP Message 1", bytes);
        let tag = r.u8()?;
        r.bytes(3)?;
        let bmc_session_id = r.u32_le()?;
        let console_random = r.array()?;
        let role = r.u8()?;
        r.bytes(2)?;
        let len = r.u8()?;
        if usize::from(len) > MAX_USERNAME_LEN {
            return Err(DecodeError::Unexpected {
                what: "user name length",
                value: len.into(),
            });
        }
        Ok(Self {
            tag,
            bmc_session_id,
            console_random,
            role,
            username: r.bytes(usize::from(len))?.to_vec(),
        })
    }
}

impl Rakp2 {
    /// An error response: only the tag, status and console session ID.
    pub fn error(tag: u8, status: u8, console_session_id: u32) -> Self {
        Self {
            tag,
            status,
            console_session_id,
            bmc_random: [0; 16],
            bmc_guid: [0; 16],
            auth_code: Vec::new(),
        }
    }

    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.tag, self.status, 0, 0];
        out.extend_from_slice(&self.console_session_id.to_le_bytes());
        if self.status != status::NO_ERRORS {
            return out;
        }
        out.extend_from_slice(&self.bmc_random);
        out.extend_from_slice(&self.bmc_guid);
        out.extend_from_slice(&self.auth_code);
        out
    }

    /// Decode; the auth code is whatever follows the GUID.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("RAKP Message 2", bytes);
        let tag = r.u8()?;
        let status = r.u8()?;
        r.bytes(2)?;
        let console_session_id = r.u32_le()?;
        if status != status::NO_ERRORS {
            return Ok(Self::error(tag, status, console_session_id));
        }
        Ok(Self {
            tag,
            status,
            console_session_id,
            bmc_random: r.array()?,
            bmc_guid: r.array()?,
            auth_code: r.rest().to_vec(),
        })
    }
}

impl Rakp3 {
    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.tag, self.status, 0, 0];
        out.extend_from_slice(&self.bmc_session_id.to_le_bytes());
        out.extend_from_slice(&self.auth_code);
        out
    }

    /// Decode.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("RAKP Message 3", bytes);
        let tag = r.u8()?;
        let status = r.u8()?;
        r.bytes(2)?;
        Ok(Self {
            tag,
            status,
            bmc_session_id: r.u32_le()?,
            auth_code: r.rest().to_vec(),
        })
    }
}

impl Rakp4 {
    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.tag, self.status, 0, 0];
        out.extend_from_slice(&self.console_session_id.to_le_bytes());
        if self.status == status::NO_ERRORS {
            out.extend_from_slice(&self.integrity_check_value);
        }
        out
    }

    /// Decode.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("RAKP Message 4", bytes);
        let tag = r.u8()?;
        let status = r.u8()?;
        r.bytes(2)?;
        Ok(Self {
            tag,
            status,
            console_session_id: r.u32_le()?,
            integrity_check_value: r.rest().to_vec(),
        })
    }
}

/// Everything both sides know after RAKP 2, from which the RAKP HMACs and the SIK follow.
/// Session IDs are hashed in their little-endian wire form, as ipmitool and BMCs do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The negotiated suite (SHA1 or SHA256 HMACs).
    pub suite: CipherSuite,
    /// SIDm.
    pub console_session_id: u32,
    /// SIDc.
    pub bmc_session_id: u32,
    /// Rm.
    pub console_random: [u8; 16],
    /// Rc.
    pub bmc_random: [u8; 16],
    /// GUIDc.
    pub bmc_guid: [u8; 16],
    /// ROLEm: the whole RAKP 1 role byte, lookup bit included.
    pub role: u8,
    /// UNAMEm.
    pub username: Vec<u8>,
}

impl Transcript {
    fn name_len(&self) -> [u8; 1] {
        [self.username.len().min(MAX_USERNAME_LEN) as u8]
    }

    /// RAKP 2 key exchange auth code: HMAC_Kuid(SIDm, SIDc, Rm, Rc, GUIDc, ROLEm, ULENGTHm, UNAMEm).
    pub fn rakp2_auth_code(&self, password: &[u8]) -> Vec<u8> {
        self.suite.hmac(
            password,
            &[
                &self.console_session_id.to_le_bytes(),
                &self.bmc_session_id.to_le_bytes(),
                &self.console_random,
                &self.bmc_random,
                &self.bmc_guid,
                &[self.role],
                &self.name_len(),
                &self.username,
            ],
        )
    }

    /// RAKP 3 key exchange auth code: HMAC_Kuid(Rc, SIDm, ROLEm, ULENGTHm, UNAMEm).
    pub fn rakp3_auth_code(&self, password: &[u8]) -> Vec<u8> {
        self.suite.hmac(
            password,
            &[
                &self.bmc_random,
                &self.console_session_id.to_le_bytes(),
                &[self.role],
                &self.name_len(),
                &self.username,
            ],
        )
    }

    /// Session Integrity Key: HMAC_Kg(Rm, Rc, ROLEm, ULENGTHm, UNAMEm), with Kg the password
    /// when the BMC has no BMC key.
    pub fn sik(&self, kg: &[u8]) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.suite.hmac(
            kg,
            &[
                &self.console_random,
                &self.bmc_random,
                &[self.role],
                &self.name_len(),
                &self.username,
            ],
        ))
    }

    /// RAKP 4 integrity check value: HMAC_SIK(Rm, SIDc, GUIDc), truncated to 12 (SHA1-96) or
    /// 16 (SHA256-128) bytes.
    pub fn rakp4_icv(&self, sik: &[u8]) -> Vec<u8> {
        let mut icv = self.suite.hmac(
            sik,
            &[
                &self.console_random,
                &self.bmc_session_id.to_le_bytes(),
                &self.bmc_guid,
            ],
        );
        icv.truncate(self.suite.auth_code_len());
        icv
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ipmi::crypto::tests::hex;
    use crate::ipmi::message::Request;
    use crate::ipmi::rmcp::{Packet, PayloadType, parse};
    use crate::ipmi::session::SessionKeys;
    use proptest::prelude::*;

    /// Fixed inputs for the hand-derived exchanges: SIDm 0xA0A2A3A4 (ipmitool's console ID),
    /// SIDc 0x12345678, Rm = 00..0f, Rc = 10..1f, GUIDc = 20..2f, role 0x14 (administrator,
    /// name-only lookup), user "admin", password "password".
    fn transcript(suite: CipherSuite) -> Transcript {
        Transcript {
            suite,
            console_session_id: 0xA0A2_A3A4,
            bmc_session_id: 0x1234_5678,
            console_random: core::array::from_fn(|i| i as u8),
            bmc_random: core::array::from_fn(|i| 0x10 + i as u8),
            bmc_guid: core::array::from_fn(|i| 0x20 + i as u8),
            role: PRIVILEGE_ADMINISTRATOR | NAME_ONLY_LOOKUP,
            username: b"admin".to_vec(),
        }
    }

    /// Expected values computed independently with Python's `hmac`/`hashlib` and
    /// `cryptography` from the formulas of IPMI 2.0 section 13.31-13.32:
    /// ```text
    /// H = lambda k, m: hmac.new(k, m, sha1 | sha256).digest()
    /// rakp2 = H(pw, sidm + sidc + rm + rc + guid + role + ulen + user)
    /// rakp3 = H(pw, rc + sidm + role + ulen + user)
    /// sik   = H(pw, rm + rc + role + ulen + user)
    /// k1, k2 = H(sik, b"\x01" * 20), H(sik, b"\x02" * 20)
    /// icv   = H(sik, rm + sidc + guid)[:12 | :16]
    /// packet: Get Device ID (20 18 c8 81 04 01 7a) sealed for session 0x12345678, sequence 3,
    ///         IV a0..af: AES-CBC-128(K2[:16]) with pad 01..08 08, integrity pad ff ff 02 07,
    ///         AuthCode H(K1, AuthType..NextHeader) truncated.
    /// ```
    struct Expected {
        rakp2: &'static str,
        rakp3: &'static str,
        sik: &'static str,
        k1: &'static str,
        k2: &'static str,
        icv: &'static str,
        packet: &'static str,
    }

    const SUITE3: Expected = Expected {
        rakp2: "9508518bfb43673d0eb84d935ac25439b06a7ab8",
        rakp3: "4ab420258775814f120682c8ab9275c29997effd",
        sik: "122c77c4b11ccd93251cbae6c34a9cb6310da154",
        k1: "e4472be78f9a81fa68297aab696a7be8c97fc9f8",
        k2: "2b6552012a2517cb3b5713901d757a6efc7d8301",
        icv: "5aca955789109a61974ad7a1",
        packet: "0600ff0706c078563412030000002000a0a1a2a3a4a5a6a7a8a9aaabacadaeaf0f158b160569a9eb362e3706adde6379ffff0207c916a99d4e95afd9f4c65bc9",
    };

    const SUITE17: Expected = Expected {
        rakp2: "79b07cf99f6fd074691206ca7d16d7dd4f3839265fb50a773376369454929e88",
        rakp3: "72a845290e0504673b2177d93a8dd844954778f3fe6b0476b2e7055a21663586",
        sik: "e5935f7199865ad961063477b0662684e2ce9b1da8f2b8d41c5ce127d37e9bcf",
        k1: "dc4fe73d075306f6897115dd63257385e845c10404fa1d73991790c6a101bec2",
        k2: "2a4f969ea6dfa83066f36674fdc2fea289fa1a21da90303e9b5269b54ec5adb5",
        icv: "f9794eeba255f475851d0dc1957efda9",
        packet: "0600ff0706c078563412030000002000a0a1a2a3a4a5a6a7a8a9aaabacadaeafbb73444982fcc94a987e89d7e324adedffff02074a297a083f5e7c74e814b8baa6de20ad",
    };

    /// Runs the whole exchange through the codec, console and BMC side by side.
    fn full_exchange(suite: CipherSuite, expected: &Expected) {
        let t = transcript(suite);
        let (auth, integrity, confidentiality) = suite.algorithms();
        let password = b"password";

        // Open Session Request/Response.
        let open = OpenSessionRequest {
            tag: 0,
            max_privilege: 0,
            console_session_id: t.console_session_id,
            auth_algorithm: auth,
            integrity_algorithm: integrity,
            confidentiality_algorithm: confidentiality,
        };
        assert_eq!(open.encode().len(), 32);
        let open = OpenSessionRequest::parse(&open.encode()).expect("open request");
        let opened = OpenSessionResponse {
            tag: open.tag,
            status: status::NO_ERRORS,
            max_privilege: PRIVILEGE_ADMINISTRATOR,
            console_session_id: open.console_session_id,
            bmc_session_id: t.bmc_session_id,
            auth_algorithm: open.auth_algorithm,
            integrity_algorithm: open.integrity_algorithm,
            confidentiality_algorithm: open.confidentiality_algorithm,
        };
        let opened = OpenSessionResponse::parse(&opened.encode()).expect("open response");
        assert_eq!(
            CipherSuite::from_algorithms(
                opened.auth_algorithm,
                opened.integrity_algorithm,
                opened.confidentiality_algorithm
            ),
            Some(suite)
        );

        // RAKP 1 -> BMC computes RAKP 2.
        let rakp1 = Rakp1 {
            tag: 1,
            bmc_session_id: opened.bmc_session_id,
            console_random: t.console_random,
            role: t.role,
            username: t.username.clone(),
        };
        let rakp1 = Rakp1::parse(&rakp1.encode()).expect("rakp1");
        let bmc_view = Transcript {
            suite,
            console_session_id: opened.console_session_id,
            bmc_session_id: rakp1.bmc_session_id,
            console_random: rakp1.console_random,
            bmc_random: t.bmc_random,
            bmc_guid: t.bmc_guid,
            role: rakp1.role,
            username: rakp1.username.clone(),
        };
        assert_eq!(bmc_view, t);
        let rakp2 = Rakp2 {
            tag: rakp1.tag,
            status: status::NO_ERRORS,
            console_session_id: bmc_view.console_session_id,
            bmc_random: bmc_view.bmc_random,
            bmc_guid: bmc_view.bmc_guid,
            auth_code: bmc_view.rakp2_auth_code(password),
        };
        let rakp2 = Rakp2::parse(&rakp2.encode()).expect("rakp2");
        assert_eq!(hex(&rakp2.auth_code), expected.rakp2);
        // The console checks it with the same password, and a wrong one does not match.
        assert_eq!(t.rakp2_auth_code(password), rakp2.auth_code);
        assert_ne!(t.rakp2_auth_code(b"wrong"), rakp2.auth_code);

        // RAKP 3 -> BMC checks it and answers RAKP 4.
        let rakp3 = Rakp3 {
            tag: 2,
            status: status::NO_ERRORS,
            bmc_session_id: t.bmc_session_id,
            auth_code: t.rakp3_auth_code(password),
        };
        let rakp3 = Rakp3::parse(&rakp3.encode()).expect("rakp3");
        assert_eq!(hex(&rakp3.auth_code), expected.rakp3);
        assert_eq!(bmc_view.rakp3_auth_code(password), rakp3.auth_code);
        let sik = bmc_view.sik(password);
        assert_eq!(hex(&sik), expected.sik);
        let rakp4 = Rakp4 {
            tag: rakp3.tag,
            status: status::NO_ERRORS,
            console_session_id: t.console_session_id,
            integrity_check_value: bmc_view.rakp4_icv(&sik),
        };
        let rakp4 = Rakp4::parse(&rakp4.encode()).expect("rakp4");
        assert_eq!(hex(&rakp4.integrity_check_value), expected.icv);
        assert_eq!(t.rakp4_icv(&t.sik(password)), rakp4.integrity_check_value);

        // Session keys and one sealed request.
        let keys = SessionKeys::from_sik(suite, &sik);
        assert_eq!(hex(keys.k1()), expected.k1);
        assert_eq!(hex(keys.k2()), expected.k2);
        let request = Request::new(0x06, 0x01, 1, vec![]).encode();
        let iv: [u8; 16] = core::array::from_fn(|i| 0xa0 + i as u8);
        let sealed = keys.seal(PayloadType::Ipmi, t.bmc_session_id, 3, &request, iv);
        assert_eq!(hex(&sealed), expected.packet);
        let Ok(Packet::V20(packet)) = parse(&sealed) else {
            panic!("sealed packet does not parse")
        };
        assert_eq!(keys.open(&packet), Ok(request));
    }

    #[test]
    fn full_rakp_exchange_suite_3_matches_hand_derived_values() {
        full_exchange(CipherSuite::Suite3, &SUITE3);
    }

    #[test]
    fn full_rakp_exchange_suite_17_matches_hand_derived_values() {
        full_exchange(CipherSuite::Suite17, &SUITE17);
    }

    #[test]
    fn error_responses_are_short_and_parse() {
        let bytes = Rakp2::error(3, status::UNAUTHORIZED_NAME, 7).encode();
        assert_eq!(bytes.len(), 8);
        assert_eq!(
            Rakp2::parse(&bytes).map(|r| r.status),
            Ok(status::UNAUTHORIZED_NAME)
        );
        let bytes = OpenSessionResponse::error(1, status::NO_CIPHER_SUITE_MATCH, 7).encode();
        assert_eq!(
            OpenSessionResponse::parse(&bytes).map(|r| r.status),
            Ok(status::NO_CIPHER_SUITE_MATCH)
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = OpenSessionRequest::parse(&bytes);
            let _ = OpenSessionResponse::parse(&bytes);
            let _ = Rakp1::parse(&bytes);
            let _ = Rakp2::parse(&bytes);
            let _ = Rakp3::parse(&bytes);
            let _ = Rakp4::parse(&bytes);
        }
    }
}
