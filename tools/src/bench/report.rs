//! Latency histograms as people read them: percentiles (never averages alone), the
//! full distribution in HdrHistogram's `.hgrm` text format, and an SVG plot of it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

/// Values are recorded in microseconds, 1 µs to 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// count, min, p50, p90, p99, p99.9, max, in milliseconds.
pub fn summary(title: &str, h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return format!("{title}: no samples\n");
    }
    format!(
        "{title}: count {}  min {:.3} ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms\n",
        h.len(),
        ms(h.min()),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    )
}

/// The percentile distribution in the `.hgrm` format HdrHistogram's
/// `outputPercentileDistribution` writes (values in milliseconds), which the plotting
/// tools of that ecosystem read.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {inverse}",
            ms(v.value_iterated_to()),
            q,
            total,
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        ms(h.max()),
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

/// Reads back the rows of an `.hgrm` text: (value ms, percentile, total count).
pub fn parse_hgrm(text: &str) -> Option<Vec<(f64, f64, u64)>> {
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let value = fields.next()?.parse().ok()?;
        let percentile = fields.next()?.parse().ok()?;
        let count = fields.next()?.parse().ok()?;
        rows.push((value, percentile, count));
    }
    Some(rows)
}

/// An SVG of latency against percentile, the x axis spread as 1/(1-p) so the tail is
/// visible (as HdrHistogram's plots do).
pub fn svg(path: &Path, title: &str, h: &Histogram<u64>) -> Result<()> {
    use plotters::prelude::*;
    let points: Vec<(f64, f64)> = h
        .iter_quantiles(5)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            let x = (1.0 / (1.0 - v.quantile_iterated_to())).log10();
            (x, ms(v.value_iterated_to()))
        })
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max).max(1.0);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1 + 0.001;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).context("svg")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .context("svg chart")?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 1.0 / 10f64.powf(*x));
            format!("{p:.3}%")
        })
        .draw()
        .context("svg mesh")?;
    chart
        .draw_series(LineSeries::new(points, &BLUE))
        .context("svg series")?;
    root.present().context("svg write")?;
    Ok(())
}
