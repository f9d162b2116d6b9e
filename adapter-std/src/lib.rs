//! The fedbroker adapter for blocking `std::net` sockets and OS threads, with no async runtime:
//! [`run`] serves a [`Broker`] on bound listeners until SIGINT/SIGTERM.
//!
//! ## Threads
//!
//! One thread per listening address accepts. Each connection has **two threads**:
//!
//! - the *reader* blocks in `read` and feeds what arrives into the session (a blocking read can
//!   wait for nothing else, and the session must stay responsive to input while it waits on
//!   timers and queues); it writes what that input produced (a response) itself, so a request
//!   costs no thread switch, and wakes the driver only when the driver has something to do;
//! - the *driver* runs the core's drive loop: it writes the session's output (blocking writes
//!   with a timeout), runs its timers (pings, idle drop, request timeout, close handshake), and
//!   sleeps on a condition variable until the deadline of `poll_timeout`, new input, a message
//!   for a listener, or shutdown wakes it. A message for a listener wakes the driver through a
//!   `std::task::Waker` that sets a flag and signals the condition variable.
//!
//! So the thread count is 2 per connection plus 1 per address, independent of message rates; no
//! thread is ever started per message. Threads are capped by the kernel's memory-map limit
//! (`vm.max_map_count`, 65 530 by default: about 6 500 connections); beyond it a connection gets
//! `503` at once instead of threads, since a thread that cannot map its stack aborts the process.
//! For more connections, raise `vm.max_map_count` or use the tokio or smol adapter. Stacks are small (`STACK_SIZE`). All protocol logic is in
//! the core.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use fedbroker_cli::{Server, Transport};
use fedbroker_core::{Broker, Session, READ_CHUNK};

/// How long in-flight work may take after SIGINT/SIGTERM (SPEC §4).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Stack size of connection threads: the drive loop needs little.
const STACK_SIZE: usize = 256 * 1024;
/// First read buffer of a connection (see `read_loop`).
const FIRST_READ: usize = 2 * 1024;
/// A blocked write gives the driver back control this often, so timers still run.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// A flag and a condition variable: the driver sleeps on it; input, queued messages (as a
/// [`Waker`]) and shutdown wake it.
#[derive(Default)]
struct Signal {
    state: Mutex<SignalState>,
    cv: Condvar,
}

#[derive(Default)]
struct SignalState {
    set: bool,
    /// The driver sleeps on the condition variable: only then is a notification (a system call)
    /// needed.
    waiting: bool,
}

impl Signal {
    fn notify(&self) {
        let mut st = lock(&self.state);
        st.set = true;
        if st.waiting {
            drop(st);
            self.cv.notify_one();
        }
    }

    /// Sleeps until notified or `deadline`, then clears the flag.
    fn wait(&self, deadline: Option<Instant>) {
        let mut st = lock(&self.state);
        st.waiting = true;
        while !st.set {
            match deadline {
                None => st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    st = self.cv.wait_timeout(st, d - now).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
        st.waiting = false;
        st.set = false;
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.notify();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.notify();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by every thread of the broker.
struct Shared {
    broker: Arc<Broker>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: AtomicBool,
    /// Drivers to wake at shutdown (dead entries are pruned as new ones come).
    drivers: Mutex<Vec<Weak<Signal>>>,
    /// Connections alive, to wait for at shutdown.
    live: Mutex<usize>,
    /// Connections beyond this get `503` without threads (see `thread_budget`).
    thread_budget: usize,
    all_done: Condvar,
}

/// One connection: the session and its transport, which both threads use, and the reader's gate
/// (it waits while the session does not want input: backpressure).
struct Conn {
    io: Mutex<Io>,
    read_gate: Condvar,
    signal: Arc<Signal>,
}

struct Io {
    s: Session,
    t: Transport,
    /// The reader waits at the gate (so the driver must notify it when the session wants input).
    reader_waiting: bool,
}

/// Serves `broker` on the server's listeners until its signal (SIGINT or SIGTERM), then shuts down
/// gracefully.
pub fn run(broker: Arc<Broker>, server: Server) -> io::Result<()> {
    let Server { listeners, tls, signal } = server;
    let shared = Arc::new(Shared {
        thread_budget: thread_budget(),
        broker,
        tls,
        shutdown: AtomicBool::new(false),
        drivers: Mutex::new(Vec::new()),
        live: Mutex::new(0),
        all_done: Condvar::new(),
    });
    let mut addrs = Vec::new();
    for l in listeners {
        addrs.push(l.local_addr()?);
        let shared = shared.clone();
        thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(l, shared))?;
    }
    signal.wait();
    tracing::info!("shutting down: closing listeners, finishing requests");
    shared.shutdown.store(true, Ordering::SeqCst);
    for d in lock(&shared.drivers).iter().filter_map(Weak::upgrade) {
        d.notify();
    }
    // A blocking accept cannot be interrupted: a connection of our own wakes each accept thread,
    // which then sees the flag and closes its listener.
    for mut addr in addrs {
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            });
        }
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    }
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let mut live = lock(&shared.live);
    while *live > 0 {
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
            break;
        }
        live = shared
            .all_done
            .wait_timeout(live, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    Ok(())
}

fn accept_loop(l: TcpListener, shared: Arc<Shared>) {
    for sock in l.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        match sock {
            Ok(sock) => {
                if *lock(&shared.live) >= shared.thread_budget {
                    refuse(sock, &shared);
                } else if let Err(e) = start(sock, &shared) {
                    tracing::warn!("cannot start connection threads: {e}");
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Answers `503` on the accepting thread, without starting threads, when the process has no room
/// for two more: the kernel's limit on memory maps (`vm.max_map_count`) caps threads, and a thread
/// that cannot set up its stack aborts the whole process.
fn refuse(sock: TcpStream, shared: &Shared) {
    tracing::warn!(
        budget = shared.thread_budget,
        "out of threads for connections: answering 503"
    );
    let _ = sock.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut s = fedbroker_cli::accept(&shared.broker);
    s.refuse_all(Instant::now(), fedbroker_core::HttpError::TooManyConnections);
    let _ = s.write_to(Instant::now(), |iov| (&sock).write_vectored(iov));
    let _ = sock.shutdown(Shutdown::Write);
}

/// How many connections the process can give two threads each: a thread costs a few memory maps
/// (stack, guard page, signal stack), and `vm.max_map_count` (65 530 by default) caps them all.
fn thread_budget() -> usize {
    let maps = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(65_530);
    // About four maps per thread, two threads per connection, and room for the rest of the process.
    (maps / 10).max(64)
}

/// Starts the reader and driver threads of a new connection.
fn start(sock: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    let _ = sock.set_nodelay(true);
    sock.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let reader_sock = sock.try_clone()?;
    let t = Transport::new(shared.tls.as_ref())?;
    let conn = Arc::new(Conn {
        io: Mutex::new(Io {
            s: fedbroker_cli::accept(&shared.broker),
            t,
            reader_waiting: false,
        }),
        read_gate: Condvar::new(),
        signal: Arc::new(Signal::default()),
    });
    {
        let mut drivers = lock(&shared.drivers);
        if drivers.len() >= 1024 && drivers.len().is_power_of_two() {
            drivers.retain(|w| w.strong_count() > 0);
        }
        drivers.push(Arc::downgrade(&conn.signal));
    }
    *lock(&shared.live) += 1;
    let (c, s) = (conn.clone(), shared.clone());
    thread::Builder::new()
        .name("driver".into())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            drive(&c, &sock, &s);
            // Unblocks the reader, whose read now fails.
            let _ = sock.shutdown(Shutdown::Both);
            c.read_gate.notify_all();
            let mut live = lock(&s.live);
            *live -= 1;
            s.all_done.notify_all();
        })?;
    thread::Builder::new()
        .name("reader".into())
        .stack_size(STACK_SIZE)
        .spawn(move || read_loop(&conn, reader_sock))?;
    Ok(())
}

/// The reader thread: blocking reads, fed into the session while it wants input.
///
/// What the input produces (a response, mostly) the reader writes itself, at once, instead of
/// waking the driver for it: a request then costs no thread switch. The driver is woken only when
/// it has something to do: output left over (a blocked write is the driver's job), a new
/// deadline, a wake-up due, or the end of the connection.
fn read_loop(conn: &Conn, mut sock: TcpStream) {
    // Small at first: a listener only ever reads control frames, and an idle connection should
    // not hold 16 KiB. A read that fills it shows a sender, whose buffer grows to `READ_CHUNK`.
    let mut buf = vec![0u8; FIRST_READ];
    let waker = Waker::from(conn.signal.clone());
    loop {
        {
            let mut io = lock(&conn.io);
            while !io.t.wants_read(&io.s) && !io.s.is_closed() {
                io.reader_waiting = true;
                io = conn.read_gate.wait(io).unwrap_or_else(|e| e.into_inner());
            }
            io.reader_waiting = false;
            if io.s.is_closed() {
                return;
            }
        }
        let n = sock.read(&mut buf);
        let mut io = lock(&conn.io);
        let Io { s, t, .. } = &mut *io;
        let now = Instant::now();
        let deadline = s.poll_timeout();
        let (open, wake_driver) = match n {
            Ok(n) if n > 0 => {
                t.on_bytes(s, now, &buf[..n]);
                let broken = t.write_to(s, now, |iov| (&sock).write_vectored(iov)).is_err();
                let wake_driver = broken
                    || t.wants_write(s)
                    || s.should_shutdown_write()
                    || s.is_closed()
                    || earlier(s.poll_timeout(), deadline)
                    // Registers the driver's waker for what the input started (an authorizer's
                    // late answer, a listener's queue), as the driver itself would.
                    || s.poll_wake(&mut Context::from_waker(&waker)).is_ready();
                (true, wake_driver)
            }
            _ => {
                t.on_eof(s, now);
                (false, true)
            }
        };
        drop(io);
        if n.as_ref().is_ok_and(|&n| n == buf.len() && n < READ_CHUNK) {
            buf.resize(READ_CHUNK, 0);
        }
        if wake_driver {
            conn.signal.notify();
        }
        if !open {
            return;
        }
    }
}

/// Whether the driver, asleep until `old`, must wake sooner for `new` (a later deadline only
/// costs it one early wake-up, after which it sleeps until the new one).
fn earlier(new: Option<Instant>, old: Option<Instant>) -> bool {
    match (new, old) {
        (Some(new), Some(old)) => new < old,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The driver thread: the core's drive loop with blocking writes and a condition variable.
fn drive(conn: &Conn, mut sock: &TcpStream, shared: &Shared) {
    let waker = Waker::from(conn.signal.clone());
    let mut shutting_down = false;
    let mut write_shut = false;
    loop {
        let mut io = lock(&conn.io);
        let Io { s, t, reader_waiting } = &mut *io;
        let now = Instant::now();
        if !shutting_down && shared.shutdown.load(Ordering::SeqCst) {
            shutting_down = true;
            s.handle_shutdown(now);
        }
        if s.poll_timeout().is_some_and(|d| d <= now) {
            s.handle_timeout(now);
        }
        s.handle_wake(now);
        if t.write_to(s, now, |iov| sock.write_vectored(iov)).is_err() {
            return;
        }
        if !write_shut && t.should_shutdown_write(s) {
            write_shut = true;
            // The peer sees our FIN; we keep reading until it closes too (or the linger ends).
            let _ = sock.shutdown(Shutdown::Write);
        }
        if s.is_closed() {
            return;
        }
        if *reader_waiting && t.wants_read(s) {
            conn.read_gate.notify_one();
        }
        let ready = s.poll_wake(&mut Context::from_waker(&waker)).is_ready();
        let deadline = s.poll_timeout();
        let unsent = t.wants_write(s);
        drop(io);
        if !ready && !unsent {
            conn.signal.wait(deadline);
        }
    }
}
