//! Progress bars on stderr, hidden when stderr is not a terminal or with `--quiet`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` items, starting at `done` (resumed runs).
pub fn bar(total: u64, done: u64, what: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} ETA {{eta}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_position(done);
    pb.reset_eta();
    pb
}

/// Prints a warning line on stderr without breaking a bar.
pub fn warn(pb: &ProgressBar, msg: &str) {
    pb.suspend(|| eprintln!("cai: warning: {msg}"));
}
