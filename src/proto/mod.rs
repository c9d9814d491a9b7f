//! Sans-I/O WebSocket (RFC 6455) client protocol core.
//!
//! Nothing in here touches sockets or clocks: every piece consumes byte
//! slices and produces byte vectors / events, so it can be driven by any
//! event loop and tested byte by byte.
//!
//! * [`frame`]: frame header encoding/decoding and masking.
//! * [`utf8`]: streaming, fail-fast UTF-8 validation for text messages.
//! * [`close`]: close-code rules and close payload parsing.
//! * [`handshake`]: the HTTP/1.1 upgrade request and response validation.
//! * [`conn`]: the post-handshake receive/close state machine.

pub mod close;
pub mod conn;
pub mod frame;
pub mod handshake;
pub mod utf8;

pub use conn::{Conn, Event, Payload};
pub use frame::OpCode;
pub use handshake::{Handshake, HandshakeError, Response};
pub use utf8::Utf8Validator;
