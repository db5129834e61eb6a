//! Running the `anatomy` binary from integration tests: the command, its output when it must
//! succeed, and paths as arguments.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `anatomy <args>`, with `ANATOMY_DEMO_DIR` set to `demo` when given.
pub fn anatomy_with_demo(args: &[&str], demo: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_anatomy"));
    c.args(args);
    if let Some(d) = demo {
        c.env("ANATOMY_DEMO_DIR", d);
    }
    c.output().unwrap()
}

pub fn anatomy(args: &[&str]) -> Output {
    anatomy_with_demo(args, None)
}

/// `anatomy <args>` run from `dir` (commands as a user types them from the repository root).
pub fn anatomy_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anatomy"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// The standard output of a command that must have succeeded (its stderr otherwise).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Six 112x112 synthetic scenes (seed 3) in `dir`, in the Anatomy-R1 layout; their questions file.
pub fn six_scenes(dir: &Path) -> PathBuf {
    ok(anatomy(&[
        "synth",
        "--out",
        s(dir),
        "--count",
        "6",
        "--size",
        "112",
        "--seed",
        "3",
        "--quiet",
    ]));
    dir.join("train.json")
}
