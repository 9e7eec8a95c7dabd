//! Cipher suites 3 and 17: RAKP HMACs, integrity AuthCodes and AES-CBC-128 with IPMI's own
//! confidentiality padding. Pure functions over byte slices; callers own (and zeroize) the keys.

use aes::Aes128;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit, array::Array, consts::U16};
use hmac::{Hmac, KeyInit, Mac};
use subtle::ConstantTimeEq;

use super::DecodeError;

/// Authentication algorithm RAKP-HMAC-SHA1.
pub const AUTH_RAKP_HMAC_SHA1: u8 = 0x01;
/// Authentication algorithm RAKP-HMAC-SHA256.
pub const AUTH_RAKP_HMAC_SHA256: u8 = 0x03;
/// Integrity algorithm HMAC-SHA1-96.
pub const INTEGRITY_HMAC_SHA1_96: u8 = 0x01;
/// Integrity algorithm HMAC-SHA256-128.
pub const INTEGRITY_HMAC_SHA256_128: u8 = 0x04;
/// Confidentiality algorithm AES-CBC-128.
pub const CONFIDENTIALITY_AES_CBC_128: u8 = 0x01;

/// AES block (and IV) size.
pub const AES_BLOCK: usize = 16;

/// The RMCP+ cipher suites vmetal implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// Suite 3: RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128 (mandatory in IPMI 2.0).
    Suite3,
    /// Suite 17: RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128.
    Suite17,
}

impl CipherSuite {
    /// Strongest first: the order in which a negotiation picks.
    pub const PREFERENCE: [CipherSuite; 2] = [CipherSuite::Suite17, CipherSuite::Suite3];

    /// The cipher suite ID (3 or 17).
    pub fn id(self) -> u8 {
        match self {
            Self::Suite3 => 3,
            Self::Suite17 => 17,
        }
    }

    /// The suite with this ID, if implemented.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            3 => Some(Self::Suite3),
            17 => Some(Self::Suite17),
            _ => None,
        }
    }

    /// (authentication, integrity, confidentiality) algorithm numbers.
    pub fn algorithms(self) -> (u8, u8, u8) {
        match self {
            Self::Suite3 => (
                AUTH_RAKP_HMAC_SHA1,
                INTEGRITY_HMAC_SHA1_96,
                CONFIDENTIALITY_AES_CBC_128,
            ),
            Self::Suite17 => (
                AUTH_RAKP_HMAC_SHA256,
                INTEGRITY_HMAC_SHA256_128,
                CONFIDENTIALITY_AES_CBC_128,
            ),
        }
    }

    /// The suite made of exactly these algorithms, if implemented.
    pub fn from_algorithms(auth: u8, integrity: u8, confidentiality: u8) -> Option<Self> {
        Self::PREFERENCE
            .into_iter()
            .find(|s| s.algorithms() == (auth, integrity, confidentiality))
    }

    /// The suite's HMAC (SHA1 or SHA256) of the concatenated `parts`, untruncated.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Self::Suite3 => hmac::<Hmac<sha1::Sha1>>(key, parts),
            Self::Suite17 => hmac::<Hmac<sha2::Sha256>>(key, parts),
        }
    }

    /// Length of the session AuthCode and of the RAKP 4 integrity check value: 12 bytes for
    /// HMAC-SHA1-96, 16 for HMAC-SHA256-128.
    pub fn auth_code_len(self) -> usize {
        match self {
            Self::Suite3 => 12,
            Self::Suite17 => 16,
        }
    }
}

fn hmac<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Encrypt `payload` with AES-CBC-128: output is the IV followed by the ciphertext of payload,
/// pad bytes 1, 2, 3, … and the pad length, sized to a whole number of blocks.
pub fn encrypt_payload(key: &[u8; 16], iv: [u8; AES_BLOCK], payload: &[u8]) -> Vec<u8> {
    let pad = (AES_BLOCK - (payload.len() + 1) % AES_BLOCK) % AES_BLOCK;
    let mut buf = Vec::with_capacity(payload.len() + pad + 1);
    buf.extend_from_slice(payload);
    buf.extend(1..=pad as u8);
    buf.push(pad as u8);
    let (blocks, _) = Array::<u8, U16>::slice_as_chunks_mut(&mut buf);
    cbc::Encryptor::<Aes128>::new(&Array::from(*key), &Array::from(iv)).encrypt_blocks(blocks);
    let mut out = Vec::with_capacity(AES_BLOCK + buf.len());
    out.extend_from_slice(&iv);
    out.extend_from_slice(&buf);
    out
}

/// Decrypt an AES-CBC-128 payload (IV, then ciphertext) and strip IPMI confidentiality padding.
pub fn decrypt_payload(key: &[u8; 16], data: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if data.len() < 2 * AES_BLOCK || !data.len().is_multiple_of(AES_BLOCK) {
        return Err(DecodeError::Unexpected {
            what: "encrypted payload length",
            value: data.len() as u32,
        });
    }
    let (iv, ciphertext) = data.split_at(AES_BLOCK);
    let mut iv_block = [0u8; AES_BLOCK];
    iv_block.copy_from_slice(iv);
    let mut buf = ciphertext.to_vec();
    let (blocks, _) = Array::<u8, U16>::slice_as_chunks_mut(&mut buf);
    cbc::Decryptor::<Aes128>::new(&Array::from(*key), &Array::from(iv_block))
        .decrypt_blocks(blocks);
    let pad = usize::from(buf.last().copied().unwrap_or(0xFF));
    if pad >= AES_BLOCK || pad + 1 > buf.len() {
        return Err(DecodeError::Padding);
    }
    let body = buf.len() - pad - 1;
    if !buf[body..body + pad]
        .iter()
        .zip(1u8..)
        .all(|(&b, expected)| b == expected)
    {
        return Err(DecodeError::Padding);
    }
    buf.truncate(body);
    Ok(buf)
}

/// Compare two MACs without leaking where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn aes_round_trip_pads_to_whole_blocks() {
        let key = [7u8; 16];
        for len in 0..40 {
            let payload: Vec<u8> = (0..len as u8).collect();
            let sealed = encrypt_payload(&key, [9u8; 16], &payload);
            assert_eq!(sealed.len() % 16, 0);
            assert_eq!(&sealed[..16], &[9u8; 16]);
            assert_eq!(decrypt_payload(&key, &sealed).ok(), Some(payload));
        }
    }

    #[test]
    fn aes_matches_an_independent_implementation() {
        // python3: cryptography AES-CBC, key 0x00..0x0f, IV 0x10..0x1f, plaintext "IPMI" followed
        // by pad 01..0b and pad length 0b -> ciphertext below.
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let iv: [u8; 16] = core::array::from_fn(|i| 0x10 + i as u8);
        let sealed = encrypt_payload(&key, iv, b"IPMI");
        assert_eq!(hex(&sealed[16..]), "a8a564f69fd0fb1054853959d550cc24");
    }

    #[test]
    fn bad_padding_is_rejected_not_panicking() {
        let key = [1u8; 16];
        assert!(decrypt_payload(&key, &[0u8; 31]).is_err());
        assert!(decrypt_payload(&key, &[0u8; 16]).is_err());
        // Random ciphertext almost never decrypts to valid padding.
        assert!(decrypt_payload(&key, &[0x5Au8; 32]).is_err());
    }

    #[test]
    fn suites_round_trip_through_ids_and_algorithms() {
        for suite in CipherSuite::PREFERENCE {
            assert_eq!(CipherSuite::from_id(suite.id()), Some(suite));
            let (a, i, c) = suite.algorithms();
            assert_eq!(CipherSuite::from_algorithms(a, i, c), Some(suite));
        }
        assert_eq!(CipherSuite::from_id(1), None);
    }

    pub(crate) fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
