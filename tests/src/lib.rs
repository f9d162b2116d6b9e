//! Black-box conformance harness for the fedbroker adapter binaries (SPEC §2–§8).
//!
//! Every test starts the real broker binary as a child process ([`Broker`]) and drives it over
//! loopback sockets only, with:
//! - [`Conn`]: a small, strict HTTP/1.1 client written for this suite (it is the oracle), able to send
//!   arbitrary bytes and to read pipelined responses one by one;
//! - [`Listener`]: a tungstenite WebSocket client, the well-behaved listener;
//! - [`RawWs`] and [`Frame`]: raw WebSocket frames, to send what no library would (unmasked frames,
//!   reserved bits, oversize control frames) and to read the server's close codes;
//! - [`EnvelopeListener`] and [`Envelope`]: a listener that negotiated the `fedbroker.v1`
//!   subprotocol (docs/patterns.md §3), and its frames;
//! - [`TestCert`]: a throwaway certificate; a broker started with [`BrokerBuilder::tls`] is then
//!   reached over TLS (`https://`, `wss://`) by all of the above.
//!
//! Tests are written once inside [`adapter_tests!`], which generates one `#[test]` per adapter, so a
//! failure names the binary that failed (`…::adapters::tokio::name`).
//!
//! Running: `cargo build --workspace --bins && cargo test -p fedbroker-tests`.
//! - `FEDBROKER_BIN_DIR=DIR` takes the binaries from `DIR` instead of the test executable's target dir.
//! - `FEDBROKER_ADAPTERS=tokio,smol` runs only those adapters (the others' tests return at once).
//!
//! Every read is bounded by a timeout and every loop by a count or a deadline, so a broker that hangs
//! fails a test instead of hanging the suite.

mod adapter;
mod broker;
mod data;
mod engine;
mod envelope;
mod http;
mod tls;
mod ws;

pub use adapter::Adapter;
pub use broker::{run_cli, wait_child, Broker, BrokerBuilder, CliOutput, TempDir};
pub use data::random_bytes;
pub use engine::{EngineKind, EngineServer};
pub use envelope::{Envelope, EnvelopeListener, MAX_HEADER, SUBPROTOCOL};
pub use http::{Conn, ReadError, Response, Stream, IO_TIMEOUT};
pub use tls::{connect_tls, TestCert, TlsInfo, TlsStream};
pub use ws::{opcode, Frame, Listener, RawWs, UPGRADE_HEADERS, WS_ACCEPT, WS_KEY};

/// Polls `probe` every 20 ms until it returns `Some`, for at most `timeout`; panics naming `what`.
///
/// For state the broker updates asynchronously (a listener unregistered after its socket closed),
/// never to assert timing.
pub fn eventually<T>(timeout: std::time::Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
