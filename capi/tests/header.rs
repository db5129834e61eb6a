//! `include/anatomy.h` must be what cbindgen generates from the current source (CI has no
//! cbindgen binary; the library does it here). `ANATOMY_BLESS=1` rewrites the committed header.

use std::path::PathBuf;

#[test]
fn committed_header_is_current() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = dir.join("../include/anatomy.h");
    if std::env::var_os("ANATOMY_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/anatomy.h is stale: run `ANATOMY_BLESS=1 cargo test -p anatomy-capi --test header` and commit it"
    );
}
