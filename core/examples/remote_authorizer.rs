//! An authorizer whose answer arrives later, from elsewhere (STYLE.md §5): here a worker thread
//! stands in for a remote service. The session never blocks: it says it waits
//! (`poll_wake` pending), the worker's `AuthReply::decide` wakes it, and the drive loop goes on.
//!
//! `cargo run -p fedbroker-core --example remote_authorizer`

// This example plays the adapter, which reads the clock and spawns; the core itself never does.
#![allow(clippy::disallowed_methods)]

use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Buf;
use fedbroker_core::{Action, AuthReply, AuthRequest, AuthTime, Authorizer, Broker, Config, Decision};

/// Forwards every question to a worker; the worker allows sending to ids below 1000 only.
struct Remote {
    questions: std::sync::Mutex<mpsc::Sender<(AuthRequest, AuthReply)>>,
}

impl Authorizer for Remote {
    fn authorize(&self, request: &AuthRequest, _time: AuthTime, reply: AuthReply) {
        let _ = self.questions.lock().unwrap().send((request.clone(), reply));
    }
}

fn remote_service(questions: mpsc::Receiver<(AuthRequest, AuthReply)>) {
    for (request, reply) in questions {
        thread::sleep(Duration::from_millis(50)); // the round trip to the service
        let ok = request.action == Action::Send && request.id.is_some_and(|id| id.get() < 1000);
        reply.decide(if ok {
            Decision::Allow { until: None }
        } else {
            Decision::Forbidden
        });
    }
}

/// Wakes the thread that drives the session.
struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn main() {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || remote_service(rx));
    let remote = Remote {
        questions: std::sync::Mutex::new(tx),
    };
    let broker = Broker::with_authorizer(Config::default(), "example", remote, Instant::now(), Duration::ZERO);

    for id in [7, 4242] {
        let mut session = broker.accept(Instant::now());
        let request = format!("POST /{id} HTTP/1.1\r\nHost: example\r\nContent-Length: 2\r\n\r\nhi");
        session.handle_input(Instant::now(), request.as_bytes());
        // Nothing to write yet: the decision is pending. Wait for the wake-up, as an adapter would.
        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        while session.poll_wake(&mut Context::from_waker(&waker)).is_pending() {
            thread::park_timeout(Duration::from_secs(1));
        }
        session.handle_wake(Instant::now());
        let out = session.transmit();
        let response = String::from_utf8_lossy(&out.copy_to_bytes(out.remaining())).into_owned();
        println!("POST /{id} -> {}", response.lines().next().unwrap_or(""));
    }
}
