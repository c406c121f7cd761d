use clap::Parser;

fn main() {
    let cli = cai::cli::Cli::parse();
    if let Err(err) = cai::run(cli) {
        eprintln!("cai: {err:#}");
        std::process::exit(1);
    }
}
