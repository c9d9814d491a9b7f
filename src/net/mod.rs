//! Transport: URLs, name resolution, sockets and the event loop.
pub mod evloop;
pub mod tls;
pub mod txqueue;
pub mod worker;
pub mod sock;
pub mod url;
