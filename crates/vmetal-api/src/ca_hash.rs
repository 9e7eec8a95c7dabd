//! kubeadm's `--discovery-token-ca-cert-hash`: `sha256:<hex>` of the CA certificate's
//! DER-encoded SubjectPublicKeyInfo. A small DER walk finds that field; nothing else is parsed.

use sha2::{Digest, Sha256};

/// Why a certificate gave no hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an X.509 certificate in DER: {0}")]
pub struct CertError(&'static str);

/// One DER element: tag, the whole element including its header, its contents, and what
/// follows it.
type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn element(input: &[u8]) -> Result<Element<'_>, CertError> {
    let tag = *input.first().ok_or(CertError("truncated tag"))?;
    let first = *input.get(1).ok_or(CertError("truncated length"))?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(CertError("unsupported length form"));
        }
        let bytes = input.get(2..2 + n).ok_or(CertError("truncated length"))?;
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            2 + n,
        )
    };
    let end = header
        .checked_add(len)
        .ok_or(CertError("length overflow"))?;
    let whole = input
        .get(..end)
        .ok_or(CertError("element runs past the end"))?;
    Ok((tag, whole, &whole[header..], &input[end..]))
}

/// The DER SubjectPublicKeyInfo of an X.509 certificate.
pub fn subject_public_key_info(cert_der: &[u8]) -> Result<&[u8], CertError> {
    const SEQUENCE: u8 = 0x30;
    let (tag, _, cert, _) = element(cert_der)?;
    if tag != SEQUENCE {
        return Err(CertError("certificate is not a SEQUENCE"));
    }
    let (tag, _, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return Err(CertError("tbsCertificate is not a SEQUENCE"));
    }
    let mut rest = tbs;
    // [0] version (optional), serialNumber, signature, issuer, validity, subject, then SPKI.
    let (tag, _, _, after) = element(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..5 {
        let (_, _, _, after) = element(rest)?;
        rest = after;
    }
    let (tag, spki, _, _) = element(rest)?;
    if tag != SEQUENCE {
        return Err(CertError("subjectPublicKeyInfo is not a SEQUENCE"));
    }
    Ok(spki)
}

/// `sha256:<64 hex digits>` of the certificate's SubjectPublicKeyInfo, as kubeadm prints it.
pub fn ca_cert_hash(cert_der: &[u8]) -> Result<String, CertError> {
    let digest = Sha256::digest(subject_public_key_info(cert_der)?);
    Ok(format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A certificate shaped like a real one: version, serial, algorithm, issuer, validity,
    /// subject, then the SPKI.
    fn cert(spki: &[u8], with_version: bool) -> Vec<u8> {
        let tlv = |tag: u8, body: &[u8]| {
            let mut v = vec![tag];
            if body.len() < 0x80 {
                v.push(body.len() as u8);
            } else {
                v.extend([0x82, (body.len() >> 8) as u8, body.len() as u8]);
            }
            v.extend_from_slice(body);
            v
        };
        let mut tbs = Vec::new();
        if with_version {
            tbs.extend(tlv(0xa0, &tlv(0x02, &[2])));
        }
        tbs.extend(tlv(0x02, &[1, 2, 3]));
        tbs.extend(tlv(0x30, &tlv(0x06, &[42, 134, 72])));
        tbs.extend(tlv(0x30, &[]));
        tbs.extend(tlv(0x30, &[0u8; 200]));
        tbs.extend(tlv(0x30, &[]));
        tbs.extend_from_slice(spki);
        tbs.extend(tlv(0xa3, &[]));
        let mut body = tlv(0x30, &tbs);
        body.extend(tlv(0x30, &tlv(0x06, &[42])));
        body.extend(tlv(0x03, &[0, 1]));
        tlv(0x30, &body)
    }

    #[test]
    fn finds_the_spki_with_and_without_a_version() {
        let spki = [0x30, 0x03, 0x03, 0x01, 0x00];
        for v in [true, false] {
            assert_eq!(subject_public_key_info(&cert(&spki, v)).unwrap(), &spki);
        }
        // sha256 of the five SPKI bytes, computed independently with `sha256sum`.
        assert_eq!(
            ca_cert_hash(&cert(&spki, true)).unwrap(),
            "sha256:2941dcd0413117f2e8cf4af3a2e7abe2d2223f1affddf6c593d98724742b9f16"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x02, 0x01, 0x00],
            &[0x30, 0x05, 0x30, 0x03, 0x02, 0x01],
        ] {
            assert!(ca_cert_hash(bad).is_err(), "{bad:?}");
        }
    }
}
