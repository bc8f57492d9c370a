//! The journal under a burst: 1,000,000 spans, ended as fast as one thread or four can,
//! all end up as lines after `shutdown()`, each exactly once, and the process's memory
//! stays bounded while they wait for the writer. A lossy journal counts what it drops,
//! reports it, and logs each burst once.
//!
//! The tests run one at a time (they measure the process's resident memory).

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use tracehop::{Error, Journal, Telemetry};

const SPANS: u64 = 1_000_000;
/// How much the resident set may grow during a burst: the journal's 2 MiB buffer and a
/// few blocks, plus allocator slack. Queuing span data instead (65,536 spans of this
/// shape is ~60 MiB) fails it.
const RSS_GROWTH_LIMIT: u64 = 24 * 1024 * 1024;

/// One burst at a time.
fn serial() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A destination that checks every line as it arrives: a journal line, carrying a
/// `burst.seq` seen nowhere before.
#[derive(Clone)]
struct Checker(Arc<Mutex<Seen>>);

struct Seen {
    lines: u64,
    bad: u64,
    duplicates: u64,
    bits: Vec<u64>,
    /// A partial line left by the previous write.
    carry: Vec<u8>,
}

impl Checker {
    fn new(spans: u64) -> Checker {
        Checker(Arc::new(Mutex::new(Seen {
            lines: 0,
            bad: 0,
            duplicates: 0,
            bits: vec![0; spans.div_ceil(64) as usize],
            carry: Vec::new(),
        })))
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Seen {
    fn line(&mut self, line: &[u8]) {
        self.lines += 1;
        let well_formed = line.starts_with(b"{\"timestamp\":\"") && line.ends_with(b"}");
        let seq = find(line, b"\"burst.seq\":").and_then(|at| {
            let digits = &line[at..];
            let end = digits.iter().position(|b| !b.is_ascii_digit())?;
            std::str::from_utf8(&digits[..end])
                .ok()?
                .parse::<u64>()
                .ok()
        });
        let (Some(seq), true) = (seq, well_formed) else {
            self.bad += 1;
            return;
        };
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        match self.bits.get_mut(word) {
            Some(w) if *w & (1 << bit) != 0 => self.duplicates += 1,
            Some(w) => *w |= 1 << bit,
            None => self.bad += 1,
        }
    }

    fn all_seen(&self, spans: u64) -> bool {
        (0..spans).all(|seq| self.bits[(seq / 64) as usize] & (1 << (seq % 64)) != 0)
    }
}

/// The index just after `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + needle.len())
}

impl Write for Checker {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut seen = self.seen();
        let mut rest = buf;
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            if seen.carry.is_empty() {
                seen.line(&rest[..newline]);
            } else {
                let mut line = std::mem::take(&mut seen.carry);
                line.extend_from_slice(&rest[..newline]);
                seen.line(&line);
            }
            rest = &rest[newline + 1..];
        }
        seen.carry.extend_from_slice(rest);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The resident set size of this process, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Sample the resident set every 2 ms while `run` runs; return how far it rose above
/// where it started.
fn peak_rss_growth(run: impl FnOnce()) -> u64 {
    let before = rss_bytes();
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(before);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        run();
        peak.fetch_max(rss_bytes(), Ordering::Relaxed);
        done.store(true, Ordering::Relaxed);
    });
    peak.load(Ordering::Relaxed).saturating_sub(before)
}

/// `count` spans shaped like process spans, `burst.seq` from `first`.
fn burst(telemetry: &Telemetry, first: u64, count: u64) {
    let tracer = telemetry.provider().tracer("burst");
    let parent = Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
        SpanId::from(0x00f0_67aa_0ba9_02b7),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    for seq in first..first + count {
        let span = tracer
            .span_builder("process agent.tasks")
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.destination.name", "agent.tasks"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.operation.name", "process"),
                KeyValue::new("messaging.destination.partition.id", "3"),
                KeyValue::new("messaging.kafka.offset", seq as i64),
                KeyValue::new("messaging.consumer.group.name", "agents"),
                KeyValue::new("messaging.message.body.size", 128_i64),
                KeyValue::new("tracehop.queue_time_ms", 1.25_f64),
                KeyValue::new("burst.seq", seq as i64),
            ])
            .start_with_context(&tracer, &parent);
        let cx = parent.with_span(span);
        cx.span().set_status(Status::Ok);
        cx.span().end();
    }
}

/// 1,000,000 spans from `threads` threads into a default (lossless) journal.
fn lossless_burst(threads: u64) {
    let _one = serial();
    let checker = Checker::new(SPANS);
    let telemetry = Telemetry::builder("burst")
        .journal(Journal::writer("checker", checker.clone()))
        .build()
        .expect("telemetry");
    let growth = peak_rss_growth(|| {
        std::thread::scope(|s| {
            let per_thread = SPANS / threads;
            for t in 0..threads {
                let telemetry = &telemetry;
                s.spawn(move || burst(telemetry, t * per_thread, per_thread));
            }
        });
        telemetry.shutdown().expect("every span written");
    });
    let seen = checker.seen();
    println!(
        "{threads} thread(s): {} lines, peak RSS growth {:.1} MiB",
        seen.lines,
        growth as f64 / 1048576.0
    );
    assert_eq!(seen.lines, SPANS, "one line per span");
    assert_eq!((seen.bad, seen.duplicates), (0, 0));
    assert!(seen.all_seen(SPANS), "every span's line is there");
    assert!(seen.carry.is_empty(), "no partial line at the end");
    let stats = &telemetry.journal_stats()[0];
    assert_eq!((stats.written, stats.failed, stats.dropped), (SPANS, 0, 0));
    assert!(
        stats.peak_buffered_bytes <= stats.buffer_limit,
        "the queue stayed within its bound: {stats:?}"
    );
    assert!(
        growth <= RSS_GROWTH_LIMIT,
        "memory grew by {growth} bytes during the burst"
    );
}

#[test]
fn a_million_spans_from_one_thread_are_all_written() {
    lossless_burst(1);
}

#[test]
fn a_million_spans_from_four_threads_are_all_written() {
    lossless_burst(4);
}

/// The warnings tracehop logged, per sink: the `dropped` count of each.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<HashMap<String, Vec<u64>>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        #[derive(Default)]
        struct Fields {
            sink: Option<String>,
            dropped: Option<u64>,
        }
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "sink" {
                    self.sink = Some(format!("{value:?}"));
                }
            }
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "dropped" {
                    self.dropped = Some(value);
                }
            }
        }
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let (Some(sink), Some(dropped)) = (fields.sink, fields.dropped) {
            let mut warnings = self.0.lock().unwrap_or_else(|p| p.into_inner());
            warnings.entry(sink).or_default().push(dropped);
        }
    }
}

/// A destination that takes nothing while it is closed.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>, Arc<AtomicU64>);

impl Gate {
    fn set(&self, open: bool) {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = open;
        self.0 .1.notify_all();
    }
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut open = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        while !*open {
            open = self.0 .1.wait(open).unwrap_or_else(|p| p.into_inner());
        }
        let lines = buf.iter().filter(|b| **b == b'\n').count() as u64;
        self.1.fetch_add(lines, Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Lossy: while the destination is stuck, spans that do not fit are dropped without
/// waiting; every span is written or counted; flush reports the total; each of two
/// bursts is logged once, with its own count.
#[test]
fn a_lossy_journal_reports_and_logs_each_burst_once() {
    let _one = serial();
    let warnings = Warnings::default();
    use tracing_subscriber::layer::SubscriberExt as _;
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(warnings.clone()))
        .expect("the only subscriber of this test binary");
    let gate = Gate::default();
    let telemetry = Telemetry::builder("burst")
        .journal(Journal::writer("lossy-burst", gate.clone()).lossy())
        .build()
        .expect("telemetry");

    let mut dropped_per_burst = Vec::new();
    let mut total_dropped = 0;
    for round in 0..2_u64 {
        gate.set(false);
        burst(&telemetry, round * 50_000, 50_000);
        gate.set(true);
        match telemetry.flush() {
            Err(Error::Dropped { sink, dropped }) => {
                assert_eq!(sink, "lossy-burst");
                assert!(dropped > total_dropped, "round {round} dropped spans");
                dropped_per_burst.push(dropped - total_dropped);
                total_dropped = dropped;
            }
            other => panic!("expected Dropped, got {other:?}"),
        }
    }
    let written = gate.1.load(Ordering::Relaxed);
    assert_eq!(
        written + total_dropped,
        100_000,
        "written or counted, every one"
    );
    let stats = &telemetry.journal_stats()[0];
    assert_eq!((stats.written, stats.dropped), (written, total_dropped));
    let logged = warnings
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get("lossy-burst")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        logged, dropped_per_burst,
        "one warning per burst, with its count"
    );
    assert!(
        matches!(telemetry.shutdown(), Err(Error::Dropped { dropped, .. }) if dropped == total_dropped)
    );
}
