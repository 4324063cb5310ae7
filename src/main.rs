//! The `loratune` binary: parse arguments, run, report errors for people.

fn main() {
    if let Err(e) = loratune::cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
