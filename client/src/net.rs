//! Reaching a broker: the list of endpoints an ADDRESS names (one for a URL, the SRV targets in
//! order for `ID@DOMAIN`), each host's IP addresses, TCP with a timeout, and TLS (rustls, ring).
//! The first endpoint that accepts a connection and completes the TLS handshake is used.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::address::{authority, Address};
use crate::outcome::{Failure, Kind};
use crate::srv::{self, Dns, SystemRandom};
use crate::verbose;

/// One broker to try: the name to connect to (and to check its certificate against), and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// `host:port` for the `Host` header and messages.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// A connection to a broker, plain or TLS.
pub enum Stream {
    /// `http://`
    Plain(TcpStream),
    /// `https://`
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The underlying socket (for timeouts).
    pub fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// How to reach brokers: TLS trust, DNS and timeouts, shared by every connection of a run.
pub struct Connector {
    ca: Option<PathBuf>,
    tls: Option<Arc<ClientConfig>>,
    dns_server: Option<SocketAddr>,
    dns: Option<Dns>,
    timeout: Duration,
    /// Plain HTTP to the SRV targets of `ID@DOMAIN` (`--http`).
    srv_plain: bool,
}

impl Connector {
    /// A connector trusting `ca` (PEM; the system's roots when `None`), resolving through
    /// `dns_server` (the system's resolver when `None`), waiting at most `timeout` per step.
    pub fn new(ca: Option<PathBuf>, dns_server: Option<SocketAddr>, timeout: Duration, srv_plain: bool) -> Connector {
        Connector {
            ca,
            tls: None,
            dns_server,
            dns: None,
            timeout,
            srv_plain,
        }
    }

    /// The per-step timeout (connect, TLS handshake, each read and write).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn dns(&mut self) -> Result<&Dns, Failure> {
        if self.dns.is_none() {
            self.dns = Some(Dns::new(self.dns_server, self.timeout)?);
        }
        Ok(self.dns.as_ref().expect("just set"))
    }

    /// Whether `address` is reached over TLS, and the endpoints to try, in order.
    pub fn endpoints(&mut self, address: &Address) -> Result<(bool, Vec<Endpoint>), Failure> {
        match address {
            Address::Url(u) => Ok((
                u.tls,
                vec![Endpoint {
                    host: u.host.clone(),
                    port: u.port,
                }],
            )),
            Address::Srv { domain, .. } => {
                let records = self.dns()?.srv(domain)?;
                let ordered = srv::order(records, &mut SystemRandom::new());
                let endpoints: Vec<Endpoint> = ordered
                    .into_iter()
                    .filter(|r| !r.target.is_empty())
                    .map(|r| Endpoint {
                        host: r.target,
                        port: r.port,
                    })
                    .collect();
                verbose(format_args!(
                    "{domain}: SRV targets in order: {}",
                    endpoints.iter().map(Endpoint::authority).collect::<Vec<_>>().join(", ")
                ));
                Ok((!self.srv_plain, endpoints))
            }
        }
    }

    fn ips(&mut self, host: &str, port: u16) -> Result<Vec<IpAddr>, Failure> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if self.dns_server.is_some() {
            return self.dns()?.ips(host);
        }
        // Without --dns, host names go through the system's resolver (getaddrinfo: /etc/hosts,
        // nsswitch), as with curl.
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| Failure::new(Kind::Resolve, format!("cannot resolve {host}: {e}")))?;
        Ok(addrs.map(|a| a.ip()).collect())
    }

    /// Connects to the first endpoint that accepts, in order (and each of its addresses in
    /// turn), with TLS when `tls`. When none does, the failure lists every attempt; its kind is
    /// TLS if any handshake failed, else unreachable (or not resolved, if no name resolved).
    pub fn connect(&mut self, tls: bool, endpoints: &[Endpoint]) -> Result<(Stream, Endpoint), Failure> {
        let mut attempts = Vec::new();
        let mut kind = Kind::Resolve;
        for ep in endpoints {
            let ips = match self.ips(&ep.host, ep.port) {
                Ok(ips) if !ips.is_empty() => ips,
                Ok(_) => {
                    attempts.push(format!("{}: no address", ep.host));
                    continue;
                }
                Err(e) => {
                    attempts.push(e.message);
                    continue;
                }
            };
            for ip in ips {
                let addr = SocketAddr::new(ip, ep.port);
                verbose(format_args!("connecting to {} ({addr})", ep.authority()));
                let socket = match self.tcp(addr) {
                    Ok(s) => s,
                    Err(e) => {
                        if kind == Kind::Resolve {
                            kind = Kind::Unreachable;
                        }
                        attempts.push(format!("{} ({addr}): {e}", ep.authority()));
                        continue;
                    }
                };
                if !tls {
                    return Ok((Stream::Plain(socket), ep.clone()));
                }
                match self.handshake(socket, &ep.host) {
                    Ok(stream) => return Ok((Stream::Tls(Box::new(stream)), ep.clone())),
                    Err(e) => {
                        if e.kind != Kind::Tls && e.kind != Kind::Unreachable {
                            return Err(e);
                        }
                        // Another address may do better; TLS refusals are what is reported.
                        if e.kind == Kind::Tls || kind != Kind::Tls {
                            kind = e.kind;
                        }
                        attempts.push(format!("{} ({addr}): {}", ep.authority(), e.message));
                    }
                }
            }
        }
        let what = if kind == Kind::Tls {
            "no TLS connection to the broker"
        } else if kind == Kind::Resolve {
            "cannot resolve the broker's name"
        } else {
            "broker unreachable"
        };
        Err(Failure::new(kind, format!("{what}: {}", attempts.join("; "))))
    }

    fn tcp(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = TcpStream::connect_timeout(&addr, self.timeout)?;
        socket.set_read_timeout(Some(self.timeout))?;
        socket.set_write_timeout(Some(self.timeout))?;
        socket.set_nodelay(true)?;
        Ok(socket)
    }

    fn tls_config(&mut self) -> Result<Arc<ClientConfig>, Failure> {
        if let Some(config) = &self.tls {
            return Ok(config.clone());
        }
        let roots = match &self.ca {
            Some(path) => roots_from_file(path)?,
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Failure::new(Kind::Local, format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        self.tls = Some(config.clone());
        Ok(config)
    }

    fn handshake(
        &mut self,
        socket: TcpStream,
        host: &str,
    ) -> Result<StreamOwned<ClientConnection, TcpStream>, Failure> {
        let config = self.tls_config()?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| Failure::new(Kind::Tls, format!("{host:?} cannot be a TLS server name: {e}")))?;
        let connection =
            ClientConnection::new(config, name).map_err(|e| Failure::new(Kind::Tls, format!("TLS setup: {e}")))?;
        let mut stream = StreamOwned::new(connection, socket);
        // Bounded: every read and write is under the socket's timeouts.
        while stream.conn.is_handshaking() {
            match stream.conn.complete_io(&mut stream.sock) {
                // The network failing mid-handshake is the broker unreachable (retried, exit 5),
                // not a TLS problem (exit 7, for what TLS itself refused).
                Ok((0, 0)) => {
                    return Err(Failure::new(Kind::Unreachable, "TLS handshake: the connection closed"));
                }
                Ok(_) => {}
                Err(e) => {
                    let (kind, why) = match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                        Some(rustls::Error::InvalidCertificate(c)) => (
                            Kind::Tls,
                            format!("certificate not accepted for {host}: {c:?} (trust its CA with --ca FILE)"),
                        ),
                        Some(other) => (Kind::Tls, format!("TLS handshake: {other}")),
                        None => (Kind::Unreachable, format!("TLS handshake: {e}")),
                    };
                    return Err(Failure::new(kind, why));
                }
            }
        }
        Ok(stream)
    }
}

/// The certificates of a PEM file, as the only trust anchors.
fn roots_from_file(path: &Path) -> Result<RootCertStore, Failure> {
    let bad = |why: String| Failure::new(Kind::Usage, format!("--ca {}: {why}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE in the file".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    Ok(roots)
}

/// The operating system's trusted roots.
fn system_roots() -> Result<RootCertStore, Failure> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(Failure::new(
            Kind::Tls,
            format!(
                "no trusted root certificates in the system store (install ca-certificates, or pass --ca FILE){}",
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(": {}", errors.join("; "))
                }
            ),
        ));
    }
    Ok(roots)
}
