//! TLS for the suite (SPEC §8): a throwaway certificate made in-process with rcgen, and rustls
//! client configurations that trust exactly that certificate.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ProtocolVersion, RootCertStore, StreamOwned, SupportedProtocolVersion};

use crate::http::IO_TIMEOUT;

/// A client-side TLS stream over a blocking socket.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for `127.0.0.1`, `::1` and `localhost`, with its private key.
pub struct TestCert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCert {
    /// A fresh ECDSA P-256 key and a self-signed certificate for the loopback names.
    pub fn generate() -> TestCert {
        let names = vec!["127.0.0.1".to_string(), "::1".to_string(), "localhost".to_string()];
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names).expect("generate a self-signed test certificate");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: signing_key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// The certificate, PEM (what `--tls-cert` reads).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PKCS#8 PEM (what `--tls-key` reads).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A client configuration trusting only this certificate, TLS 1.3 and 1.2.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config_for(&[&rustls::version::TLS13, &rustls::version::TLS12])
    }

    /// A client configuration trusting only this certificate, offering only `versions`.
    pub fn client_config_for(&self, versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.der.clone())
            .expect("the test certificate is a valid trust anchor");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

/// What a TLS handshake negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// The protocol version.
    pub version: ProtocolVersion,
    /// The ALPN protocol the server chose, if any.
    pub alpn: Option<Vec<u8>>,
}

/// Connects to `addr` (timeouts as [`IO_TIMEOUT`]) and completes the TLS handshake, naming the
/// server by its IP address. Returns the stream, a handle on its socket, and what was negotiated.
pub fn connect_tls(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<(TlsStream, TcpStream, TlsInfo)> {
    let socket = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    socket.set_nodelay(true)?;
    let handle = socket.try_clone()?;
    let connection =
        ClientConnection::new(config, ServerName::IpAddress(addr.ip().into())).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(connection, socket);
    // Bounded: every read and write of the handshake is under the socket's timeouts, and rustls
    // fails a handshake that does not progress.
    while stream.conn.is_handshaking() {
        let (read, written) = stream.conn.complete_io(&mut stream.sock)?;
        if read == 0 && written == 0 && stream.conn.is_handshaking() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "TLS handshake made no progress",
            ));
        }
    }
    let version = stream
        .conn
        .protocol_version()
        .ok_or_else(|| io::Error::other("no protocol version after the handshake"))?;
    let alpn = stream.conn.alpn_protocol().map(<[u8]>::to_vec);
    Ok((stream, handle, TlsInfo { version, alpn }))
}
