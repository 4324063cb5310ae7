//! Benchmark: load SmolLM2-135M-Instruct (GGUF Q4_1) on CPU and evaluate 100
//! conversations. Prints figures; `scripts/bench-load-eval.sh` runs this beside the
//! transformers equivalent. Run: `cargo bench --bench load_eval`.

use candle_core::Device;
use loratune::chat::{Message, Role};
use loratune::data::{read_jsonl, BadRecordPolicy, Record};
use loratune::encode::encode;
use loratune::eval::evaluate;
use loratune::model::hub::HubOptions;
use loratune::model::{self, LoadOptions, ModelSource};
use std::path::PathBuf;
use std::time::Instant;

/// The 100 conversations: the calendar sample cycled, each user turn numbered so no two
/// are identical. scripts/bench/transformers_load_eval.py builds the same list.
fn conversations(root: &std::path::Path) -> Vec<Record> {
    let ds = read_jsonl(&root.join("examples/data/calendar-sample.jsonl"), None, BadRecordPolicy::Error)
        .expect("sample data");
    (0..100)
        .map(|i| {
            let Record::Conversation(msgs) = &ds.examples[i % ds.examples.len()].record else {
                panic!("sample is chat data")
            };
            Record::Conversation(
                msgs.iter()
                    .map(|m| {
                        if m.role == Role::User {
                            Message::new(Role::User, format!("{} (request {i})", m.content))
                        } else {
                            m.clone()
                        }
                    })
                    .collect(),
            )
        })
        .collect()
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let gguf = root.join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "run scripts/fetch-test-model.sh first");
    let hub = HubOptions { cache_dir: std::env::temp_dir(), offline: true, revision: "main".into() };
    let opts = LoadOptions::for_device(Device::Cpu, hub);

    let mut load_times = Vec::new();
    let mut loaded = None;
    for _ in 0..3 {
        let t = Instant::now();
        loaded = Some(model::load(&ModelSource::Gguf(gguf.clone()), &opts).expect("load"));
        load_times.push(t.elapsed().as_secs_f64());
    }
    let loaded = loaded.expect("loaded");
    load_times.sort_by(f64::total_cmp);

    let records = conversations(&root);
    let t = Instant::now();
    let examples: Vec<_> = records.iter().map(|r| encode(&loaded.tokenizer, r, 2048).expect("encode")).collect();
    let encode_s = t.elapsed().as_secs_f64();
    let pad = loaded.tokenizer.eos_id.unwrap_or(0);
    let s = evaluate(&loaded.model, None, &examples, 8, pad, |_, _| {}).expect("eval");

    println!(
        "loratune  gguf load (median of 3)  {:.3} s  (min {:.3}, max {:.3})",
        load_times[1], load_times[0], load_times[2]
    );
    println!("loratune  encode 100 conversations {:.3} s", encode_s);
    println!(
        "loratune  eval 100 conversations   {:.2} s  {:.0} tokens/s  ({} tokens, loss {:.4})",
        s.seconds, s.tokens_per_second, s.total_tokens, s.loss
    );
    println!(
        "{}",
        serde_json::json!({"tool": "loratune", "load_s": load_times[1], "eval_s": s.seconds,
            "tokens": s.total_tokens, "tokens_per_s": s.tokens_per_second, "loss": s.loss})
    );
}
