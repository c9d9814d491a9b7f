//! Compiles the weak-reference shim and sets the shared library's soname.
fn main() {
    println!("cargo:rerun-if-changed=src/pjlib_shim.c");
    cc::Build::new()
        .file("src/pjlib_shim.c")
        .warnings(true)
        .compile("pjws_shim");
    // Versioned soname so that an ABI change can be told apart.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpjwebsock.so.0");
}
