//! Transport: URLs, name resolution, sockets and the event loop.
pub mod evloop;
pub mod fdtable;
pub mod pjdrv;
pub mod sock;
pub mod tls;
pub mod txqueue;
pub mod url;
pub mod worker;
