//! The run's curves as SVG (plotters' SVG backend): train loss per step with a moving
//! average over it (per-step loss is noisy), eval loss at each eval step with step 0 being
//! the base model, and the learning-rate schedule. Text is left to the viewer's fonts.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// Per-step train loss: light, since it is the noisy one.
pub const TRAIN_COLOR: RGBColor = RGBColor(150, 190, 225);
/// The moving average of train loss: the line to read.
pub const SMOOTHED_COLOR: RGBColor = RGBColor(20, 70, 160);
pub const EVAL_COLOR: RGBColor = RGBColor(230, 90, 20);
pub const LR_COLOR: RGBColor = RGBColor(40, 150, 80);

pub const LOSS_SIZE: (u32, u32) = (960, 440);
pub const LR_SIZE: (u32, u32) = (960, 260);

const FONT: &str = "sans-serif";
const GRID: RGBColor = RGBColor(232, 232, 232);

/// How many steps the smoothed train curve averages: about a tenth of the run, so that
/// it follows the trend of short and long runs alike.
pub fn smoothing_window(steps: usize) -> usize {
    (steps / 10).clamp(2, 100)
}

/// The trailing mean of each point and the `window - 1` before it.
pub fn moving_average(points: &[(usize, f64)], window: usize) -> Vec<(usize, f64)> {
    let window = window.max(1);
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(points.len());
    for (i, &(step, value)) in points.iter().enumerate() {
        sum += value;
        if i >= window {
            sum -= points[i - window].1;
        }
        out.push((step, sum / (i + 1).min(window) as f64));
    }
    out
}

/// A y range around `values` with a margin, never empty.
fn y_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { 0.06 * (hi - lo) } else { 0.05 * lo.abs().max(1e-3) };
    (lo - pad, hi + pad)
}

/// Enough decimals to tell apart ticks about a tenth of `span` apart.
fn label_decimals(span: f64) -> usize {
    if span <= 0.0 || !span.is_finite() {
        return 3;
    }
    (1.0 - (span / 10.0).log10().floor()).clamp(0.0, 6.0) as usize
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// The axes of both plots: optimizer steps on x, floats on y.
type StepChart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordusize, plotters::coord::types::RangedCoordf64>,
>;

/// What sets one plot apart from the other; the frame, grid and fonts are shared.
struct Frame<'f> {
    size: (u32, u32),
    caption: &'f str,
    caption_size: u32,
    last_step: usize,
    y: std::ops::Range<f64>,
    y_desc: &'f str,
    y_label: &'f dyn Fn(&f64) -> String,
    y_labels: usize,
    /// A box naming the labelled series, upper right.
    legend: bool,
}

/// An SVG plot against the optimizer step: the frame, what `series` draws in it, the legend.
fn step_plot(f: Frame<'_>, series: impl FnOnce(&mut StepChart<'_, '_>) -> Result<()>) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, f.size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(f.caption, (FONT, f.caption_size))
            .margin(14)
            .x_label_area_size(46)
            .y_label_area_size(66)
            .build_cartesian_2d(0usize..f.last_step, f.y)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .x_desc("optimizer step")
            .y_desc(f.y_desc)
            .y_label_formatter(f.y_label)
            .y_labels(f.y_labels)
            .axis_desc_style((FONT, 15))
            .label_style((FONT, 13))
            .draw()
            .map_err(plot_error)?;
        series(&mut chart)?;
        if f.legend {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.9))
                .border_style(RGBColor(160, 160, 160))
                .label_font((FONT, 14))
                .draw()
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// The loss plot, or `None` when the run logged no loss at all.
pub fn loss_svg(train: &[(usize, f64)], eval: &[(usize, f64)]) -> Result<Option<String>> {
    if train.is_empty() && eval.is_empty() {
        return Ok(None);
    }
    let window = smoothing_window(train.len());
    let smoothed = moving_average(train, window);
    let last_step = train.iter().chain(eval).map(|p| p.0).max().unwrap_or(0).max(1);
    let (y_lo, y_hi) = y_range(train.iter().chain(eval).map(|p| p.1));
    let decimals = label_decimals(y_hi - y_lo);
    let frame = Frame {
        size: LOSS_SIZE,
        caption: "Loss",
        caption_size: 22,
        last_step,
        y: y_lo..y_hi,
        y_desc: "loss (mean per target token)",
        y_label: &|v| format!("{:.*}", decimals, v),
        // plotters' own default, which this plot always had.
        y_labels: 11,
        legend: true,
    };
    let svg = step_plot(frame, |chart| {
        if !train.is_empty() {
            chart
                .draw_series(LineSeries::new(train.iter().copied(), TRAIN_COLOR.stroke_width(1)))
                .map_err(plot_error)?
                .label("train loss per step")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], TRAIN_COLOR.stroke_width(2)));
            chart
                .draw_series(LineSeries::new(smoothed.iter().copied(), SMOOTHED_COLOR.stroke_width(3)))
                .map_err(plot_error)?
                .label(format!("train loss, mean of the last {window} steps"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], SMOOTHED_COLOR.stroke_width(3)));
        }
        if !eval.is_empty() {
            chart
                .draw_series(LineSeries::new(eval.iter().copied(), EVAL_COLOR.stroke_width(2)))
                .map_err(plot_error)?
                .label("eval loss (step 0: base model)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], EVAL_COLOR.stroke_width(2)));
            chart.draw_series(eval.iter().map(|&p| Circle::new(p, 4, EVAL_COLOR.filled()))).map_err(plot_error)?;
        }
        Ok(())
    })?;
    Ok(Some(svg))
}

/// The learning rate of each step, or `None` when no step was logged.
pub fn lr_svg(lrs: &[(usize, f64)]) -> Result<Option<String>> {
    if lrs.is_empty() {
        return Ok(None);
    }
    let last_step = lrs.iter().map(|p| p.0).max().unwrap_or(0).max(1);
    let hi = lrs.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let hi = if hi > 0.0 { hi * 1.08 } else { 1.0 };
    let frame = Frame {
        size: LR_SIZE,
        caption: "Learning rate",
        caption_size: 18,
        last_step,
        y: 0.0..hi,
        y_desc: "learning rate",
        y_label: &|v| format!("{v:.1e}"),
        y_labels: 5,
        legend: false,
    };
    let svg = step_plot(frame, |chart| {
        chart.draw_series(LineSeries::new(lrs.iter().copied(), LR_COLOR.stroke_width(2))).map_err(plot_error)?;
        Ok(())
    })?;
    Ok(Some(svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_is_the_trailing_mean() {
        let p = [(1, 4.0), (2, 2.0), (3, 6.0), (4, 0.0)];
        assert_eq!(moving_average(&p, 2), vec![(1, 4.0), (2, 3.0), (3, 4.0), (4, 3.0)]);
        assert_eq!(moving_average(&p, 3), vec![(1, 4.0), (2, 3.0), (3, 4.0), (4, 8.0 / 3.0)]);
        assert_eq!(moving_average(&p, 1), p.to_vec());
    }

    #[test]
    fn loss_plot_has_every_series_and_the_axis_labels() {
        let train: Vec<(usize, f64)> = (1..=30).map(|s| (s, 3.0 - 0.05 * s as f64)).collect();
        let eval = [(0, 3.2), (10, 2.6), (20, 2.2), (30, 1.9)];
        let svg = loss_svg(&train, &eval).unwrap().unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for needle in [
            "optimizer step",
            "loss (mean per target token)",
            "train loss per step",
            "mean of the last 3 steps",
            "eval loss (step 0: base model)",
        ] {
            assert!(svg.contains(needle), "{needle} missing");
        }
        let stroke = |c: RGBColor| format!("stroke=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        for c in [TRAIN_COLOR, SMOOTHED_COLOR, EVAL_COLOR] {
            assert!(svg.to_uppercase().contains(&stroke(c).to_uppercase()), "{} not drawn", stroke(c));
        }
        // One eval marker per eval.
        assert_eq!(svg.matches("<circle").count(), eval.len());
        assert!(loss_svg(&[], &[]).unwrap().is_none());
    }

    #[test]
    fn tick_labels_get_the_decimals_their_spacing_needs() {
        assert_eq!(label_decimals(3.0), 2); // ticks 0.5 apart: 6.50, 6.00
        assert_eq!(label_decimals(0.2), 3);
        assert_eq!(label_decimals(40.0), 1);
        assert_eq!(label_decimals(0.0), 3);
    }

    #[test]
    fn single_points_and_flat_curves_still_plot() {
        assert!(loss_svg(&[(1, 2.0)], &[]).unwrap().is_some());
        assert!(loss_svg(&[], &[(0, 2.0)]).unwrap().is_some());
        assert!(lr_svg(&[(1, 0.0), (2, 0.0)]).unwrap().is_some());
    }
}
