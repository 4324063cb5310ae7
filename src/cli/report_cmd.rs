//! `loratune report`: report.html (self-contained) and report.md with loss plots for a
//! training run folder.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

use crate::report::{self, plot, RunSummary};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A `loratune train` output folder (run.json, metrics.jsonl, eval.json, ...).
    pub run_dir: PathBuf,
    /// Where to write report.html, report.md, loss.svg and lr.svg (default: RUN_DIR).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(a: ReportArgs) -> Result<()> {
    let summary = RunSummary::load(&a.run_dir)?;
    let out = a.out.unwrap_or_else(|| a.run_dir.clone());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let loss = plot::loss_svg(&summary.train_losses(), &summary.eval_losses())?;
    let lr = plot::lr_svg(&summary.learning_rates())?;
    let html = report::html::render(&summary, loss.as_deref(), lr.as_deref());
    let markdown = report::markdown::render(&summary, loss.is_some(), lr.is_some());

    let mut files: Vec<(&str, &str)> = Vec::new();
    if let Some(svg) = &loss {
        files.push((report::LOSS_PLOT_FILE, svg));
    }
    if let Some(svg) = &lr {
        files.push((report::LR_PLOT_FILE, svg));
    }
    // The Markdown links the plots, so they are written first.
    files.push((report::MARKDOWN_FILE, &markdown));
    files.push((report::HTML_FILE, &html));
    for (name, text) in files {
        let path = out.join(name);
        crate::atomic::write_bytes(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote   {}", path.display());
    }
    Ok(())
}
