//! The black-box conformance suite: every test runs once per adapter binary (see `adapter_tests!`),
//! against a broker instance of its own. Build the binaries first:
//! `cargo build --workspace --bins && cargo test -p fedbroker-tests`.

mod auth;
mod cli;
mod cluster;
mod cors;
mod delivery;
mod http1;
mod jwt;
mod lifecycle;
mod mailbox;
mod patterns;
mod routes;
mod status;
mod support;
mod tls;
mod websocket;
