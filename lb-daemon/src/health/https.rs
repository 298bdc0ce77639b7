//! HTTPS check: the HTTP check over TLS (rustls, ring). `host` is sent as SNI (else the
//! real's address, which rustls does not send). As ldirectord and keepalived do, the
//! certificate counts as it comes (a real's self-signed one is up) unless `tls_verify`,
//! which verifies it against `ca_file`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::HttpsCheck;

pub async fn check(
    addr: SocketAddr,
    from: Option<IpAddr>,
    spec: &HttpsCheck,
) -> Result<String, String> {
    let config = client_config(spec)?;
    let name = match &spec.http.host {
        Some(host) => {
            ServerName::try_from(host.clone()).map_err(|e| format!("host {host:?}: {e}"))?
        }
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = super::connect(addr, from).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {addr}: {e}"))?;
    super::http::exchange(tls, addr, &spec.http).await
}

fn client_config(spec: &HttpsCheck) -> Result<ClientConfig, String> {
    // ring, not aws-lc-rs: no cmake or C toolchain beyond cc to build, and a health check
    // on the reals' own network needs no post-quantum key exchange (why rustls 0.23.48
    // marks this deprecated).
    #[allow(deprecated)]
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let config = if spec.tls_verify {
        let path = spec.ca_file.as_ref().ok_or("tls_verify without ca_file")?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    };
    Ok(config)
}

/// Takes any certificate, still checking the handshake's signatures with it: the check
/// is of the service, not of its certificate (`tls_verify: false`).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
