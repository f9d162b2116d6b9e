//! `fedbroker-mio`: the broker on one thread with a plain `mio` poll loop, embedding the unchanged
//! core (the drive loop of `fedbroker_core`'s crate docs). Flags as SPEC §8; see the README.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll as TaskPoll, Wake, Waker};
use std::time::{Duration, Instant};

use fedbroker_cli::{Server, Transport};
use fedbroker_core::{Broker, Session};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// How long in-flight work may take after SIGINT/SIGTERM (SPEC §4).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The token of the cross-thread waker; listeners take the next ones, connections the rest.
const WAKE: Token = Token(0);

fn main() -> std::process::ExitCode {
    fedbroker_cli::main_with("mio", fedbroker_cli::Role::Listener, run)
}

/// Connections whose session asked to be woken (a message, a late decision), and the signal.
#[derive(Default)]
struct Woken {
    tokens: Vec<Token>,
    shutdown: bool,
}

/// A `std::task::Waker` that queues its connection's token and wakes the poll.
struct ConnWaker {
    token: Token,
    woken: Arc<Mutex<Woken>>,
    poll: Arc<mio::Waker>,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.woken).tokens.push(self.token);
        let _ = self.poll.wake();
    }
}

fn lock(m: &Mutex<Woken>) -> std::sync::MutexGuard<'_, Woken> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One connection: its socket, TLS (or not) and session, and what the socket last reported.
struct Conn {
    sock: TcpStream,
    t: Transport,
    s: Session,
    waker: Waker,
    readable: bool,
    write_shut: bool,
}

impl Conn {
    /// Steps 1–3 of the drive loop until the socket or the session has nothing more; `false`
    /// once the connection is over.
    fn drive(&mut self) -> bool {
        loop {
            let now = Instant::now();
            if self
                .t
                .write_to(&mut self.s, now, |iov| self.sock.write_vectored(iov))
                .is_err()
            {
                return false;
            }
            if !self.write_shut && self.t.should_shutdown_write(&mut self.s) {
                self.write_shut = true;
                let _ = self.sock.shutdown(Shutdown::Write);
            }
            if self.s.is_closed() {
                return false;
            }
            // mio is edge-triggered: read until the socket would block.
            if self.readable && self.t.wants_read(&self.s) {
                let (sock, readable) = (&mut self.sock, &mut self.readable);
                self.t.read_from(&mut self.s, now, |buf| {
                    let r = sock.read(buf);
                    *readable = !matches!(&r, Err(e) if e.kind() == ErrorKind::WouldBlock);
                    r
                });
                continue;
            }
            match self.s.poll_wake(&mut Context::from_waker(&self.waker)) {
                TaskPoll::Ready(()) => self.s.handle_wake(now),
                TaskPoll::Pending => return true,
            }
        }
    }
}

fn run(broker: Arc<Broker>, server: Server) -> io::Result<()> {
    let Server { listeners, tls, signal } = server;
    let mut poll = Poll::new()?;
    let poll_waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
    let woken = Arc::new(Mutex::new(Woken::default()));
    let mut listeners: Vec<TcpListener> = listeners
        .into_iter()
        .map(|l| l.set_nonblocking(true).map(|()| TcpListener::from_std(l)))
        .collect::<io::Result<_>>()?;
    for (i, l) in listeners.iter_mut().enumerate() {
        poll.registry().register(l, Token(1 + i), Interest::READABLE)?;
    }
    let first_conn = 1 + listeners.len();
    let (w, p) = (woken.clone(), poll_waker.clone());
    std::thread::spawn(move || {
        signal.wait();
        lock(&w).shutdown = true;
        let _ = p.wake();
    });

    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next = first_conn;
    let mut events = Events::with_capacity(1024);
    let mut grace_end: Option<Instant> = None;
    loop {
        // Step 4: wait for a socket, a wake-up or the earliest deadline.
        let now = Instant::now();
        let deadline = conns.values().filter_map(|c| c.s.poll_timeout()).chain(grace_end).min();
        let timeout = deadline.map(|d| d.saturating_duration_since(now));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let mut ready: Vec<Token> = Vec::new();
        for ev in events.iter() {
            match ev.token() {
                WAKE => {}
                t if t.0 < first_conn => {
                    let Some(l) = listeners.get(t.0 - 1) else { continue };
                    loop {
                        let (mut sock, _) = match l.accept() {
                            Ok(a) => a,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => {
                                tracing::warn!("accept failed: {e}");
                                break;
                            }
                        };
                        let _ = sock.set_nodelay(true);
                        let Ok(t) = Transport::new(tls.as_ref()) else { continue };
                        let token = Token(next);
                        next += 1;
                        poll.registry()
                            .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
                        let waker = Waker::from(Arc::new(ConnWaker {
                            token,
                            woken: woken.clone(),
                            poll: poll_waker.clone(),
                        }));
                        let mut s = fedbroker_cli::accept(&broker);
                        if grace_end.is_some() {
                            s.handle_shutdown(Instant::now());
                        }
                        conns.insert(
                            token,
                            Conn {
                                sock,
                                t,
                                s,
                                waker,
                                readable: true,
                                write_shut: false,
                            },
                        );
                        ready.push(token);
                    }
                }
                t => {
                    if let Some(c) = conns.get_mut(&t) {
                        c.readable |= ev.is_readable() || ev.is_read_closed() || ev.is_error();
                        ready.push(t);
                    }
                }
            }
        }
        let shutdown = {
            let mut w = lock(&woken);
            ready.append(&mut w.tokens);
            std::mem::take(&mut w.shutdown)
        };
        let now = Instant::now();
        if shutdown && grace_end.is_none() {
            tracing::info!("shutting down: closing listeners, finishing requests");
            grace_end = Some(now + SHUTDOWN_GRACE);
            for l in &mut listeners {
                let _ = poll.registry().deregister(l);
            }
            listeners.clear();
            for c in conns.values_mut() {
                c.s.handle_shutdown(now);
            }
            ready.extend(conns.keys().copied());
        }
        for c in conns.values_mut() {
            if c.s.poll_timeout().is_some_and(|d| d <= now) {
                c.s.handle_timeout(now);
            }
        }
        // Every connection may have timed out: drive them all when any deadline passed.
        if deadline.is_some_and(|d| d <= now) {
            ready.extend(conns.keys().copied());
        }
        ready.sort_unstable();
        ready.dedup();
        for token in ready {
            if let Some(c) = conns.get_mut(&token) {
                if !c.drive() {
                    let mut c = conns.remove(&token).expect("present");
                    let _ = poll.registry().deregister(&mut c.sock);
                }
            }
        }
        if let Some(end) = grace_end {
            if conns.is_empty() || Instant::now() >= end {
                if !conns.is_empty() {
                    tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
                }
                return Ok(());
            }
        }
    }
}
