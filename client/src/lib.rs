//! `fedbroker`, the command-line client of fedbroker brokers: `fedbroker send ADDRESS [FILE|-]`
//! POSTs a message, `fedbroker listen ADDRESS` receives them over a WebSocket.
//!
//! ADDRESS is a URL or `ID@DOMAIN`, found through the DNS SRV record `_fedbroker._tcp.DOMAIN`
//! ([`srv`]). The client is small and blocking (std sockets, one connection at a time): rustls
//! with the workspace's ring provider for TLS, tungstenite for the WebSocket, hickory-resolver
//! for SRV, and one hand-written HTTP/1.1 POST ([`http`]). Each outcome has its own exit code
//! ([`outcome::Kind`]).

pub mod address;
mod cli;
pub mod http;
pub mod listen;
pub mod net;
pub mod outcome;
pub mod send;
pub mod srv;

pub use cli::{main, parse_dns, verbose};
