//! report.md: the same report as Markdown (GitHub-flavoured tables). The plots are linked
//! files beside it; samples, the config and the manifest go in fenced blocks, each fence
//! longer than any run of backticks in its text, so no data can end a block early.

use std::fmt::Write;

use super::tables::{self, Table, NOT_CONFIGURED};
use super::{RunSummary, LINT_FILE, LOSS_PLOT_FILE, LR_PLOT_FILE, SAMPLES_FILE};
use crate::markdown::{cell, fenced};

fn table(out: &mut String, t: &Table) {
    let _ = writeln!(out, "| {} |", t.header.iter().map(|h| cell(h)).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        t.header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 || !t.align_numbers { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for row in &t.rows {
        let _ = writeln!(out, "| {} |", row.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | "));
    }
    out.push('\n');
}

pub fn render(s: &RunSummary, has_loss_plot: bool, has_lr_plot: bool) -> String {
    let mut out = String::new();
    let m = &s.manifest;
    let _ = writeln!(out, "# loratune report: {}\n", cell(&s.name()));
    let model = tables::base_model(s);
    let _ = writeln!(
        out,
        "{} · {} of {} steps · {}\n",
        cell(m.status.as_str()),
        m.steps_completed,
        m.total_steps,
        cell(model)
    );
    if let Some(e) = &m.error {
        let _ = writeln!(out, "> **The run failed:** {}\n", cell(e));
    }
    if let Some(w) = tables::forgetting_warning(s) {
        let _ = writeln!(out, "> **Warning.** {}\n", cell(&w));
    }

    out.push_str("## Loss\n\n");
    if has_loss_plot {
        let _ = writeln!(out, "![loss]({LOSS_PLOT_FILE})\n");
    } else {
        out.push_str("_No loss was logged (metrics.jsonl has no training step or eval)._\n\n");
    }
    if has_lr_plot {
        let _ = writeln!(out, "![learning rate]({LR_PLOT_FILE})\n");
    }

    out.push_str("## Metrics\n\n");
    match tables::eval_table(s) {
        Some(t) => table(&mut out, &t),
        None => out.push_str("_No eval set (eval.json is absent or holds no eval)._\n\n"),
    }
    table(&mut out, &tables::training_table(s));

    out.push_str("## Generation: base vs tuned\n\n");
    match (tables::generation_table(s), s.eval.as_ref().and_then(|e| e.generation.as_ref())) {
        (Some(t), Some(g)) => {
            let _ = writeln!(
                out,
                "The base and the tuned model's answers to {} eval prompts, scored against the references.\n",
                g.examples
            );
            table(&mut out, &t);
        }
        _ => {
            let _ = writeln!(out, "_{NOT_CONFIGURED}._\n");
        }
    }

    out.push_str("## Regression set\n\n");
    match tables::regression_table(s) {
        Some(t) => table(&mut out, &t),
        None => {
            let _ = writeln!(out, "_{NOT_CONFIGURED}._\n");
        }
    }

    out.push_str("## Data lint\n\n");
    match tables::lint_table(s) {
        Some(t) => {
            table(&mut out, &t);
            if s.has_lint_file {
                let _ = writeln!(out, "The full lint report: [{LINT_FILE}]({LINT_FILE}).\n");
            }
        }
        None => {
            let _ = writeln!(out, "_{NOT_CONFIGURED}._\n");
        }
    }

    out.push_str("## Samples\n\n");
    match &s.samples {
        Some(samples) if !samples.is_empty() => {
            for (i, x) in samples.iter().enumerate() {
                let _ = writeln!(out, "### Sample {} (eval file line {})\n", i + 1, x.line);
                let reference = x.reference.as_deref().unwrap_or("(none)");
                for (label, text) in [
                    ("Prompt", x.prompt.as_str()),
                    ("Reference", reference),
                    ("Base", x.base.as_str()),
                    ("Tuned", x.tuned.as_str()),
                ] {
                    let _ = writeln!(out, "**{label}**\n\n{}", fenced(text, "text"));
                }
            }
        }
        Some(_) => {
            let _ = writeln!(out, "_{SAMPLES_FILE} is empty._\n");
        }
        None => {
            let _ = writeln!(out, "_{NOT_CONFIGURED}._\n");
        }
    }

    out.push_str("## Config (config.toml, resolved)\n\n");
    match &s.config_toml {
        Some(c) => {
            let _ = writeln!(out, "{}", fenced(c, "toml"));
        }
        None => out.push_str("_config.toml is missing from the run folder._\n\n"),
    }
    out.push_str("## Manifest (run.json)\n\n");
    let _ = write!(out, "{}", fenced(&s.manifest_pretty(), "json"));
    out
}
