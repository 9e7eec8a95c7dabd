//! The rustls client configuration for talking to BMCs: the ring provider, Mozilla roots plus
//! the operator's CAs, or — only when asked — a verifier that accepts any certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why a TLS configuration could not be built (a bad CA, mostly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetupError(pub String);

/// A client configuration using the ring provider.
///
/// With `disable_verification` the server certificate is not checked (handshake signatures
/// still are); otherwise it must chain to a Mozilla root or one of `extra_ca_pems`.
pub fn client_config(
    disable_verification: bool,
    extra_ca_pems: &[String],
) -> Result<ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(format!("TLS protocol versions: {e}")))?;
    if disable_verification {
        let verifier = AcceptAnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        };
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth());
    }
    let roots = root_store(extra_ca_pems)?;
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Mozilla's roots plus every certificate in `extra_ca_pems`.
fn root_store(extra_ca_pems: &[String]) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (index, pem) in extra_ca_pems.iter().enumerate() {
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| {
                TlsSetupError(format!(
                    "CA certificate #{} is not valid PEM: {e}",
                    index + 1
                ))
            })?;
            roots.add(cert).map_err(|e| {
                TlsSetupError(format!("CA certificate #{} is unusable: {e}", index + 1))
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(TlsSetupError(format!(
                "CA certificate #{} contains no PEM CERTIFICATE block",
                index + 1
            )));
        }
    }
    Ok(roots)
}

/// Accepts any server certificate, for BMCs with `disableCertificateVerification` set. The
/// handshake signature is still verified, so the peer must hold the key it presents.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_ca_is_reported_by_position() {
        let err = client_config(false, &["not a pem".into()]).err();
        assert_eq!(
            err,
            Some(TlsSetupError(
                "CA certificate #1 contains no PEM CERTIFICATE block".into()
            ))
        );
    }

    #[test]
    fn both_modes_build() {
        assert!(client_config(false, &[]).is_ok());
        assert!(client_config(true, &[]).is_ok());
    }
}
