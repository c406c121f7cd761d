use clap::Parser;

fn main() {
    let cli = cai::cli::Cli::parse();
    // candle captures a backtrace into every error when RUST_BACKTRACE is set and prints it
    // with the message; it is only wanted when debugging. RUST_LIB_BACKTRACE=0 turns the
    // library captures off and leaves panics' backtraces to RUST_BACKTRACE.
    let debug = cli.verbose || std::env::var_os("CAI_DEBUG").is_some_and(|v| v != "0");
    if !debug {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    } else if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "1");
    }
    if let Err(err) = cai::run(cli) {
        eprintln!("cai: {err:#}");
        std::process::exit(1);
    }
}
