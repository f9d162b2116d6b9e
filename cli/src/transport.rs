//! Between a socket and a [`Session`]: plain bytes, or TLS through a `rustls::ServerConnection`
//! driven with rustls' own sans-IO calls (`read_tls`, `process_new_packets`, `write_tls`).
//!
//! Driving rustls directly, rather than through `tokio-rustls`/`futures-rustls`/`StreamOwned`,
//! keeps one loop shape in all three adapters (readiness, then non-blocking reads and writes),
//! keeps no read buffer per idle connection, and is the same code for every runtime.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use bytes::Buf;
use fedbroker_core::{Session, READ_CHUNK};

/// Most plaintext rustls buffers for sending before it pushes back (`writer()` takes less).
const TLS_SEND_BUFFER: usize = 64 * 1024;

/// How a connection's bytes travel.
pub enum Transport {
    /// Plain TCP.
    Plain,
    /// TLS; `closing` once `close_notify` is queued.
    Tls {
        conn: Box<rustls::ServerConnection>,
        closing: bool,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Plain => "Transport::Plain",
            Transport::Tls { .. } => "Transport::Tls",
        })
    }
}

impl Transport {
    /// The transport of a new connection: TLS when `tls` is given.
    pub fn new(tls: Option<&Arc<rustls::ServerConfig>>) -> io::Result<Transport> {
        match tls {
            None => Ok(Transport::Plain),
            Some(config) => {
                let mut conn = rustls::ServerConnection::new(config.clone()).map_err(io::Error::other)?;
                conn.set_buffer_limit(Some(TLS_SEND_BUFFER));
                Ok(Transport::Tls {
                    conn: Box::new(conn),
                    closing: false,
                })
            }
        }
    }

    /// Reads once with `read` (the socket's read, blocking or not) into this thread's read buffer
    /// and feeds the outcome in: bytes, end of stream (`Ok(0)` or an error), or nothing
    /// (`WouldBlock`).
    pub fn read_from(&mut self, s: &mut Session, now: Instant, read: impl FnOnce(&mut [u8]) -> io::Result<usize>) {
        with_scratch(&READ_BUF, |buf| match read(buf) {
            Ok(0) => self.on_eof(s, now),
            Ok(n) => self.on_bytes(s, now, &buf[..n.min(READ_CHUNK)]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(_) => self.on_eof(s, now),
        })
    }

    /// Bytes read from the socket.
    pub fn on_bytes(&mut self, s: &mut Session, now: Instant, mut data: &[u8]) {
        let Transport::Tls { conn, .. } = self else {
            return s.handle_input(now, data);
        };
        while !data.is_empty() {
            match conn.read_tls(&mut data) {
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("TLS input refused: {e}");
                    return s.handle_eof(now);
                }
            }
            match conn.process_new_packets() {
                Ok(state) => {
                    // Plaintext goes to the session at once, whatever its appetite: it is at most
                    // one read's worth beyond it, and the session bounds its buffer.
                    let ended = with_scratch(&PLAIN_BUF, |plain| loop {
                        match conn.reader().read(plain) {
                            Ok(0) => break true,
                            Ok(n) => s.handle_input(now, &plain[..n]),
                            Err(_) => break false,
                        }
                    });
                    if ended {
                        return s.handle_eof(now);
                    }
                    if state.peer_has_closed() {
                        return s.handle_eof(now);
                    }
                }
                Err(e) => {
                    // rustls has queued an alert for the peer; the session winds down.
                    tracing::debug!("TLS error: {e}");
                    return s.handle_eof(now);
                }
            }
        }
    }

    /// The socket reached its end.
    pub fn on_eof(&mut self, s: &mut Session, now: Instant) {
        s.handle_eof(now)
    }

    /// Whether to read from the socket now.
    pub fn wants_read(&self, s: &Session) -> bool {
        match self {
            Transport::Plain => s.wants_read(),
            Transport::Tls { conn, .. } => s.wants_read() || (conn.is_handshaking() && !s.is_closed()),
        }
    }

    /// Whether bytes wait to be written.
    pub fn wants_write(&mut self, s: &mut Session) -> bool {
        match self {
            Transport::Plain => s.transmit().has_remaining(),
            Transport::Tls { conn, .. } => conn.wants_write() || s.transmit().has_remaining(),
        }
    }

    /// Writes what `write` (the socket's vectored write) takes without blocking. `Err` means the
    /// connection is broken.
    pub fn write_to(
        &mut self,
        s: &mut Session,
        now: Instant,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<()> {
        let Transport::Tls { conn, closing } = self else {
            return s.write_to(now, write);
        };
        loop {
            // Session output into rustls (it encrypts into its own buffer, up to its limit).
            if !*closing {
                s.write_to(now, |iov| match conn.writer().write_vectored(iov)? {
                    0 => Err(io::ErrorKind::WouldBlock.into()),
                    n => Ok(n),
                })?;
            }
            if !conn.wants_write() {
                return Ok(());
            }
            let mut sink = Sink(&mut write);
            match conn.write_tls(&mut sink) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether to shut down the socket's sending side now: the session is done and, with TLS,
    /// `close_notify` has been queued and everything written.
    pub fn should_shutdown_write(&mut self, s: &mut Session) -> bool {
        if !s.should_shutdown_write() {
            return false;
        }
        match self {
            Transport::Plain => true,
            Transport::Tls { conn, closing } => {
                if !*closing {
                    *closing = true;
                    conn.send_close_notify();
                }
                !conn.wants_write()
            }
        }
    }
}

thread_local! {
    /// Socket reads land here: one buffer per thread, zeroed once, not per read (a stack array
    /// would be zeroed on every call) and not per connection (idle connections would pay for it).
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
    /// Plaintext out of rustls, likewise.
    static PLAIN_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Runs `f` with the thread's buffer `key`; a fresh one if it is already in use further up the
/// stack (not the case in any adapter, but no reason to panic if it ever were).
fn with_scratch<R>(key: &'static std::thread::LocalKey<RefCell<Box<[u8]>>>, f: impl FnOnce(&mut [u8]) -> R) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut vec![0; READ_CHUNK]),
    })
}

/// `io::Write` over a vectored write function, for `write_tls`.
struct Sink<'a, F>(&'a mut F);

impl<F: FnMut(&[IoSlice<'_>]) -> io::Result<usize>> Write for Sink<'_, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (self.0)(&[IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (self.0)(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
