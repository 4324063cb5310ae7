//! report.html: one self-contained page (inline CSS, the plots inlined as SVG; no script,
//! font, image file or URL), readable without a network. Every string that comes from
//! the run folder is HTML-escaped.

use minijinja::HtmlEscape as Esc;
use std::fmt::Write;

use super::tables::{self, Table, NOT_CONFIGURED};
use super::{RunSummary, LINT_FILE, SAMPLES_FILE};

const STYLE: &str = r#"
body { font-family: system-ui, "Segoe UI", "DejaVu Sans", Arial, sans-serif; color: #1c1c1c; line-height: 1.45;
       max-width: 1180px; margin: 24px auto; padding: 0 24px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.3em; border-bottom: 1px solid #d8d8d8; padding-bottom: 4px; margin-top: 34px; }
.sub { color: #555; margin: 0 0 16px; }
table { border-collapse: collapse; margin: 10px 0; }
th, td { border: 1px solid #d0d0d0; padding: 5px 12px; text-align: left; vertical-align: top; }
th { background: #f1f3f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warning { background: #fdecea; border: 1px solid #e3a39b; border-left: 6px solid #c62828; color: #7f1d12;
           padding: 10px 14px; margin: 14px 0; font-weight: 600; }
.note { color: #666; font-style: italic; }
figure { margin: 10px 0; }
figure svg { max-width: 100%; height: auto; border: 1px solid #e4e4e4; }
pre { background: #f6f7f8; border: 1px solid #e1e3e5; padding: 10px 12px; overflow-x: auto; font-size: 13px; }
table.samples { width: 100%; table-layout: fixed; }
table.samples td { white-space: pre-wrap; overflow-wrap: anywhere; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
table.samples tr.sample-head td { background: #f8f8f8; font-family: inherit; font-weight: 600; white-space: normal; }
details summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
"#;

fn table(out: &mut String, t: &Table) {
    out.push_str("<table>\n<thead><tr>");
    for h in &t.header {
        let _ = write!(out, "<th>{}</th>", Esc(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in &t.rows {
        out.push_str("<tr>");
        for cell in row {
            // Numbers right-aligned, so their digits line up.
            let class = if t.align_numbers && is_number(cell) { " class=\"num\"" } else { "" };
            let _ = write!(out, "<td{class}>{}</td>", Esc(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
}

/// "1,234", "-0.50%", "6.4979": numbers as the tables print them.
fn is_number(cell: &str) -> bool {
    let digits = cell.trim_start_matches(['+', '-']).trim_end_matches('%').replace(',', "");
    !digits.is_empty() && digits.parse::<f64>().is_ok_and(f64::is_finite)
}

fn note(out: &mut String, text: &str) {
    let _ = writeln!(out, "<p class=\"note\">{}</p>", Esc(text));
}

/// The page. `loss_svg` and `lr_svg` are inlined as they are (plotters escapes the text
/// it writes into them).
pub fn render(s: &RunSummary, loss_svg: Option<&str>, lr_svg: Option<&str>) -> String {
    let mut out = String::new();
    let name = s.name();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>loratune report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        Esc(&name)
    );
    let _ = writeln!(out, "<h1>loratune report: {}</h1>", Esc(&name));
    let m = &s.manifest;
    let model = tables::base_model(s);
    let _ = writeln!(
        out,
        "<p class=\"sub\">{} &middot; {} of {} steps &middot; {}</p>",
        Esc(m.status.as_str()),
        m.steps_completed,
        m.total_steps,
        Esc(model)
    );
    if let Some(e) = &m.error {
        let _ = writeln!(out, "<div class=\"warning\">The run failed: {}</div>", Esc(e));
    }
    if let Some(w) = tables::forgetting_warning(s) {
        let _ = writeln!(out, "<div class=\"warning\">{}</div>", Esc(&w));
    }

    out.push_str("<h2>Loss</h2>\n");
    match loss_svg {
        Some(svg) => {
            let _ = writeln!(out, "<figure id=\"loss-plot\">\n{svg}</figure>");
        }
        None => note(&mut out, "no loss was logged (metrics.jsonl has no training step or eval)"),
    }
    if let Some(svg) = lr_svg {
        let _ = writeln!(out, "<figure id=\"lr-plot\">\n{svg}</figure>");
    }

    out.push_str("<h2>Metrics</h2>\n");
    match tables::eval_table(s) {
        Some(t) => table(&mut out, &t),
        None => note(&mut out, "no eval set (eval.json is absent or holds no eval)"),
    }
    table(&mut out, &tables::training_table(s));

    out.push_str("<h2>Generation: base vs tuned</h2>\n");
    match (tables::generation_table(s), s.eval.as_ref().and_then(|e| e.generation.as_ref())) {
        (Some(t), Some(g)) => {
            let _ = writeln!(
                out,
                "<p>The base and the tuned model's answers to {} eval prompts, scored against the references.</p>",
                g.examples
            );
            table(&mut out, &t);
        }
        _ => note(&mut out, NOT_CONFIGURED),
    }

    out.push_str("<h2>Regression set</h2>\n");
    match tables::regression_table(s) {
        Some(t) => table(&mut out, &t),
        None => note(&mut out, NOT_CONFIGURED),
    }

    out.push_str("<h2>Data lint</h2>\n");
    match tables::lint_table(s) {
        Some(t) => {
            table(&mut out, &t);
            if s.has_lint_file {
                let _ = writeln!(out, "<p>The full lint report is <code>{LINT_FILE}</code> in the run folder.</p>");
            }
        }
        None => note(&mut out, NOT_CONFIGURED),
    }

    out.push_str("<h2>Samples</h2>\n");
    match &s.samples {
        Some(samples) if !samples.is_empty() => {
            out.push_str("<table class=\"samples\">\n<thead><tr><th>prompt</th><th>reference</th><th>base</th><th>tuned</th></tr></thead>\n<tbody>\n");
            for (i, x) in samples.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "<tr class=\"sample-head\"><td colspan=\"4\">Sample {} &middot; eval file line {}</td></tr>",
                    i + 1,
                    x.line
                );
                let reference = x.reference.as_deref().unwrap_or("(none)");
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    Esc(&x.prompt),
                    Esc(reference),
                    Esc(&x.base),
                    Esc(&x.tuned)
                );
            }
            out.push_str("</tbody>\n</table>\n");
        }
        Some(_) => note(&mut out, &format!("{SAMPLES_FILE} is empty")),
        None => note(&mut out, NOT_CONFIGURED),
    }

    out.push_str("<h2>Config</h2>\n");
    match &s.config_toml {
        Some(c) => {
            let _ = writeln!(
                out,
                "<details open>\n<summary>config.toml (resolved)</summary>\n<pre>{}</pre>\n</details>",
                Esc(c)
            );
        }
        None => note(&mut out, "config.toml is missing from the run folder"),
    }
    out.push_str("<h2>Manifest</h2>\n");
    let _ =
        writeln!(out, "<details>\n<summary>run.json</summary>\n<pre>{}</pre>\n</details>", Esc(&s.manifest_pretty()));
    out.push_str("</body>\n</html>\n");
    out
}
