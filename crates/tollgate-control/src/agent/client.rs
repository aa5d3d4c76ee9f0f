//! The agent's HTTP client for the control plane: one short-lived HTTP/1.1 connection per
//! call (a long-poll every 30 s does not need pooling, and a fresh connection re-resolves and
//! re-checks the pin each time).
//!
//! TLS trust: with `--cp-fingerprint` the server's certificate must be exactly the pinned one
//! (SHA-256 of its DER; name and validity dates are not checked — the fingerprint is stronger
//! than either, and the control plane's generated certificate is self-signed). Without it, the
//! certificate must chain to the system's trusted roots and match the host name. Plain `http://`
//! is accepted only for a loopback host (local testing): credentials would otherwise cross the
//! network in clear text.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;

/// Why a call to the control plane failed before an HTTP status came back.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid control plane URL {0:?}: {1}")]
    Url(String, String),
    #[error("cannot connect to the control plane at {0}: {1}")]
    Connect(String, String),
    #[error("TLS with the control plane failed: {0}")]
    Tls(String),
    #[error("control plane request failed: {0}")]
    Http(String),
    #[error("control plane did not answer within {0:?}")]
    Timeout(Duration),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A reply from the control plane.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct Client {
    base: String,
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Parses `AA:BB:..` or plain hex (64 digits) into the 32-byte SHA-256 fingerprint.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s
        .trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Client {
    pub fn new(url: &str, fingerprint: Option<[u8; 32]>) -> Result<Client, ClientError> {
        let bad = |m: &str| ClientError::Url(url.to_owned(), m.to_owned());
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri.scheme_str().unwrap_or("");
        let host = uri.host().ok_or_else(|| bad("no host"))?.to_owned();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = match scheme {
            "https" => true,
            "http" => false,
            _ => {
                return Err(bad(
                    "the scheme must be https (or http for a loopback host)",
                ));
            }
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !https && !loopback {
            return Err(bad(
                "plain http is allowed only for a loopback host: use https",
            ));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let config = tls_config(fingerprint)?;
            let name = ServerName::try_from(host.clone()).map_err(|_| bad("invalid host name"))?;
            Some((tokio_rustls::TlsConnector::from(config), name))
        } else {
            None
        };
        Ok(Client {
            base: url.trim_end_matches('/').to_owned(),
            host,
            port,
            tls,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One request; `timeout` bounds the whole exchange (connect, TLS, response body).
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        bearer: Option<&str>,
        json_body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        match tokio::time::timeout(
            timeout,
            self.call_inner(method, path_and_query, bearer, json_body),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    async fn call_inner(
        &self,
        method: Method,
        path_and_query: &str,
        bearer: Option<&str>,
        json_body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let authority = format!("{}:{}", self.host, self.port);
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| ClientError::Connect(authority.clone(), e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let host_header = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            authority.clone()
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, host_header)
            .header(
                http::header::USER_AGENT,
                concat!("tollgate-agent/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match json_body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(b)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                send(TokioIo::new(stream), req).await
            }
            None => send(TokioIo::new(tcp), req).await,
        }
    }
}

async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<Reply, ClientError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        Ok(Reply { status, body })
    }
    .await;
    driver.abort();
    result
}

fn tls_config(fingerprint: Option<[u8; 32]>) -> Result<Arc<ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut config = match fingerprint {
        Some(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert { fp, provider }))
            .with_no_client_auth(),
        None => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ClientError::Config(
                    "no trusted root certificates on this system: pin the control plane's \
                     certificate with --cp-fingerprint"
                        .to_owned(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts exactly one certificate, by SHA-256 of its DER encoding. The handshake signature is
/// still verified with the certificate's key, so only the holder of the pinned certificate's
/// private key can complete the handshake.
#[derive(Debug)]
struct PinnedCert {
    fp: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.fp {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "control plane certificate fingerprint {} does not match the pinned --cp-fingerprint",
                crate::bundle::hex(&got)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let plain = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&plain), Some([0xab; 32]));
        assert_eq!(parse_fingerprint(&colons), Some([0xab; 32]));
        assert_eq!(
            parse_fingerprint(&format!("sha256:{plain}")),
            Some([0xab; 32])
        );
        assert_eq!(parse_fingerprint("abcd"), None);
        assert_eq!(parse_fingerprint(&"zz".repeat(32)), None);
    }

    #[test]
    fn plain_http_only_for_loopback() {
        assert!(Client::new("http://127.0.0.1:9443", None).is_ok());
        assert!(Client::new("http://localhost:9443", None).is_ok());
        assert!(Client::new("http://10.0.0.1:9443", None).is_err());
        assert!(Client::new("ftp://127.0.0.1", None).is_err());
    }
}
