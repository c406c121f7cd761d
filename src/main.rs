fn main() {
    // A file-size limit (`ulimit -f`) then makes a write fail with EFBIG, which becomes an error
    // naming the file, where SIGXFSZ's default action would kill cai without a word.
    #[cfg(unix)]
    // SAFETY: only sets the disposition of one signal to "ignore", before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = cai::cli::parse();
    // candle captures a backtrace into every error when RUST_BACKTRACE is set and prints it
    // with the message; it is only wanted when debugging. RUST_LIB_BACKTRACE=0 turns the
    // library captures off and leaves panics' backtraces to RUST_BACKTRACE.
    let debug = cli.verbose || std::env::var_os("CAI_DEBUG").is_some_and(|v| v != "0");
    if !debug {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    } else if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "1");
    }
    if let Err(err) = cai::cli::run(cli) {
        eprintln!("cai: {}", one_line(&err));
        if debug {
            // Errors cai raises itself (not only candle's) show where they came from.
            eprintln!("{}", err.backtrace());
        }
        std::process::exit(1);
    }
}

/// The error and its causes as one line, `a: b: c` (what `{err:#}` prints), without a cause
/// whose text its parent already ends with: candle's I/O errors quote their source, which
/// would print "File too large (os error 27)" twice.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
