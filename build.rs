//! Link settings for Carmenta's executables (server, tests, benchmarks).
//!
//! libjpeg-turbo 3 and libwebp 1.6 are linked statically (`turbojpeg-sys`,
//! `libwebp-sys`) while the system's libvips links the system's libjpeg and
//! libwebp dynamically. Symbols from static archives must not be exported, or the
//! dynamic linker would bind libvips' `jpeg_*`/`WebP*` calls to our copies.
//! It also rebuilds the crate when a migration is added (they are embedded).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,--exclude-libs,ALL");
    }
    println!("cargo:rerun-if-changed=build.rs");
    // `sqlx::migrate!` embeds the migrations at compile time: a new file in the
    // directory must rebuild the crate (sqlx's documented advice).
    println!("cargo:rerun-if-changed=migrations");
}
