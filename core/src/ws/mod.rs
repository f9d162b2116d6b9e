//! WebSocket (RFC 6455) pieces of the core: the server handshake, a frame codec of our own (the
//! common crates' codecs need a stream; the core has none) and the per-connection session that
//! checks every rule of §5 and runs the close handshake and keep-alive pings.

mod frame;
mod handshake;
mod session;
mod utf8;

pub use frame::{apply_mask, encode_header, FrameHeader, OpCode, MAX_HEADER_LEN};
pub use handshake::{check_upgrade, Handshake};
pub use session::{Role, WsSession, WsTimers};
pub use utf8::Utf8Validator;
