//! The markdown tables. Repetitions of a test are combined: rates as the median with
//! the range, latencies as one histogram of every sample of every repetition.

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::harness::{histogram, Latency, Params, Throughput, TransportResults};

/// Nanoseconds as microseconds with one decimal.
fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn quantiles(h: &Histogram<u64>, qs: &[f64]) -> String {
    qs.iter()
        .map(|q| us(h.value_at_quantile(*q)))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn merged<'a>(hs: impl Iterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut all = histogram();
    for h in hs {
        // Same bounds everywhere, so adding cannot fail.
        let _ = all.add(h);
    }
    all
}

/// Renders every result as markdown.
pub fn render(p: &Params, runs: usize, results: &[TransportResults]) -> String {
    let mut out = String::new();
    let repeated = if runs > 1 {
        format!("; {runs} runs: msgs/s median (min–max), percentiles over all runs' samples")
    } else {
        String::new()
    };
    if results.iter().any(|r| r.throughput.is_some()) {
        let _ = writeln!(
            out,
            "### One-way throughput: 100-byte messages, {} measured after {} warm-up \
             (≤ {} s){repeated}\n",
            p.messages,
            p.warmup_messages,
            p.max_duration.as_secs()
        );
        out.push_str(
            "| transport | delivered | msgs/s | one-way p50 µs | p90 | p99 | p99.9 | max | notes |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for r in results {
            match &r.throughput {
                Some(Ok(t)) => throughput_row(&mut out, r.name, t),
                Some(Err(e)) => {
                    let _ = writeln!(out, "| {} | failed: {e} |||||||", r.name);
                }
                None => {}
            }
        }
        out.push('\n');
    }
    if results.iter().any(|r| r.ping_pong.is_some()) {
        let _ = writeln!(
            out,
            "### Ping-pong round trip: 100-byte messages, {} measured after {} warm-up{}\n",
            p.round_trips,
            p.warmup_round_trips,
            if runs > 1 {
                format!(", × {runs} runs")
            } else {
                String::new()
            }
        );
        out.push_str(
            "| transport | round trips | RTT p50 µs | p90 | p99 | p99.9 | max | notes |\n\
             |---|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for r in results {
            if let Some(rtt) = &r.ping_pong {
                latency_row(&mut out, r.name, rtt, &[0.5, 0.9, 0.99, 0.999]);
            }
        }
        out.push('\n');
    }
    if results.iter().any(|r| r.handshake.is_some()) {
        let _ = writeln!(
            out,
            "### Handshake: connect until both ends are connected, {} measured after {} \
             warm-up{}\n",
            p.handshakes,
            p.warmup_handshakes,
            if runs > 1 {
                format!(", × {runs} runs")
            } else {
                String::new()
            }
        );
        out.push_str(
            "| transport | handshakes | p50 µs | p90 | p99 | max | notes |\n\
             |---|---:|---:|---:|---:|---:|---|\n",
        );
        for r in results {
            if let Some(h) = &r.handshake {
                latency_row(&mut out, r.name, h, &[0.5, 0.9, 0.99]);
            }
        }
        out.push('\n');
    }
    out
}

fn throughput_row(out: &mut String, name: &str, runs: &[Throughput]) {
    let mut by_rate: Vec<&Throughput> = runs.iter().collect();
    by_rate.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let (Some(min), Some(max)) = (by_rate.first(), by_rate.last()) else {
        return;
    };
    let median = by_rate[by_rate.len() / 2];
    let rate = if runs.len() > 1 {
        format!("{:.0} ({:.0}–{:.0})", median.rate(), min.rate(), max.rate())
    } else {
        format!("{:.0}", median.rate())
    };
    let latency = merged(runs.iter().map(|t| &t.latency));
    let received: u64 = runs.iter().map(|t| t.received).sum();
    let sent: u64 = runs.iter().map(|t| t.sent).sum();
    let _ = writeln!(
        out,
        "| {name} | {received} / {sent} | {rate} | {} | {} | {} |",
        quantiles(&latency, &[0.5, 0.9, 0.99, 0.999]),
        us(latency.max()),
        median.note
    );
}

fn latency_row(out: &mut String, name: &str, r: &Result<Vec<Latency>, String>, qs: &[f64]) {
    match r {
        Ok(runs) => {
            let latency = merged(runs.iter().map(|l| &l.latency));
            let failures: u64 = runs.iter().map(|l| l.failures).sum();
            let failures = if failures > 0 {
                format!("{failures} failed; ")
            } else {
                String::new()
            };
            let note = runs.last().map_or("", |l| l.note.as_str());
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {failures}{note} |",
                latency.len(),
                quantiles(&latency, qs),
                us(latency.max()),
            );
        }
        Err(e) => {
            let _ = writeln!(out, "| {name} | failed: {e} ||||||");
        }
    }
}
