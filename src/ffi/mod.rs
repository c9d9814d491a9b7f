//! The C interface: `#[repr(C)]` types and the `extern "C"` functions.
pub mod api;
pub mod types;
