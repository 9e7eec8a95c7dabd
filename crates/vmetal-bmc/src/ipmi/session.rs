//! An established RMCP+ session, for either side: the keys K1 and K2 derived from the SIK,
//! sealing (encrypt, then AuthCode) and opening (verify, then decrypt) payloads, replay window.

use zeroize::Zeroizing;

use super::DecodeError;
use super::crypto::{self, CipherSuite};
use super::rmcp::{self, NEXT_HEADER, PayloadType, V20_HEADER_LEN, V20Packet};

/// HMAC input for K1 (integrity key): 0x01 repeated 20 times. ipmitool, and therefore every BMC
/// it works with, uses 20 bytes for SHA256 suites too.
const CONST_1: [u8; 20] = [0x01; 20];
/// HMAC input for K2 (confidentiality key): 0x02 repeated 20 times.
const CONST_2: [u8; 20] = [0x02; 20];

/// The keys of an established session. `Debug` shows no key material.
#[derive(Clone)]
pub struct SessionKeys {
    suite: CipherSuite,
    k1: Zeroizing<Vec<u8>>,
    k2: Zeroizing<Vec<u8>>,
    aes_key: Zeroizing<[u8; 16]>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// K1 = HMAC(SIK, const 1) keys the AuthCode; the first 16 bytes of K2 = HMAC(SIK, const 2)
    /// are the AES-CBC-128 key.
    pub fn from_sik(suite: CipherSuite, sik: &[u8]) -> Self {
        let k1 = Zeroizing::new(suite.hmac(sik, &[&CONST_1]));
        let k2 = Zeroizing::new(suite.hmac(sik, &[&CONST_2]));
        let mut aes_key = Zeroizing::new([0u8; 16]);
        aes_key.copy_from_slice(&k2[..16]);
        Self {
            suite,
            k1,
            k2,
            aes_key,
        }
    }

    /// The negotiated cipher suite.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// K1, the integrity key (full HMAC length).
    pub fn k1(&self) -> &[u8] {
        &self.k1
    }

    /// K2, whose first 16 bytes are the AES key (full HMAC length).
    pub fn k2(&self) -> &[u8] {
        &self.k2
    }

    /// A datagram carrying `payload` to the peer's `session_id`: encrypted with AES-CBC-128 and
    /// authenticated with the integrity pad, pad length, next header and truncated AuthCode.
    pub fn seal(
        &self,
        payload_type: PayloadType,
        session_id: u32,
        sequence: u32,
        payload: &[u8],
        iv: [u8; 16],
    ) -> Vec<u8> {
        let encrypted = crypto::encrypt_payload(&self.aes_key, iv, payload);
        let mut out = rmcp::encode_v20_header(
            rmcp::sealed_type_byte(payload_type),
            session_id,
            sequence,
            &encrypted,
        );
        let covered = V20_HEADER_LEN + encrypted.len() + 2;
        let pad = (4 - covered % 4) % 4;
        out.extend(std::iter::repeat_n(0xFF, pad));
        out.push(pad as u8);
        out.push(NEXT_HEADER);
        let code = self
            .suite
            .hmac(&self.k1, &[&out[rmcp::RMCP_HEADER.len()..]]);
        out.extend_from_slice(&code[..self.suite.auth_code_len()]);
        out
    }

    /// Verify the AuthCode of `packet` and decrypt its payload.
    pub fn open(&self, packet: &V20Packet<'_>) -> Result<Vec<u8>, DecodeError> {
        if !packet.authenticated || !packet.encrypted {
            return Err(DecodeError::Unexpected {
                what: "session packet flags (must be authenticated and encrypted)",
                value: u32::from(packet.authenticated) << 1 | u32::from(packet.encrypted),
            });
        }
        let code_len = self.suite.auth_code_len();
        let bytes = packet.session_bytes;
        let minimum = V20_HEADER_LEN + packet.payload.len() + 2 + code_len;
        if bytes.len() < minimum {
            return Err(DecodeError::Truncated {
                what: "session trailer",
                offset: bytes.len(),
                needed: minimum - bytes.len(),
            });
        }
        let (covered, code) = bytes.split_at(bytes.len() - code_len);
        let next_header = covered[covered.len() - 1];
        let pad = usize::from(covered[covered.len() - 2]);
        if next_header != NEXT_HEADER {
            return Err(DecodeError::Unexpected {
                what: "session trailer next header",
                value: next_header.into(),
            });
        }
        if covered.len() != V20_HEADER_LEN + packet.payload.len() + pad + 2 {
            return Err(DecodeError::Unexpected {
                what: "integrity pad length",
                value: pad as u32,
            });
        }
        let expected = self.suite.hmac(&self.k1, &[covered]);
        if !crypto::constant_time_eq(&expected[..code_len], code) {
            return Err(DecodeError::Integrity);
        }
        crypto::decrypt_payload(&self.aes_key, packet.payload)
    }
}

/// Accepts each inbound session sequence number once, tolerating reordering within 32 packets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequenceWindow {
    highest: Option<u32>,
    seen: u32,
}

impl SequenceWindow {
    /// Whether `sequence` is new (and remember it). Zero is never valid inside a session.
    pub fn accept(&mut self, sequence: u32) -> bool {
        if sequence == 0 {
            return false;
        }
        match self.highest {
            None => {
                self.highest = Some(sequence);
                self.seen = 1;
                true
            }
            Some(highest) if sequence > highest => {
                let shift = sequence - highest;
                self.seen = if shift >= 32 {
                    1
                } else {
                    (self.seen << shift) | 1
                };
                self.highest = Some(sequence);
                true
            }
            Some(highest) => {
                let back = highest - sequence;
                if back >= 32 || self.seen & (1 << back) != 0 {
                    return false;
                }
                self.seen |= 1 << back;
                true
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ipmi::rmcp::{Packet, parse};
    use proptest::prelude::*;

    fn keys(suite: CipherSuite) -> SessionKeys {
        SessionKeys::from_sik(suite, &[0x42; 20])
    }

    fn v20(bytes: &[u8]) -> V20Packet<'_> {
        match parse(bytes) {
            Ok(Packet::V20(p)) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn seal_then_open_round_trips_for_both_suites() {
        for suite in CipherSuite::PREFERENCE {
            let k = keys(suite);
            for len in [0usize, 1, 7, 15, 16, 17, 40] {
                let payload: Vec<u8> = (0..len as u8).collect();
                let bytes = k.seal(PayloadType::Ipmi, 0x1234, 9, &payload, [3; 16]);
                // AuthType through AuthCode minus the code is a multiple of 4.
                assert_eq!((bytes.len() - 4 - suite.auth_code_len()) % 4, 0);
                let p = v20(&bytes);
                assert_eq!((p.session_id, p.sequence), (0x1234, 9));
                assert_eq!(k.open(&p), Ok(payload));
            }
        }
    }

    #[test]
    fn any_flipped_bit_fails_the_integrity_check() {
        let k = keys(CipherSuite::Suite3);
        let bytes = k.seal(PayloadType::Ipmi, 1, 2, b"chassis", [0; 16]);
        for i in 4..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            if let Ok(Packet::V20(p)) = parse(&bad) {
                assert!(k.open(&p).is_err(), "byte {i} flipped but accepted");
            }
        }
    }

    #[test]
    fn other_keys_are_rejected() {
        let bytes = keys(CipherSuite::Suite17).seal(PayloadType::Ipmi, 1, 2, b"x", [0; 16]);
        let other = SessionKeys::from_sik(CipherSuite::Suite17, &[0x43; 32]);
        assert_eq!(other.open(&v20(&bytes)), Err(DecodeError::Integrity));
    }

    #[test]
    fn sequence_window_rejects_replays_and_zero() {
        let mut w = SequenceWindow::default();
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(!w.accept(5));
        assert!(w.accept(7));
        assert!(w.accept(6));
        assert!(!w.accept(6));
        assert!(w.accept(100));
        assert!(!w.accept(50));
        assert!(w.accept(99));
    }

    proptest! {
        #[test]
        fn open_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..120), flags in any::<u8>()) {
            let mut bytes = vec![0x06, 0x00, 0xff, 0x07, 0x06, flags & 0xC0, 1, 0, 0, 0, 1, 0, 0, 0];
            let len = tail.len().saturating_sub(20) as u16;
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend(tail);
            if let Ok(Packet::V20(p)) = parse(&bytes) {
                for suite in CipherSuite::PREFERENCE {
                    let _ = keys(suite).open(&p);
                }
            }
        }
    }
}
