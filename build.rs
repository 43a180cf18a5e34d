//! Build script: only the optional ISA-L gzip encoder (cargo feature `isal`) needs one.
//!
//! It compiles a small C shim against the system's ISA-L (Debian: `libisal-dev`), found with
//! pkg-config, and links the shared library.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "isal")]
    isal::build();
}

#[cfg(feature = "isal")]
mod isal {
    const SHIM: &str = "src/compress/gzip/isal_shim.c";

    pub fn build() {
        println!("cargo:rerun-if-changed={SHIM}");
        // The version the encoder's determinism was tested with.
        let library = match pkg_config::Config::new()
            .atleast_version("2.30")
            .probe("libisal")
        {
            Ok(library) => library,
            Err(e) => panic!(
                "the `isal` feature needs ISA-L's development files \
                 (Debian: apt-get install libisal-dev): {e}"
            ),
        };
        let mut shim = cc::Build::new();
        shim.file(SHIM).warnings(true).extra_warnings(true);
        for dir in &library.include_paths {
            shim.include(dir);
        }
        shim.compile("oci_export_isal_shim");
    }
}
