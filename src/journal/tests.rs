//! The journal's line format and its writer: lines equal to serialized records, back
//! pressure, lossy drops counted.

use std::sync::{Arc, Mutex};

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    SdkTracer, SdkTracerProvider, SimpleSpanProcessor, SpanData, SpanExporter,
};

use super::collector::to_record;
use super::line::{service_json, write_line, Finished, Scratch};

/// Keeps the finished spans as the SDK hands them over.
#[derive(Debug, Clone, Default)]
struct Keep(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Keep {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().expect("lock").extend(batch);
        Ok(())
    }
}

impl Keep {
    /// A tracer whose finished spans are kept, each as soon as it ends.
    fn tracer() -> (Keep, SdkTracer) {
        let keep = Keep::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(SimpleSpanProcessor::new(keep.clone()))
            .build();
        (keep, provider.tracer("t"))
    }
}

/// Each of `spans`, written by one thread's writer (`scratch`, in order), is exactly its
/// record serialized.
fn assert_lines_equal_records(spans: &[SpanData], service: Option<&str>, scratch: &mut Scratch) {
    for span in spans {
        let mut direct = Vec::new();
        write_line(
            &mut direct,
            &Finished::of(span),
            &service_json(service),
            scratch,
        );
        let record = serde_json::to_string(&to_record(span, service)).expect("json");
        assert_eq!(String::from_utf8(direct).expect("utf-8"), record);
    }
}

/// The direct writer writes exactly what serializing the record writes, for spans
/// with every kind of field: escapes, non-ASCII, repeated and unsorted attribute
/// keys, every value type, non-finite floats, links, each status.
#[test]
fn direct_lines_equal_serialized_records() {
    let (keep, tracer) = Keep::tracer();
    let remote = SpanContext::new(
        0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128.into(),
        0x00f0_67aa_0ba9_02b7_u64.into(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let parent = Context::new().with_remote_span_context(remote.clone());
    let mut span = tracer
        .span_builder("send \"odd\" \\ naïve\u{1}")
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("z.last", "v\n\t\"q\""),
            KeyValue::new("a.first", 1_i64),
            KeyValue::new("dup", "old"),
            KeyValue::new("m.float", 0.1_f64),
            KeyValue::new("m.nan", f64::NAN),
            KeyValue::new("m.inf", f64::INFINITY),
            KeyValue::new("b.bool", true),
            KeyValue::new("dup", "new"),
            KeyValue::new("neg", -42_i64),
            KeyValue::new("arr", opentelemetry::Value::Array(vec![1_i64, 2].into())),
            KeyValue::new("big", 1e21_f64),
            KeyValue::new("del", "a\u{7f}b ☃"),
        ])
        .with_links(vec![
            Link::with_context(remote.clone()),
            Link::new(remote.clone(), vec![KeyValue::new("k", "v")], 0),
        ])
        .start_with_context(&tracer, &parent);
    span.set_status(Status::error("broke: \"x\""));
    span.end();
    let mut span = tracer.start("plain");
    span.set_status(Status::Ok);
    span.end();
    tracer.start("unset").end();
    let mut span = tracer.start_with_context("failed", &Context::new());
    span.add_event(
        "exception",
        vec![KeyValue::new("exception.message", "from the event ☃")],
    );
    span.set_status(Status::error(""));
    span.end();
    let mut span = tracer.start("failed quietly");
    span.set_status(Status::error(""));
    span.end();
    // Already in key order (written without sorting), and too many to sort on the stack.
    tracer
        .span_builder("sorted")
        .with_attributes([
            KeyValue::new("a", 1_i64),
            KeyValue::new("b\u{8}\u{c}\r", "\u{1f}"),
            KeyValue::new("c", 2.5_f64),
        ])
        .start(&tracer)
        .end();
    tracer
        .span_builder("many")
        .with_attributes(
            (0..40_i64)
                .rev()
                .map(|i| KeyValue::new(format!("k{}", i % 37), i)),
        )
        .start(&tracer)
        .end();

    let spans = keep.0.lock().expect("lock").clone();
    assert_eq!(spans.len(), 7);
    // Twice over, so that the second time every attribute list is a known shape.
    let mut scratch = Scratch::default();
    for service in [Some("svc \"q\""), None, Some("again")] {
        assert_lines_equal_records(&spans, service, &mut scratch);
    }
}

/// More attribute lists than a thread remembers, over and over: each line still equals
/// its record.
#[test]
fn many_attribute_shapes_equal_serialized_records() {
    let (keep, tracer) = Keep::tracer();
    for round in 0..3_i64 {
        for shape in 0..13_i64 {
            tracer
                .span_builder("shaped")
                .with_attributes(
                    (0..=shape).map(|k| KeyValue::new(format!("k{}", (k * 7) % 13), round)),
                )
                .start(&tracer)
                .end();
        }
    }
    let spans = keep.0.lock().expect("lock").clone();
    assert_eq!(spans.len(), 39);
    assert_lines_equal_records(&spans, Some("s"), &mut Scratch::default());
}

/// Attribute lists of the same length whose keys have the same lengths but other text
/// (static and owned keys, in turn): a kept shape is never taken for another's, so each
/// line still equals its record.
#[test]
fn shapes_with_keys_of_the_same_lengths_are_told_apart() {
    let (keep, tracer) = Keep::tracer();
    let statics: [[&'static str; 3]; 3] = [
        ["app.a", "app.b", "app.c"],
        ["app.a", "app.x", "app.c"],
        ["app.c", "app.b", "app.a"],
    ];
    for round in 0..4_i64 {
        for (n, keys) in statics.iter().enumerate() {
            let attributes: Vec<KeyValue> = if round % 2 == 0 {
                keys.iter().map(|k| KeyValue::new(*k, round)).collect()
            } else {
                keys.iter()
                    .map(|k| KeyValue::new(k.to_string(), format!("v{n}")))
                    .collect()
            };
            tracer
                .span_builder("same lengths")
                .with_attributes(attributes)
                .start(&tracer)
                .end();
        }
    }
    let spans = keep.0.lock().expect("lock").clone();
    assert_eq!(spans.len(), 12);
    assert_lines_equal_records(&spans, Some("s"), &mut Scratch::default());
}

/// One attribute list whose string values are static, shared (`Arc<str>`: the same one
/// again, or a new one each time, some with the same text), owned, or not strings at all,
/// changing from span to span: each line equals its record (remembered values are only
/// ever the same text).
#[test]
fn remembered_values_are_only_the_same_text() {
    let (keep, tracer) = Keep::tracer();
    // Texts of the same length, so that only the right one is ever taken for another.
    let statics = ["nats", "amqp", "esc\"aped\n", ""];
    let shared: Vec<Arc<str>> = ["orders", "orders", "refund"]
        .into_iter()
        .map(Arc::from)
        .collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for n in 0..400_i64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let pick = |shift: u32, of: usize| (x >> shift) as usize % of;
        let fresh: Arc<str> = Arc::from(format!("subject.{}", pick(40, 3)));
        let third = match pick(8, 8) {
            0 => opentelemetry::Value::from(statics[pick(16, 4)]),
            1 => opentelemetry::Value::from(opentelemetry::StringValue::from(
                shared[pick(16, 3)].clone(),
            )),
            2 => opentelemetry::Value::from(opentelemetry::StringValue::from(fresh)),
            3 => opentelemetry::Value::from(format!("owned {}", pick(16, 2))),
            4 => opentelemetry::Value::from(1.5),
            5 => opentelemetry::Value::from(n as f64 / 1000.0),
            6 => opentelemetry::Value::from(n % 2 == 0),
            _ => opentelemetry::Value::from(n % 3),
        };
        tracer
            .span_builder("memo")
            .with_attributes([
                KeyValue::new("a.static", statics[pick(0, 4)]),
                KeyValue::new(
                    "b.shared",
                    opentelemetry::StringValue::from(shared[pick(4, 3)].clone()),
                ),
                KeyValue::new("c.mixed", third),
                KeyValue::new("d.owned", format!("o{}", pick(24, 2))),
            ])
            .start(&tracer)
            .end();
    }
    let spans = keep.0.lock().expect("lock").clone();
    assert_eq!(spans.len(), 400);
    assert_lines_equal_records(&spans, Some("s"), &mut Scratch::default());
}

/// A destination that takes nothing until it is opened, and counts the lines it took.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<(Mutex<bool>, std::sync::Condvar)>,
    lines: Arc<std::sync::atomic::AtomicU64>,
}

impl Gate {
    fn open(&self) {
        *self.open.0.lock().expect("lock") = true;
        self.open.1.notify_all();
    }

    fn lines(&self) -> u64 {
        self.lines.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl std::io::Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut open = self.open.0.lock().expect("lock");
        while !*open {
            open = self.open.1.wait(open).expect("wait");
        }
        let lines = buf.iter().filter(|b| **b == b'\n').count() as u64;
        self.lines
            .fetch_add(lines, std::sync::atomic::Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn end_spans(telemetry: &crate::Telemetry, n: usize) {
    let tracer = telemetry.provider().tracer("burst");
    for i in 0..n {
        tracer
            .span_builder("burst span")
            .with_attributes([KeyValue::new("n", i as i64)])
            .start(&tracer)
            .end();
    }
}

/// With the destination stuck, a lossless journal makes the thread ending spans wait
/// once its small buffer is full, and loses nothing when the destination frees up.
#[test]
fn a_full_buffer_makes_the_span_wait_instead_of_dropping_it() {
    let gate = Gate::default();
    let journal = crate::Journal::writer("gated", gate.clone()).buffer(16 * 1024);
    let telemetry = crate::Telemetry::builder("svc")
        .journal(journal)
        .build()
        .expect("telemetry");
    let producer = {
        let telemetry = telemetry.clone();
        std::thread::spawn(move || end_spans(&telemetry, 2_000))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !producer.is_finished(),
        "2,000 lines do not fit in 16 KiB: the producer must be waiting"
    );
    let stats = &telemetry.journal_stats()[0];
    assert_eq!(stats.buffer_limit, 16 * 1024);
    assert!(stats.peak_buffered_bytes <= stats.buffer_limit, "{stats:?}");
    assert!(
        stats.peak_buffered_bytes > stats.buffer_limit / 2,
        "{stats:?}"
    );
    gate.open();
    producer.join().expect("producer");
    telemetry.shutdown().expect("every line written");
    assert_eq!(gate.lines(), 2_000);
    let stats = &telemetry.journal_stats()[0];
    assert_eq!((stats.written, stats.dropped, stats.failed), (2_000, 0, 0));
}

/// Lossy: the thread ending spans never waits; what does not fit is dropped, and every
/// span is either written or counted as dropped, as flush and shutdown report.
#[test]
fn a_lossy_journal_drops_counts_and_reports() {
    let gate = Gate::default();
    let journal = crate::Journal::writer("lossy-gated", gate.clone())
        .buffer(16 * 1024)
        .lossy();
    let telemetry = crate::Telemetry::builder("svc")
        .journal(journal)
        .build()
        .expect("telemetry");
    end_spans(&telemetry, 2_000);
    gate.open();
    let dropped = match telemetry.flush() {
        Err(crate::Error::Dropped { sink, dropped }) => {
            assert_eq!(sink, "lossy-gated");
            dropped
        }
        other => panic!("expected Dropped, got {other:?}"),
    };
    assert!(dropped > 0);
    assert_eq!(gate.lines() + dropped, 2_000);
    let stats = &telemetry.journal_stats()[0];
    assert_eq!((stats.written, stats.dropped), (gate.lines(), dropped));
    match telemetry.shutdown() {
        Err(crate::Error::Dropped { dropped: again, .. }) => assert_eq!(again, dropped),
        other => panic!("expected Dropped, got {other:?}"),
    }
}

/// Lines reach the destination without a flush: a partly filled block is handed over
/// when no full one came for a while.
#[test]
fn a_few_lines_are_written_without_a_flush() {
    let gate = Gate::default();
    gate.open();
    let telemetry = crate::Telemetry::builder("svc")
        .journal(crate::Journal::writer("idle", gate.clone()))
        .build()
        .expect("telemetry");
    end_spans(&telemetry, 3);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gate.lines() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(gate.lines(), 3);
    telemetry.shutdown().expect("shut down");
}

struct Panics;
impl std::io::Write for Panics {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        panic!("a writer bug")
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A writer that panics is a failed write, reported; the journal does not hang.
#[test]
fn a_panicking_writer_is_a_reported_failure() {
    let telemetry = crate::Telemetry::builder("svc")
        .journal(crate::Journal::writer("panics", Panics))
        .build()
        .expect("telemetry");
    end_spans(&telemetry, 10);
    match telemetry.shutdown() {
        Err(crate::Error::JournalWrite {
            written,
            dropped,
            message,
        }) => {
            assert_eq!((written, dropped), (0, 10));
            assert!(message.contains("panicked"), "{message}");
        }
        other => panic!("expected JournalWrite, got {other:?}"),
    }
}

/// A destination that never takes anything: threads ending spans wait (lossless), but
/// `shutdown` still returns, with an error, when its time is up.
#[test]
fn a_stuck_destination_does_not_hang_shutdown() {
    let gate = Gate::default();
    let telemetry = crate::Telemetry::builder("svc")
        .journal(crate::Journal::writer("stuck", gate.clone()).buffer(16 * 1024))
        .build()
        .expect("telemetry");
    let producer = {
        let telemetry = telemetry.clone();
        std::thread::spawn(move || end_spans(&telemetry, 2_000))
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let result = telemetry
        .provider()
        .shutdown_with_timeout(std::time::Duration::from_millis(300));
    assert!(result.is_err(), "{result:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    gate.open();
    producer
        .join()
        .expect("the waiting thread goes on once the destination does");
}

/// Times at the edges: before the epoch, an end before the start, past what RFC 3339
/// writes with four digits, within one second of each other; each line equals its record
/// (the duration is the end's offset from the epoch minus the start's, or 0).
#[test]
fn edge_times_equal_serialized_records() {
    use std::time::{Duration, UNIX_EPOCH};
    let (keep, tracer) = Keep::tracer();
    let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
    let before = UNIX_EPOCH - Duration::from_millis(1500);
    let times = [
        (at(1_764_000_000, 5), at(1_764_000_000, 1_000_005)),
        (at(1_764_000_001, 0), at(1_764_000_000, 999_999_999)),
        (before, at(0, 250_000)),
        (before, before + Duration::from_micros(1)),
        (at(1, 0), before),
        (at(253_402_300_799, 999_999_999), at(253_402_300_800, 1)),
        (
            at(1_764_000_000, 0),
            at(1_764_000_000 + 86_400 * 365, 123_456_789),
        ),
    ];
    for (start, end) in times {
        let mut span = tracer
            .span_builder("times")
            .with_start_time(start)
            .start(&tracer);
        span.end_with_timestamp(end);
    }
    let spans = keep.0.lock().expect("lock").clone();
    assert_eq!(spans.len(), times.len());
    assert_eq!(spans[0].end_time, times[0].1);
    assert_lines_equal_records(&spans, Some("s"), &mut Scratch::default());
}

/// Templates whose values rarely change: a repeated key (the last value wins, a change in
/// the shadowed one changes nothing), `0.0` and `-0.0`, NaN and infinities, a place that
/// switches between a string, an integer, a float and a boolean, and a place that changes
/// often enough to be written each time; every line equals its record.
#[test]
fn templates_with_rarely_changing_values_equal_serialized_records() {
    let (keep, tracer) = Keep::tracer();
    let floats = [0.0, -0.0, f64::NAN, f64::INFINITY, 1.25, 1.25];
    for n in 0..3_000_i64 {
        let phase = n / 500;
        let switching = match phase {
            0 => opentelemetry::Value::from("text"),
            1 => opentelemetry::Value::from(7),
            2 => opentelemetry::Value::from(7.5),
            3 => opentelemetry::Value::from(true),
            4 => opentelemetry::Value::from(format!("owned \"{phase}\"")),
            _ => opentelemetry::Value::from(false),
        };
        let shadowed = if n % 250 == 0 { "changed" } else { "first" };
        tracer
            .span_builder("rare")
            .with_attributes([
                KeyValue::new("z.repeated", shadowed),
                KeyValue::new("a.float", floats[(n / 600) as usize % floats.len()]),
                KeyValue::new("m.switching", switching),
                KeyValue::new("z.repeated", if phase % 2 == 0 { "last" } else { "later" }),
                KeyValue::new("b.every", n),
                KeyValue::new("c.static", "static"),
            ])
            .start(&tracer)
            .end();
    }
    let spans = keep.0.lock().expect("lock").clone();
    assert_eq!(spans.len(), 3_000);
    assert_lines_equal_records(&spans, Some("s"), &mut Scratch::default());
}
