//! HTTP/1.1 pieces of the core: an incremental request-head reader, body decoders and the
//! response writer. None of them touches a socket; they work on byte buffers the caller fills.

mod body;
mod request;
mod response;

pub use body::{BodyProgress, BodyReader};
pub use request::{BodyFraming, HeadReader, Limits, Repeated, RequestHead};
pub use response::Response;
