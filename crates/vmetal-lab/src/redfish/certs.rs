//! Certificates for the virtual Redfish BMC's HTTPS: a fresh CA per service and a server
//! certificate it signs for localhost, 127.0.0.1, ::1 and the bound address.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A server TLS configuration and the PEM of the CA that signed its certificate.
pub(crate) struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub ca_pem: String,
}

/// Generate a CA and a server certificate for `bound` (plus the loopback names), and a rustls
/// server configuration on the ring provider serving it.
pub(crate) fn server_tls(bound: IpAddr) -> io::Result<ServerTls> {
    let ca_key = KeyPair::generate().map_err(other)?;
    let mut ca_params = CertificateParams::default();
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "vmetal lab Redfish CA");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(other)?;

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !bound.is_unspecified() && !bound.is_loopback() {
        names.push(bound.to_string());
    }
    let server_key = KeyPair::generate().map_err(other)?;
    let mut params = CertificateParams::new(names).map_err(other)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "vmetal lab Redfish BMC");
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&server_key, &ca).map_err(other)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let chain = vec![cert.der().clone(), CertificateDer::from(ca.der().to_vec())];
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        ca_pem: ca.pem(),
    })
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!(
        "cannot set up TLS for the virtual Redfish BMC: {e}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_ca_and_a_config() {
        let tls = server_tls(IpAddr::from([127, 0, 0, 1]));
        let tls = tls.map_err(|e| e.to_string());
        assert!(
            tls.as_ref()
                .is_ok_and(|t| t.ca_pem.starts_with("-----BEGIN CERTIFICATE-----")),
            "{:?}",
            tls.err()
        );
    }
}
