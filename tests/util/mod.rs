//! Test helpers: run the real `cai` binary in a temporary folder.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `cai` command whose working directory is `dir`.
pub fn cai(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cai"));
    c.current_dir(dir);
    c
}

/// Clears the proxy variables, so a test's requests go straight to its loopback server.
pub fn without_proxies(cmd: &mut Command) -> &mut Command {
    for var in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs and asserts success, returning stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("cai runs");
    assert!(
        out.status.success(),
        "cai failed: {}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs and asserts failure, returning stderr.
pub fn fails(cmd: &mut Command) -> String {
    let out: Output = cmd.output().expect("cai runs");
    assert!(!out.status.success(), "cai should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[allow(unused_imports)]
pub use cai::test_support::{default_model, model_file};

/// Compares `actual` with the golden file; `CAI_BLESS=1` rewrites it.
pub fn golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("CAI_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run with CAI_BLESS=1",
            path.display()
        )
    });
    assert_eq!(actual, want, "output differs from {}", path.display());
}

/// Prints a line of the fault suite's figures on stderr past the test harness's capture
/// (`eprintln!` is captured; a write to the stderr handle is not), so `cargo test` shows it
/// in CI logs without `--nocapture`.
pub fn figure(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "[fault suite] {line}");
}
