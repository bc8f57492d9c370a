//! Statistics as a text table and as JSON.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{format_duration, ms};
use crate::verify::stats::{Distribution, Stats};

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

fn spread(d: &Distribution) -> String {
    if d.count == 0 {
        return "-".to_owned();
    }
    format!(
        "{} / {} / {}",
        format_duration(d.p50),
        format_duration(d.p95),
        format_duration(d.p99)
    )
}

fn table(out: &mut String, rows: &[Vec<String>], right_from: usize) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = width[c] - cell.chars().count();
            if c >= right_from {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// Statistics as text: a table of pathways, then one of services.
pub fn stats_text(stats: &Stats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} trace{}, {} span{}",
        stats.traces,
        if stats.traces == 1 { "" } else { "s" },
        stats.spans,
        if stats.spans == 1 { "" } else { "s" }
    );
    out.push('\n');
    if stats.pathways.is_empty() {
        out.push_str("pathways: none (no send or process spans)\n");
    } else {
        let mut rows = vec![[
            "pathway (producer > destination > consumer)",
            "messages",
            "deliveries",
            "queue p50 / p95 / p99",
            "processing p50 / p95 / p99",
            "errors",
            "retries",
            "broken context",
        ]
        .map(str::to_owned)
        .to_vec()];
        for p in &stats.pathways {
            let name =
                |n: &Option<String>, none: &str| n.clone().unwrap_or_else(|| none.to_owned());
            rows.push(vec![
                format!(
                    "{} > {} > {}",
                    name(&p.producer, "?"),
                    name(&p.destination, "?"),
                    name(&p.consumer, "(no consumer)")
                ),
                p.messages.to_string(),
                p.deliveries.to_string(),
                spread(&p.queue_time),
                spread(&p.processing_time),
                percent(p.error_rate()),
                percent(p.retry_rate()),
                percent(p.broken_context_rate()),
            ]);
        }
        table(&mut out, &rows, 1);
    }
    out.push('\n');
    let mut rows = vec![[
        "service",
        "spans",
        "self time",
        "share",
        "per span p50 / p95 / p99",
    ]
    .map(str::to_owned)
    .to_vec()];
    for s in &stats.services {
        rows.push(vec![
            s.service.clone(),
            s.spans.to_string(),
            format_duration(s.self_time),
            percent(s.share),
            spread(&s.per_span),
        ]);
    }
    table(&mut out, &rows, 1);
    out
}

fn distribution(d: &Distribution) -> Value {
    json!({
        "count": d.count,
        "p50_ms": ms(d.p50),
        "p95_ms": ms(d.p95),
        "p99_ms": ms(d.p99),
        "max_ms": ms(d.max),
    })
}

/// Statistics as JSON: `{"traces", "spans", "pathways": [...], "services": [...]}`, times
/// in milliseconds, rates from 0 to 1.
pub fn stats_json(stats: &Stats) -> Value {
    json!({
        "traces": stats.traces,
        "spans": stats.spans,
        "pathways": stats.pathways.iter().map(|p| json!({
            "producer": p.producer,
            "destination": p.destination,
            "consumer": p.consumer,
            "messages": p.messages,
            "deliveries": p.deliveries,
            "queue_time": distribution(&p.queue_time),
            "processing_time": distribution(&p.processing_time),
            "errors": p.errors,
            "error_rate": p.error_rate(),
            "retries": p.retries,
            "retry_rate": p.retry_rate(),
            "broken_context": p.broken_context,
            "broken_context_rate": p.broken_context_rate(),
        })).collect::<Vec<_>>(),
        "services": stats.services.iter().map(|s| json!({
            "service": s.service,
            "spans": s.spans,
            "self_time_ms": ms(s.self_time),
            "share": s.share,
            "per_span_self_time": distribution(&s.per_span),
        })).collect::<Vec<_>>(),
    })
}
