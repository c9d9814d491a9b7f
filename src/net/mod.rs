//! Transport: URLs, name resolution, sockets and the event loop.
pub mod evloop;
pub mod resolve;
pub mod sock;
pub mod url;
