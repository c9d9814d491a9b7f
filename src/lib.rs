//! libpjwebsock: a WebSocket (RFC 6455) client with the C API and ABI of
//! pjproject's pjlib-util `pj_websock`.
//!
//! Layers, outside in: `ffi` (the C surface), `client` (one instance:
//! state, transport, timers, callbacks), `proto` (the sans-I/O protocol
//! engine) and `net` (URLs, resolver, sockets, event loop).

/// cbindgen:ignore
pub mod client;
pub mod ffi;
/// cbindgen:ignore
mod log;
/// cbindgen:ignore
pub mod net;
/// cbindgen:ignore
mod pjlib;
/// cbindgen:ignore
pub mod proto;
pub mod status;
