//! The report's tables as plain strings, built once so that the HTML and the Markdown
//! report print the same numbers, formatted the same way.

use super::{fmt, RunSummary};

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Whether numbers line up in columns; false for lists of unlike quantities.
    pub align_numbers: bool,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new(), align_numbers: true }
    }

    fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }
}

/// Base, best and final eval loss with perplexity and the change from the base model.
pub fn eval_table(s: &RunSummary) -> Option<Table> {
    let mut t = Table::new(&["eval", "step", "loss", "perplexity", "vs base"]);
    for (name, row) in s.eval_rows() {
        if let Some(r) = row {
            t.row(vec![
                name.to_string(),
                r.step.to_string(),
                fmt::loss(r.loss),
                fmt::perplexity(r.perplexity),
                r.change_pct.map_or("n/a".into(), fmt::change_pct),
            ]);
        }
    }
    (!t.rows.is_empty()).then_some(t)
}

/// What the run did: status, steps, data seen, time, throughput, model and device.
pub fn training_table(s: &RunSummary) -> Table {
    let m = &s.manifest;
    let totals = s.training_totals();
    let mut t = Table::new(&["run", "value"]);
    t.align_numbers = false;
    let mut kv = |k: &str, v: String| t.row(vec![k.to_string(), v]);
    kv("status", m.status.as_str().to_string());
    kv("steps", format!("{} of {}", m.steps_completed, m.total_steps));
    kv("epochs reached", totals.epochs.to_string());
    kv("tokens seen", fmt::count(totals.tokens));
    kv("wall time", fmt::seconds(m.wall_seconds));
    kv("mean tokens/s (in training steps)", totals.tokens_per_s.map_or("n/a".into(), fmt::rate));
    if let Some(l) = totals.last_train_loss {
        kv("last train loss", fmt::loss(l));
    }
    kv("train examples", fmt::count(m.train_examples));
    kv("eval examples", fmt::count(m.eval_examples));
    kv("LoRA parameters", fmt::count(m.lora_parameters));
    kv("base model", m.base_model.source.clone());
    kv("device", format!("{} ({})", m.device, m.dtype));
    kv("started", m.started_at.clone());
    if let Some(v) = &m.ended_at {
        kv("ended", v.clone());
    }
    if let Some(e) = &m.error {
        kv("error", e.clone());
    }
    t
}

/// Generation scores of the base and the tuned model on the same prompts.
pub fn generation_table(s: &RunSummary) -> Option<Table> {
    let g = s.eval.as_ref()?.generation.as_ref()?;
    // Both sides are scored when any answer had a reference.
    let (base, tuned) = (&g.base.as_ref()?.mean, &g.tuned.as_ref()?.mean);
    let mut t = Table::new(&["metric", "base", "tuned", "change"]);
    let rows = [
        ("exact match", Some(base.exact_match), Some(tuned.exact_match)),
        ("token F1", Some(base.token_f1), Some(tuned.token_f1)),
        ("ROUGE-L", Some(base.rouge_l), Some(tuned.rouge_l)),
        ("valid JSON", base.json_valid, tuned.json_valid),
    ];
    for (name, base, tuned) in rows {
        let cell = |x: Option<f64>| x.map_or("n/a".to_string(), fmt::score);
        let change = match (base, tuned) {
            (Some(b), Some(t)) => format!("{:+.3}", t - b),
            _ => "n/a".to_string(),
        };
        t.row(vec![name.to_string(), cell(base), cell(tuned), change]);
    }
    Some(t)
}

/// The regression set's loss before and after tuning, against the forgetting threshold.
pub fn regression_table(s: &RunSummary) -> Option<Table> {
    let r = s.eval.as_ref()?.regression.as_ref()?;
    let mut t =
        Table::new(&["regression set", "examples", "base loss", "tuned loss", "change", "threshold", "verdict"]);
    t.row(vec![
        r.file.display().to_string(),
        fmt::count(r.examples),
        fmt::loss(r.base_loss),
        fmt::loss(r.tuned_loss),
        fmt::fraction_pct(r.relative_change, true),
        fmt::fraction_pct(r.threshold, false),
        if r.forgetting { "FORGETTING".to_string() } else { "ok".to_string() },
    ]);
    Some(t)
}

/// The base model as the manifest names it.
pub fn base_model(s: &RunSummary) -> &str {
    &s.manifest.base_model.source
}

/// The forgetting warning, when the regression check found it.
pub fn forgetting_warning(s: &RunSummary) -> Option<String> {
    let r = s.eval.as_ref()?.regression.as_ref()?;
    r.forgetting.then(|| {
        format!(
            "Forgetting: the tuned model's loss on the regression set {} is {} above the base model's ({} to {}), past the threshold of {}.",
            r.file.display(),
            fmt::fraction_pct(r.relative_change, false),
            fmt::loss(r.base_loss),
            fmt::loss(r.tuned_loss),
            fmt::fraction_pct(r.threshold, false)
        )
    })
}

pub fn lint_table(s: &RunSummary) -> Option<Table> {
    let rows = s.lint_rows()?;
    let mut t = Table::new(&["lint", "count"]);
    for (k, v) in rows {
        t.row(vec![k, v]);
    }
    Some(t)
}

/// A one-line note for sections the run did not produce.
pub const NOT_CONFIGURED: &str = "not configured for this run";

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(eval_json: &str) -> RunSummary {
        let d = tempfile::tempdir().unwrap();
        let manifest = crate::run::manifest::Manifest {
            steps_completed: 4,
            total_steps: 4,
            wall_seconds: 65.0,
            ..crate::run::manifest::Manifest::example()
        };
        std::fs::write(d.path().join("run.json"), serde_json::to_string(&manifest).unwrap()).unwrap();
        std::fs::write(d.path().join("metrics.jsonl"), "{\"step\": 0, \"eval_loss\": 2.5, \"elapsed_s\": 0.1}\n")
            .unwrap();
        std::fs::write(d.path().join("eval.json"), eval_json).unwrap();
        RunSummary::load(d.path()).unwrap()
    }

    #[test]
    fn regression_over_threshold_is_flagged_and_explained() {
        let s = summary(
            r#"{"base": {"step": 0, "loss": 2.5}, "final": {"step": 4, "loss": 2.0}, "history": [{"step": 4, "loss": 2.0}],
                "eval_examples": 3, "eval_tokens": 30, "eval_targets": 10,
                "regression": {"file": "keep.jsonl", "examples": 20, "base_loss": 1.25, "tuned_loss": 1.5, "relative_change": 0.2, "threshold": 0.05, "forgetting": true}}"#,
        );
        let t = regression_table(&s).unwrap();
        assert_eq!(t.rows[0], ["keep.jsonl", "20", "1.2500", "1.5000", "+20.00%", "5.00%", "FORGETTING"]);
        let w = forgetting_warning(&s).unwrap();
        assert!(
            w.contains("keep.jsonl is 20.00% above the base model's (1.2500 to 1.5000), past the threshold of 5.00%"),
            "{w}"
        );
        let e = eval_table(&s).unwrap();
        assert_eq!(
            e.rows,
            vec![
                vec!["base", "0", "2.5000", &fmt::perplexity(2.5f64.exp()), "+0.00%"],
                vec!["final", "4", "2.0000", &fmt::perplexity(2f64.exp()), "-20.00%"]
            ]
        );
        assert!(generation_table(&s).is_none() && lint_table(&s).is_none());
    }

    #[test]
    fn generation_scores_side_by_side_with_missing_json_validity() {
        let s = summary(
            r#"{"history": [], "eval_examples": 8, "eval_tokens": 80, "eval_targets": 40,
                "generation": {"examples": 8, "max_new_tokens": 64,
                               "base": {"examples": 8, "exact_match": 0.125, "token_f1": 0.5, "rouge_l": 0.4, "json_valid": null},
                               "tuned": {"examples": 8, "exact_match": 0.75, "token_f1": 0.875, "rouge_l": 0.9}}}"#,
        );
        let t = generation_table(&s).unwrap();
        assert_eq!(t.rows[0], ["exact match", "0.125", "0.750", "+0.625"]);
        assert_eq!(t.rows[3], ["valid JSON", "n/a", "n/a", "n/a"]);
        assert!(forgetting_warning(&s).is_none());
        let run = training_table(&s);
        assert!(run.rows.contains(&vec!["wall time".to_string(), "65.0 s (1m 05s)".to_string()]));
        assert!(run.rows.contains(&vec!["steps".to_string(), "4 of 4".to_string()]));
    }
}
