//! `loratune report` on a real run folder: a tiny model trained for a few steps by the real
//! binary, then the report's tables re-read and compared with eval.json and metrics.jsonl,
//! the HTML checked for escaping and for external resources, and the page rendered by
//! headless Chromium to a PNG in which the loss curves must be visible.

use crate::common;

use loratune::report::plot::{EVAL_COLOR, SMOOTHED_COLOR};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Trains the tiny model for 8 steps (eval every 4) and returns the run folder.
fn trained_run(d: &Path) -> PathBuf {
    let model = common::init_tiny(d, "tiny", &[]);
    let words = ["amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron"];
    // 64 distinct words: the lint before training refuses duplicated train/eval examples.
    let word = |i: usize| format!("{}{}", words[i % 8], words[i / 8 % 8]);
    let line = |i: usize| {
        let w = word(i);
        common::shout_line(&w)
    };
    common::write(&d.join("train.jsonl"), &(0..32).map(line).collect::<String>());
    common::write(&d.join("eval.jsonl"), &(32..38).map(line).collect::<String>());
    let echo = |i: usize| {
        format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"Say {w}\"}}, {{\"role\": \"assistant\", \"content\": \"{w}\"}}]}}\n", w = word(i))
    };
    common::write(&d.join("keep-skills.jsonl"), &(40..46).map(echo).collect::<String>());
    let mut c = common::run_config(&model, &["train.jsonl"], "run", &[r#"lora.target_modules=["q_proj", "v_proj"]"#]);
    c.lora.r = 4;
    c.lora.alpha = 8.0;
    c.data.eval = Some("eval.jsonl".into());
    c.data.max_seq_len = 64;
    c.train.max_steps = Some(8);
    c.train.micro_batch_size = 4;
    c.train.grad_accum = 1;
    c.train.lr = 5e-3;
    c.train.warmup_steps = 2;
    c.train.seed = 3;
    c.eval.every = 4;
    c.eval.batch_size = 4;
    c.eval.regression = Some("keep-skills.jsonl".into());
    c.eval.generate_examples = 2;
    c.eval.max_new_tokens = 8;
    common::write_config(&d.join("run.toml"), &c);
    let o = common::loratune(d, &["train", "run.toml"]);
    assert!(o.status.success(), "train failed: {}", common::stderr(&o));
    d.join("run")
}

/// The Markdown table row whose first cell is `first`, as cells.
fn md_row(md: &str, first: &str) -> Vec<String> {
    let prefix = format!("| {first} |");
    let line =
        md.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no row \"{first}\" in report.md:\n{md}"));
    line.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect()
}

/// A copy of the run folder without what the lint, the regression set and the generation
/// eval add, as a run with them turned off would have.
fn strip_optional_sections(run: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["run.json", "metrics.jsonl", "eval.json", "config.toml"] {
        std::fs::copy(run.join(f), to.join(f)).unwrap();
    }
    let mut manifest = read_json(&to.join("run.json"));
    manifest.as_object_mut().unwrap().remove("lint");
    std::fs::write(to.join("run.json"), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    let mut eval = read_json(&to.join("eval.json"));
    eval.as_object_mut().unwrap().remove("regression");
    eval.as_object_mut().unwrap().remove("generation");
    std::fs::write(to.join("eval.json"), serde_json::to_string_pretty(&eval).unwrap()).unwrap();
}

/// Edits the run's regression result into forgetting and its samples into text with HTML
/// and Markdown syntax, which the tiny model does not produce, to check the warning and
/// the escaping.
fn edit_in_forgetting_and_markup(run: &Path) {
    let mut eval = read_json(&run.join("eval.json"));
    eval["regression"] = json!({"file": "keep-skills.jsonl", "examples": 12, "base_loss": 1.2, "tuned_loss": 1.5, "relative_change": 0.25, "threshold": 0.1, "forgetting": true});
    std::fs::write(run.join("eval.json"), serde_json::to_string_pretty(&eval).unwrap()).unwrap();
    let samples = [
        json!({"line": 1, "prompt": "Shout <b>bold</b> & \"quoted\" 'single'", "reference": "<B>BOLD</B>!", "base": "<script>alert(\"x\")</script>", "tuned": "a | b\nsecond line\n```\nnot the end of a block"}),
        json!({"line": 5, "prompt": "Shout ember", "reference": null, "base": "ember?", "tuned": "EMBER!"}),
    ];
    std::fs::write(run.join("samples.jsonl"), samples.iter().map(|s| format!("{s}\n")).collect::<String>()).unwrap();
}

/// RGB pixels of a PNG file.
fn decode_png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let pixels = buf[..info.buffer_size()].chunks(channels).map(|p| [p[0], p[1], p[2]]).collect();
    (info.width, info.height, pixels)
}

fn near(p: [u8; 3], c: (u8, u8, u8), tolerance: i32) -> bool {
    let d = |a: u8, b: u8| (a as i32 - b as i32).abs() <= tolerance;
    d(p[0], c.0) && d(p[1], c.1) && d(p[2], c.2)
}

/// Renders `html` with headless Chromium into `png`.
fn screenshot(html: &Path, png: &Path, profile: &Path) {
    let chromium = Path::new("/usr/bin/chromium");
    assert!(
        chromium.is_file(),
        "/usr/bin/chromium is missing: run scripts/setup-tests.sh (it installs Debian's chromium and chromium-driver)"
    );
    let o = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--window-size=1280,2000")
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium");
    assert!(
        o.status.success() && png.is_file(),
        "chromium failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn report_of_a_trained_run_matches_its_files_and_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = trained_run(d);

    // Without the optional parts, their sections say so and nothing fails.
    strip_optional_sections(&run, &d.join("plain-run"));
    let o = common::loratune(d, &["report", "plain-run", "--out", "plain"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let plain = read(&d.join("plain/report.md"));
    for section in ["## Generation: base vs tuned", "## Regression set", "## Data lint", "## Samples"] {
        let after = plain.split(section).nth(1).unwrap_or_else(|| panic!("{section} missing"));
        assert!(after.trim_start().starts_with("_not configured for this run._"), "{section}: {after}");
    }
    assert!(!plain.contains("Warning") && !d.join("plain-run/report.md").exists(), "--out writes elsewhere");

    let o = common::loratune(d, &["report", "run"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let printed = common::stdout(&o);
    for f in ["loss.svg", "lr.svg", "report.md", "report.html"] {
        assert!(printed.contains(&format!("run/{f}")), "{f} not listed in: {printed}");
        assert!(run.join(f).is_file(), "{f} not written");
    }
    let md = read(&run.join("report.md"));
    let html = read(&run.join("report.html"));

    // Eval rows against eval.json: loss as written, perplexity and change computed here.
    let eval = read_json(&run.join("eval.json"));
    let base = eval["base"]["loss"].as_f64().unwrap();
    for name in ["base", "best", "final"] {
        let loss = eval[name]["loss"].as_f64().unwrap();
        let row = md_row(&md, name);
        let expected = [
            name.to_string(),
            eval[name]["step"].to_string(),
            format!("{loss:.4}"),
            format!("{:.3}", loss.exp()),
            format!("{:+.2}%", 100.0 * (loss - base) / base),
        ];
        assert_eq!(row, expected, "{name} row");
        for cell in &expected[1..] {
            assert!(html.contains(&format!("<td class=\"num\">{cell}</td>")), "{name}: {cell} not in the HTML table");
        }
    }
    assert_eq!(eval["final"]["step"], 8);

    // Training totals against metrics.jsonl.
    let metrics: Vec<Value> =
        read(&run.join("metrics.jsonl")).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<&Value> = metrics.iter().filter(|m| m["loss"].is_number()).collect();
    assert_eq!(steps.len(), 8);
    let tokens: u64 = steps.iter().map(|m| m["tokens"].as_u64().unwrap()).sum();
    assert_eq!(md_row(&md, "tokens seen")[1].replace(',', "").parse::<u64>().unwrap(), tokens);
    let step_seconds: f64 =
        steps.iter().map(|m| m["tokens"].as_f64().unwrap() / m["tokens_per_s"].as_f64().unwrap()).sum();
    assert_eq!(md_row(&md, "mean tokens/s (in training steps)")[1], format!("{:.1}", tokens as f64 / step_seconds));
    assert_eq!(md_row(&md, "last train loss")[1], format!("{:.4}", steps[7]["loss"].as_f64().unwrap()));
    assert_eq!(md_row(&md, "steps")[1], "8 of 8");
    assert_eq!(md_row(&md, "status")[1], "completed");
    assert_eq!(md_row(&md, "epochs reached")[1], (steps[7]["epoch"].as_u64().unwrap() + 1).to_string());

    // What training measured beside the loss: regression set, generation scores, lint.
    let r = &eval["regression"];
    let (rb, rt) = (r["base_loss"].as_f64().unwrap(), r["tuned_loss"].as_f64().unwrap());
    let verdict = if r["forgetting"].as_bool().unwrap() { "FORGETTING" } else { "ok" };
    assert_eq!(
        md_row(&md, "keep-skills.jsonl"),
        [
            "keep-skills.jsonl".to_string(),
            "6".into(),
            format!("{rb:.4}"),
            format!("{rt:.4}"),
            format!("{:+.2}%", 100.0 * (rt - rb) / rb),
            "5.00%".into(),
            verdict.into()
        ]
    );
    let g = &eval["generation"];
    let (fb, ft) = (g["base"]["token_f1"].as_f64().unwrap(), g["tuned"]["token_f1"].as_f64().unwrap());
    assert_eq!(
        md_row(&md, "token F1"),
        ["token F1".to_string(), format!("{fb:.3}"), format!("{ft:.3}"), format!("{:+.3}", ft - fb)]
    );
    assert_eq!(md_row(&md, "valid JSON"), ["valid JSON", "n/a", "n/a", "n/a"], "references are not JSON");
    let lint = &read_json(&run.join("run.json"))["lint"];
    assert_eq!(md_row(&md, "examples"), ["examples".to_string(), lint["examples"].to_string()]);
    assert_eq!(lint["examples"], 38);
    assert_eq!(md_row(&md, "errors"), ["errors", "0"]);
    assert!(md.contains("[lint.json](lint.json)") && html.contains("<code>lint.json</code>"));
    let samples: Vec<Value> =
        read(&run.join("samples.jsonl")).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(samples.len(), 2);
    assert!(md.contains("### Sample 1 (eval file line 1)") && md.contains("### Sample 2 (eval file line 2)"), "{md}");
    for s in &samples {
        let tuned = s["tuned"].as_str().unwrap();
        assert!(md.contains(&format!("```text\n{tuned}\n```")), "sample {} not in report.md", s["line"]);
    }

    // The forgetting warning and escaping, on edited results.
    edit_in_forgetting_and_markup(&run);
    let o = common::loratune(d, &["report", "run"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let md = read(&run.join("report.md"));
    let html = read(&run.join("report.html"));
    assert_eq!(
        md_row(&md, "keep-skills.jsonl"),
        ["keep-skills.jsonl", "12", "1.2000", "1.5000", "+25.00%", "10.00%", "FORGETTING"]
    );
    assert!(md.contains("> **Warning.** Forgetting:"), "no forgetting warning in report.md");
    assert!(html.contains("<div class=\"warning\">Forgetting:"), "no forgetting warning in report.html");

    // Samples: escaped in HTML; in Markdown verbatim inside fences that the text can't close.
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;&#x2f;script&gt;"), "sample not escaped");
    assert!(html.contains("Shout &lt;b&gt;bold&lt;&#x2f;b&gt; &amp; &quot;quoted&quot; &#x27;single&#x27;"));
    assert!(html.contains("a | b\nsecond line\n```\nnot the end of a block"));
    assert!(
        md.contains("````text\na | b\nsecond line\n```\nnot the end of a block\n````\n"),
        "tuned sample not fenced safely:\n{md}"
    );
    assert!(md.contains("### Sample 2 (eval file line 5)") && md.contains("**Reference**\n\n```text\n(none)\n```"));

    // Config verbatim; the manifest pretty-printed.
    let config = read(&run.join("config.toml"));
    assert!(md.contains(&format!("```toml\n{}\n```", config.trim_end_matches('\n'))));
    assert!(html.contains("<summary>run.json</summary>") && html.contains("&quot;steps_completed&quot;: 8"));

    // Self-contained: no script, stylesheet, image, frame or URL; only the SVG namespace.
    let lower = html.to_lowercase();
    for banned in ["<script", "<link", "<img", "<iframe", "<object", "<embed", "src=", "href=", "url(", "@import"] {
        assert!(!lower.contains(banned), "report.html contains {banned}");
    }
    assert_eq!(
        lower.matches("http").count(),
        lower.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "a URL other than the SVG namespace"
    );
    // The plots are inlined as written beside the reports, and linked from the Markdown.
    let loss_svg = read(&run.join("loss.svg"));
    assert!(html.contains(&loss_svg) && html.contains(&read(&run.join("lr.svg"))));
    assert!(md.contains("![loss](loss.svg)") && md.contains("![learning rate](lr.svg)"));
    // One marker per eval (base, step 4, step 8).
    assert_eq!(loss_svg.matches("<circle").count(), 3);

    // Rendered: the smoothed train-loss line and the eval line are on screen.
    let png = d.join("report.png");
    screenshot(&run.join("report.html").canonicalize().unwrap(), &png, &d.join("chromium-profile"));
    let (w, h, pixels) = decode_png(&png);
    assert_eq!((w, h), (1280, 2000));
    let train_line =
        pixels.iter().filter(|&&p| near(p, (SMOOTHED_COLOR.0, SMOOTHED_COLOR.1, SMOOTHED_COLOR.2), 12)).count();
    let eval_line = pixels.iter().filter(|&&p| near(p, (EVAL_COLOR.0, EVAL_COLOR.1, EVAL_COLOR.2), 12)).count();
    let not_white = pixels.iter().filter(|&&p| !near(p, (255, 255, 255), 8)).count();
    println!("screenshot: {train_line} pixels of the train-loss colour, {eval_line} of the eval-loss colour, {not_white} not white");
    // The legend's samples are under 100 pixels each, the three eval markers about 150.
    assert!(train_line > 600, "only {train_line} pixels of the train-loss colour: the plot did not render");
    assert!(eval_line > 600, "only {eval_line} pixels of the eval-loss colour: the plot did not render");
    assert!(not_white > 20_000, "the page looks blank ({not_white} non-white pixels)");

    // Control: the same page without its SVG elements shows none of the line colours, so the
    // counts above measure the plots.
    let mut stripped = html.clone();
    while let (Some(a), Some(b)) = (stripped.find("<svg"), stripped.find("</svg>")) {
        stripped.replace_range(a..b + "</svg>".len(), "");
    }
    let control = run.join("control.html");
    std::fs::write(&control, stripped).unwrap();
    let png = d.join("control.png");
    screenshot(&control.canonicalize().unwrap(), &png, &d.join("chromium-profile"));
    let (_, _, pixels) = decode_png(&png);
    let train_line =
        pixels.iter().filter(|&&p| near(p, (SMOOTHED_COLOR.0, SMOOTHED_COLOR.1, SMOOTHED_COLOR.2), 12)).count();
    assert_eq!(train_line, 0, "the train-loss colour appears without the plot");
}

#[test]
fn report_refuses_folders_that_are_not_runs_and_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("empty")).unwrap();
    let o = common::loratune(d, &["report", "empty"]);
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains("empty/run.json") && e.contains("loratune train` output folder"), "{e}");

    // A manifest without the fields a run writes is refused, naming the first one missing.
    std::fs::write(d.join("empty/run.json"), r#"{"status": "completed", "steps_completed": 1, "total_steps": 1}"#)
        .unwrap();
    std::fs::write(d.join("empty/metrics.jsonl"), "").unwrap();
    let o = common::loratune(d, &["report", "empty"]);
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains("empty/run.json") && e.contains("missing field `loratune_version`"), "{e}");

    // A whole manifest, as a one-step run writes it, beside a torn metrics line.
    let cfg = common::run_config(Path::new("model.gguf"), &["train.jsonl"], "empty", &[]);
    let manifest = json!({
        "loratune_version": "0.1.0", "git_commit": "unknown", "command_line": ["loratune", "train", "run.toml"],
        "config_source": "run.toml", "config": cfg,
        "base_model": {"source": "model.gguf", "kind": "gguf", "resolved": "model.gguf",
                       "weight_files": ["model.gguf"], "num_parameters": 1000},
        "base_model_files": [{"path": "model.gguf", "bytes": 10, "sha256": "00"}], "init_adapter": null,
        "data": [], "eval_set": "none", "train_examples": 4, "eval_examples": 0, "lora_parameters": 64,
        "total_steps": 1, "seed": 0, "device": "cpu", "dtype": "f32", "threads": 2,
        "started_at": "2026-12-03T00:00:00Z", "sessions": [{"started_at": "2026-12-03T00:00:00Z", "from_step": 0}],
        "status": "completed", "steps_completed": 1, "ended_at": null, "wall_seconds": 1.0, "error": null
    });
    std::fs::write(d.join("empty/run.json"), manifest.to_string()).unwrap();
    std::fs::write(
        d.join("empty/metrics.jsonl"),
        "{\"step\": 1, \"loss\": 2.0, \"elapsed_s\": 1}\n{\"step\": 2, \"loss\": 2.0\n",
    )
    .unwrap();
    let o = common::loratune(d, &["report", "empty"]);
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains("empty/metrics.jsonl line 2"), "{e}");
    assert!(!d.join("empty/report.html").exists(), "nothing written for a bad run folder");
}
