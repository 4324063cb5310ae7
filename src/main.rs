//! The `loratune` binary: parse arguments, run, report errors for people.

fn main() {
    // candle runs element-wise CPU ops on its own spinning thread pool while its matmuls
    // use rayon's; with few cores the two pools fight and a step takes twice as long
    // (SmolLM2 on 2 cores: 84 -> 187 tokens/s). Matmuls keep all cores either way.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if let Err(e) = loratune::cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
