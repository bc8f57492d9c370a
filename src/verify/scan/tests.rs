//! The fast reader against serde: for every line, either the fast reader leaves it to
//! serde, or it adds exactly the span serde adds (same ids, names, times, attributes,
//! links, raw text kept).

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::journal::{Kind, LinkRecord, SpanRecord, Status};
use crate::verify::input::SERDE_ONLY;
use crate::verify::parse::{journal_line, scanned_line, LineOutcome};
use crate::verify::store::{Detail, Spans};
use crate::verify::{self, render, CheckOptions, RenderOptions, Traces};

/// Attributes the remembered-list tests repeat on purpose (a list seen before, in another
/// order, with one key more or less).
const GROUP: (&str, &str) = ("messaging.consumer.group.name", r#""g""#);
const DESTINATION: (&str, &str) = ("messaging.destination.name", r#""d""#);

const DEMO: &str = include_str!("../../../benches/data/demo_run.jsonl");

/// Read `line` both ways with `detail`: whether the fast reader read it. When it did,
/// serde read a span too and both added the same; when it did not, it added nothing.
fn compare(line: &str, detail: Detail) -> bool {
    let mut by_serde = Spans::new(detail);
    let outcome = journal_line(line.as_bytes(), &mut by_serde);
    let mut scanned = Spans::new(detail);
    let read = scanned_line(line.as_bytes(), &mut scanned);
    if read {
        assert!(
            matches!(outcome, LineOutcome::Span),
            "the fast reader read a line serde does not read as a span: {line}"
        );
        assert_eq!(format!("{scanned:?}"), format!("{by_serde:?}"), "{line}");
    } else {
        assert_eq!(
            format!("{scanned:?}"),
            format!("{:?}", Spans::new(detail)),
            "a line left to serde added something: {line}"
        );
    }
    read
}

/// [`compare`] with both details; they agree on whether the fast reader reads it.
fn both(line: &str) -> bool {
    let lean = compare(line, Detail::Lean);
    let full = compare(line, Detail::Full);
    assert_eq!(lean, full, "{line}");
    lean
}

/// Read `lines` one after the other into one [`Spans`] as the reader does (the fast
/// reader first, serde for what it leaves) and with serde alone: the same spans. Returns
/// how many lines the fast reader read.
fn in_sequence(lines: &[&str], detail: Detail) -> usize {
    let mut by_serde = Spans::new(detail);
    let mut fast = Spans::new(detail);
    let mut read = 0;
    for line in lines {
        journal_line(line.as_bytes(), &mut by_serde);
        if scanned_line(line.as_bytes(), &mut fast) {
            read += 1;
        } else {
            journal_line(line.as_bytes(), &mut fast);
        }
    }
    assert_eq!(format!("{fast:?}"), format!("{by_serde:?}"), "{lines:#?}");
    read
}

fn read(line: &str) {
    assert!(both(line), "not read by the fast reader: {line}");
}

fn left(line: &str) {
    assert!(!both(line), "read by the fast reader: {line}");
}

/// What serde makes of a line (to check the tests' malformed lines are what they say).
fn serde_outcome(line: &str) -> &'static str {
    match journal_line(line.as_bytes(), &mut Spans::new(Detail::Full)) {
        LineOutcome::Span => "span",
        LineOutcome::Blank => "blank",
        LineOutcome::Skipped => "skipped",
        LineOutcome::Malformed(_) => "malformed",
    }
}

/// A process span in the journal's own key order, as `(key, raw JSON)`.
fn fields() -> Vec<(&'static str, String)> {
    [
        ("timestamp", r#""2026-12-01T21:06:56.156746581Z""#),
        ("event", r#""span_finished""#),
        ("trace_id", r#""e67963243ff13885060638574050886d""#),
        ("span_id", r#""839eabf64122737a""#),
        ("parent_span_id", r#""1997a3ecd765cc48""#),
        ("service_name", r#""gateway""#),
        ("operation_name", r#""process runs.completed""#),
        ("span_kind", r#""consumer""#),
        ("start_time", r#""2026-12-01T21:06:56.156503997Z""#),
        ("latency_ms", "0.242"),
        ("duration_ns", "242584"),
        ("status", r#""ok""#),
        ("error", "null"),
        ("attributes", &attributes(&[])),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

/// The process span's attributes, with `extra` set (added, or replacing a key).
fn attributes(extra: &[(&str, &str)]) -> String {
    let mut attrs: Vec<(String, String)> = [
        (
            "messaging.consumer.group.name",
            r#""runs.completed-gateway""#,
        ),
        ("messaging.destination.name", r#""runs.completed""#),
        ("messaging.operation.type", r#""process""#),
        ("messaging.system", r#""kafka""#),
        ("tracehop.delivery.attempt", "1"),
        ("tracehop.queue_time_ms", "11.771"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        match attrs.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = (*v).to_owned(),
            None => attrs.push(((*k).to_owned(), (*v).to_owned())),
        }
    }
    object(attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

fn object<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let body: Vec<String> = pairs.map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

fn line_of(fields: &[(&str, String)]) -> String {
    object(fields.iter().map(|(k, v)| (*k, v.as_str())))
}

/// The process span with `key` set to `raw` (replaced, or added at the end).
fn with(key: &str, raw: &str) -> String {
    let mut f = fields();
    match f.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = raw.to_owned(),
        None => f.push((Box::leak(key.to_owned().into_boxed_str()), raw.to_owned())),
    }
    line_of(&f)
}

fn without(key: &str) -> String {
    let mut f = fields();
    f.retain(|(k, _)| *k != key);
    line_of(&f)
}

fn with_attribute(key: &str, raw: &str) -> String {
    with("attributes", &attributes(&[(key, raw)]))
}

/// The same line with its keys in sorted order (what re-serializing a `Value` gives).
fn sorted(line: &str) -> String {
    serde_json::to_string(&serde_json::from_str::<Value>(line).expect("json")).expect("json")
}

#[test]
fn the_journals_own_lines_are_read_whatever_the_key_order_or_spacing() {
    read(&line_of(&fields()));
    for line in DEMO.lines() {
        read(line);
        read(&sorted(line));
        let value: Value = serde_json::from_str(line).expect("json");
        read(&serde_json::to_string_pretty(&value).expect("json"));
    }
    let mut reversed = fields();
    reversed.reverse();
    read(&line_of(&reversed));
    read(" {\t\"trace_id\" : \"t1\" ,\r\n \"span_id\" :\"s1\", \"attributes\" : { \"messaging.system\" : \"nats\" , \"x\" : [ 1 , { } ] } } ");
}

/// The reader remembers the last line's keys and the attribute lists it saw; lines that
/// follow them, nearly follow them or do not are read as serde reads them.
#[test]
fn lines_that_follow_or_break_the_remembered_keys() {
    let base = line_of(&fields());
    let attrs = |pairs: &[(&str, &str)]| with("attributes", &object(pairs.iter().copied()));
    let lines = [
        base.clone(),
        base.clone(),
        sorted(&base),
        base.clone(),
        // A key inserted, one missing, one renamed with the same start.
        with("extra", "1").replace("\"event\"", "\"x\":2,\"event\""),
        without("span_kind"),
        base.replace("\"status\"", "\"statusx\""),
        base.replace("\"error\"", "\"e\""),
        base.replace(",\"", ", \""),
        base.clone(),
        with_attribute("messaging.system", r#""nats""#),
        attrs(&[GROUP, DESTINATION]),
        attrs(&[
            GROUP,
            ("messaging.destination.namex", r#""d""#),
            ("tracehop.queue_time_ms", "3"),
        ]),
        attrs(&[
            GROUP,
            DESTINATION,
            ("tracehop.queue_time_ms", "4"),
            ("tracehop.delivery.attempt", "2"),
        ]),
        attrs(&[GROUP]),
        attrs(&[GROUP, DESTINATION]),
        attrs(&[GROUP, ("tracehop.delivery.attempt", r#""d""#)]),
        with(
            "attributes",
            r#"{ "messaging.consumer.group.name" : "g" , "messaging.system":"x"}"#,
        ),
        with("attributes", "{}"),
        base.clone(),
    ];
    let mut all: Vec<&str> = lines.iter().map(String::as_str).collect();
    // More attribute lists than it remembers, then the first again.
    let many: Vec<String> = (0..12)
        .map(|i| attrs(&[(&format!("k{i}"), "1"), ("messaging.system", r#""s""#)]))
        .collect();
    all.extend(many.iter().map(String::as_str));
    all.extend(lines.iter().map(String::as_str));
    for detail in [Detail::Lean, Detail::Full] {
        assert_eq!(in_sequence(&all, detail), all.len());
    }
}

#[test]
fn strings_with_escapes_and_unicode_are_read_as_serde_reads_them() {
    for raw in [
        r#""say \"hi\"\n\t\\ \/ \b\f\r""#,
        r#""caf\u00e9 \u2603 \ud83d\ude00 \u0000""#,
        "\"café ☃ 日本 😀\"",
        r#""""#,
        r#"" spaced ""#,
    ] {
        for key in [
            "operation_name",
            "service_name",
            "error",
            "trace_id",
            "span_id",
        ] {
            read(&with(key, raw));
        }
        read(&with_attribute("messaging.destination.name", raw));
        read(&with_attribute("messaging.system", raw));
        read(&with_attribute("user.text", raw));
        read(&with("extra", raw));
    }
    // serde skips a lone surrogate in a value it does not read, and refuses one in a
    // string it reads.
    read(&with_attribute("user.text", r#""\ud800""#));
    read(&with("extra", r#"{"k":"\udc00 x"}"#));
    left(&with("operation_name", r#""\ud800""#));
    assert_eq!(
        serde_outcome(&with("operation_name", r#""\ud800""#)),
        "malformed"
    );
    left(&with_attribute("messaging.system", r#""\udfff""#));
}

#[test]
fn parents_ids_and_names_of_every_form() {
    for raw in [
        "null",
        r#""""#,
        r#""-""#,
        r#"" ""#,
        r#""not-hex""#,
        r#""1997A3ECD765CC48""#,
    ] {
        read(&with("parent_span_id", raw));
    }
    read(&without("parent_span_id"));
    for raw in [
        r#""tr_7a31""#,
        r#""E67963243FF13885060638574050886D""#,
        r#""abc""#,
    ] {
        read(&with("trace_id", raw));
    }
    read(&with("span_id", r#""839eabf64122737""#));
    for key in [
        "service_name",
        "operation_name",
        "span_kind",
        "error",
        "event",
    ] {
        read(&with(key, "null"));
        read(&without(key));
    }
    for kind in ["internal", "server", "client", "producer", "consumer"] {
        read(&with("span_kind", &format!("\"{kind}\"")));
    }
    for status in ["ok", "error", "unset", "weird", ""] {
        read(&with("status", &format!("\"{status}\"")));
    }
    read(&without("status"));
    read(&with("error", r#""boom: \"x\"""#));
}

#[test]
fn times_and_durations_of_every_form() {
    for raw in ["12.5", "7", "1e2", "0", "-5", "0.0000001", "1E-3", "null"] {
        read(&with("latency_ms", raw));
        let no_ns = without("duration_ns");
        let line = no_ns.replace("\"latency_ms\":0.242", &format!("\"latency_ms\":{raw}"));
        read(&line);
    }
    for raw in ["0", "18446744073709551615", "null"] {
        read(&with("duration_ns", raw));
    }
    read(&without("duration_ns"));
    let neither = without("duration_ns");
    read(&neither.replace("\"latency_ms\":0.242,", ""));
    read(&without("timestamp"));
    read(&without("start_time"));
    read(&without("timestamp").replace("\"start_time\"", "\"x\""));
    read(&with("timestamp", r#""2026-12-01T22:06:56.1+01:00""#));
    read(&with("start_time", r#""2026-12-01T21:06:56Z""#));
    read(&with("event", r#""span_finishe\u0064""#));
    let early = with("start_time", r#""1969-12-31T23:59:59.5Z""#);
    if both(&early) {
        assert_eq!(serde_outcome(&early), "span");
    }
}

#[test]
fn attributes_of_every_type() {
    for raw in [
        r#""text""#,
        "42",
        "-42",
        "0.1",
        "1e21",
        "-0",
        "0.0",
        "true",
        "false",
        "null",
        r#"[1,"a",[2,{}],null]"#,
        r#"{"a":{"b":[null,true]}}"#,
        "123456789012345678901234567890",
        "[]",
        "{}",
    ] {
        read(&with_attribute("user.value", raw));
        read(&with("extra", raw));
    }
    // The attributes verification reads, with values of every type.
    for (key, raw) in [
        ("tracehop.queue_time_ms", "5"),
        ("tracehop.queue_time_ms", r#""5""#),
        ("tracehop.queue_time_ms", "-3.5"),
        ("tracehop.queue_time_ms", "1e-3"),
        ("tracehop.queue_time_ms", "null"),
        ("tracehop.queue_time_ms", "true"),
        ("tracehop.queue_time_ms", "12345678901234567890123"),
        ("tracehop.delivery.attempt", "2.0"),
        ("tracehop.delivery.attempt", r#""2""#),
        ("tracehop.delivery.attempt", "-1"),
        ("tracehop.delivery.attempt", "4294967296"),
        ("tracehop.delivery.attempt", "18446744073709551615"),
        ("messaging.batch.message_count", "3"),
        ("messaging.destination.name", "5"),
        ("messaging.system", r#""k\u0061fka""#),
        ("messaging.operation.type", r#""receive""#),
        ("messaging.operation.type", r#""publish""#),
        ("messaging.operation.type", r#""create""#),
        ("messaging.operation.type", "null"),
        ("error.type", r#""TimeoutError""#),
        ("tracehop.context.missing", "true"),
        ("tracehop.context.missing", r#""true""#),
        ("tracehop.context.missing", "1"),
        ("tracehop.context.linked", "true"),
        ("tracehop.context.rejected", r#""bad traceparent \"00-x\"""#),
        ("tracehop.context.rejected", "5"),
        ("tracehop.context.rejected", "1.5"),
        ("tracehop.context.rejected", "true"),
        ("tracehop.context.rejected", "null"),
    ] {
        read(&with_attribute(key, raw));
    }
    // Arrays and objects in an attribute verification reads are left to serde.
    left(&with_attribute("tracehop.context.rejected", r#"["a"]"#));
    assert_eq!(
        serde_outcome(&with_attribute("tracehop.context.rejected", r#"["a"]"#)),
        "span"
    );
    left(&with_attribute("messaging.system", "{}"));
    for raw in ["{}", "null"] {
        read(&with("attributes", raw));
    }
    read(&without("attributes"));
}

#[test]
fn repeated_attribute_keys_and_old_conventions_keep_serdes_order() {
    let attrs = |pairs: &[(&str, &str)]| with("attributes", &object(pairs.iter().copied()));
    // An old convention's key and its new name, in either order.
    let both_orders = |a: (&str, &str), b: (&str, &str)| {
        read(&attrs(&[a, b]));
        read(&attrs(&[b, a]));
    };
    both_orders(
        ("messaging.destination", r#""old""#),
        ("messaging.destination.name", r#""new""#),
    );
    read(&attrs(&[("messaging.destination", r#""only""#)]));
    both_orders(
        ("messaging.operation", r#""receive""#),
        ("messaging.operation.type", r#""send""#),
    );
    read(&attrs(&[
        ("messaging.system", r#""kafka""#),
        ("messaging.system", r#""nats""#),
        ("x", "1"),
        ("x", "2"),
    ]));
}

#[test]
fn events_and_links() {
    for raw in [
        "[]",
        "null",
        r#"[{"name":"exception","attributes":{"exception.message":"boom \"x\""}}]"#,
        r#"[{"name":"a","time":"2026-12-01T21:06:56Z"},{"name":"b"}]"#,
    ] {
        read(&with("events", raw));
    }
    for raw in [
        "[]",
        "null",
        r#"[{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"}]"#,
        r#"[{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","attributes":{"k":"v","n":[1]}},{"trace_id":"tr_x","span_id":"s\"q"}]"#,
        r#"[{"span_id":"00f067aa0ba902b7","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","attributes":{}}]"#,
    ] {
        read(&with("links", raw));
    }
    // A link without a span id is malformed, however it is read.
    left(&with("links", r#"[{"trace_id":"t"}]"#));
    assert_eq!(
        serde_outcome(&with("links", r#"[{"trace_id":"t"}]"#)),
        "malformed"
    );
}

/// Lines the fast reader leaves to serde, and what serde makes of them.
#[test]
fn odd_lines_are_left_to_serde() {
    let base = line_of(&fields());
    let cases: Vec<(String, &str)> = vec![
        (base.replace("\"trace_id\"", r#""trace\u005fid""#), "span"),
        (with("event", r#""span_started""#), "skipped"),
        (base.replace("}}", r#"},"span_id":"x"}"#), "malformed"),
        (with("status", "null"), "malformed"),
        (with("status", r#""o\u006b""#), "span"),
        (with("status", r#"{"ok":null}"#), "span"),
        (with("span_kind", r#""CONSUMER""#), "malformed"),
        (with("span_kind", "3"), "malformed"),
        (with("duration_ns", "1.5"), "malformed"),
        (with("duration_ns", "-1"), "malformed"),
        (with("duration_ns", "18446744073709551616"), "malformed"),
        (with("latency_ms", "1e400"), "malformed"),
        (with("latency_ms", r#""5""#), "malformed"),
        (with("trace_id", "5"), "malformed"),
        (with("attributes", "[]"), "malformed"),
        (with("attributes", r#""a""#), "malformed"),
        (with("timestamp", r#""yesterday""#), "malformed"),
        (without("trace_id"), "malformed"),
        (without("span_id"), "malformed"),
        ("{}".to_owned(), "malformed"),
        (r#"["t","s"]"#.to_owned(), "malformed"),
        (r#"{"resourceSpans":[]}"#.to_owned(), "malformed"),
        (format!("{base} x"), "malformed"),
        (base[..base.len() - 1].to_owned(), "malformed"),
        (base.replace("}}", "},}"), "malformed"),
        (base.replace("gateway", "gate\u{1}way"), "malformed"),
        (base.replace("gateway", r"gate\xway"), "malformed"),
        (base.replace("gateway", r"gate\u12"), "malformed"),
        (with("extra", "01"), "malformed"),
        (with("extra", "1."), "malformed"),
        (with("extra", ".5"), "malformed"),
        (with("extra", "-"), "malformed"),
        (with("extra", "+1"), "malformed"),
        (with("extra", "NaN"), "malformed"),
        (with("extra", "nul"), "malformed"),
        (with("extra", "[1,]"), "malformed"),
        (with("extra", r#"{"a" 1}"#), "malformed"),
        (with("extra", "{a:1}"), "malformed"),
        (with("extra", "'a'"), "malformed"),
        (
            with("extra", &format!("{}{}", "[".repeat(100), "]".repeat(100))),
            "span",
        ),
        (base.replace(",\"status\"", "\"status\""), "malformed"),
        (base.replace(":\"gateway\"", "\"gateway\""), "malformed"),
        ("not json".to_owned(), "malformed"),
        ("   ".to_owned(), "blank"),
    ];
    for (line, serde) in &cases {
        left(line);
        assert_eq!(serde_outcome(line), *serde, "{line}");
    }
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Lines broken at random (bytes dropped, repeated, replaced by JSON's special bytes):
/// whatever the fast reader reads, serde reads the same way.
#[test]
fn damaged_lines_are_read_as_serde_reads_them_or_left_to_it() {
    let mut seeds: Vec<String> = DEMO.lines().map(str::to_owned).collect();
    seeds.push(with("links", r#"[{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","attributes":{"k":"v"}}]"#));
    seeds.push(with("operation_name", r#""a\"b\\c\u00e9""#));
    seeds.push(with_attribute("tracehop.context.rejected", "1.5e3"));
    let special = b"\"\\,:{}[]0-.eEnu \x01a9";
    let mut rng = Rng(16);
    let (mut tried, mut read) = (0, 0);
    for seed in &seeds {
        for _ in 0..400 {
            let mut bytes = seed.as_bytes().to_vec();
            for _ in 0..1 + rng.below(2) {
                let at = rng.below(bytes.len());
                match rng.below(4) {
                    0 => {
                        let len = 1 + rng.below(4).min(bytes.len() - at - 1);
                        bytes.drain(at..at + len);
                    }
                    1 => {
                        let len = 1 + rng.below(8).min(bytes.len() - at - 1);
                        let copy = bytes[at..at + len].to_vec();
                        bytes.splice(at..at, copy);
                    }
                    2 => bytes[at] = special[rng.below(special.len())],
                    _ => bytes.insert(at, special[rng.below(special.len())]),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let Ok(line) = String::from_utf8(bytes) else {
                continue;
            };
            tried += 1;
            if both(&line) {
                read += 1;
            }
            // After the line it came from, so that the damage meets what the reader
            // remembers of that line's keys.
            for detail in [Detail::Lean, Detail::Full] {
                in_sequence(&[seed, &line, seed], detail);
            }
        }
    }
    // Both kinds occur: some damage leaves a readable span, most does not.
    assert!(tried > 5000, "{tried}");
    assert!(read > tried / 10 && read < tried, "{read} of {tried}");
}

/// Records of every shape, written as the journal writes them (the direct writer's lines
/// equal serialized records: `journal::tests`), half with sorted keys, with odd lines
/// between: reading the journal with and without the fast reader gives the same spans,
/// malformed lines, trees, findings and text.
#[test]
fn a_generated_journal_reads_the_same_with_and_without_the_fast_reader() {
    let mut rng = Rng(1);
    let mut journal = String::new();
    let texts = [
        "plain",
        "with \"quotes\"",
        "naïve ☃",
        "tab\there",
        "back\\slash",
        "",
    ];
    let mut expected_spans = 0;
    for run in 0..300u64 {
        let trace = format!("{:016x}{:016x}", rng.next(), rng.next());
        let root = format!("{:016x}", rng.next());
        let mut parent = root.clone();
        let start = UNIX_EPOCH + Duration::from_secs(1_780_000_000 + run);
        for i in 0..6u64 {
            let id = if i == 0 {
                root.clone()
            } else {
                format!("{:016x}", rng.next())
            };
            let mut attributes = std::collections::BTreeMap::new();
            let text = texts[rng.below(texts.len())];
            match i % 3 {
                0 => {
                    attributes.insert("user.query".to_owned(), json!(text));
                    attributes.insert("run.number".to_owned(), json!(run));
                }
                1 => {
                    attributes.insert("messaging.system".to_owned(), json!("kafka"));
                    attributes.insert("messaging.destination.name".to_owned(), json!(text));
                    attributes.insert("messaging.operation.type".to_owned(), json!("send"));
                }
                _ => {
                    attributes.insert("messaging.operation.type".to_owned(), json!("process"));
                    attributes.insert(
                        "tracehop.queue_time_ms".to_owned(),
                        json!(rng.below(100_000) as f64 / 1000.0),
                    );
                    attributes.insert("tracehop.delivery.attempt".to_owned(), json!(1 + i % 2));
                    attributes.insert("user.tags".to_owned(), json!(["a", 1, {"b": null}]));
                    if rng.below(4) == 0 {
                        attributes.insert("tracehop.context.rejected".to_owned(), json!(text));
                    }
                }
            }
            let began = start + Duration::from_micros(i * 1000 + rng.below(500) as u64);
            let took = Duration::from_nanos(rng.next() % 5_000_000);
            let failed = rng.below(10) == 0;
            let record = SpanRecord {
                timestamp: Some(began + took),
                event: "span_finished".into(),
                trace_id: trace.clone(),
                span_id: id.clone(),
                parent_span_id: (i > 0).then(|| parent.clone()),
                service_name: Some(["gateway", "agent", "tool"][i as usize % 3].into()),
                operation_name: Some(format!("op {text} {i}")),
                span_kind: [None, Some(Kind::Producer), Some(Kind::Consumer)][i as usize % 3],
                start_time: Some(began),
                latency_ms: Some(crate::time::millis_f64(took)),
                duration_ns: (rng.below(5) != 0).then_some(took.as_nanos() as u64),
                status: if failed { Status::Error } else { Status::Ok },
                error: failed.then(|| format!("failed: {text}")),
                attributes,
                links: if i == 5 {
                    vec![LinkRecord {
                        trace_id: trace.clone(),
                        span_id: root.clone(),
                        attributes: [("why".to_owned(), json!(text))].into(),
                    }]
                } else {
                    Vec::new()
                },
            };
            let line = serde_json::to_string(&record).expect("json");
            journal.push_str(&if run % 2 == 0 { line } else { sorted(&line) });
            journal.push('\n');
            expected_spans += 1;
            parent = id;
        }
        match run % 50 {
            7 => journal.push_str("{\"event\":\"span_started\",\"trace_id\":\"t\"}\n"),
            8 => journal.push_str("\n   \n"),
            9 => journal.push_str("{\"trace_id\":\"t\",\"span_id\":\n"),
            10 => journal.push_str("not json at all\n"),
            _ => {}
        }
    }
    let fast_lines = journal
        .lines()
        .filter(|l| scanned_line(l.as_bytes(), &mut Spans::new(Detail::Lean)))
        .count();
    assert_eq!(fast_lines, expected_spans);
    for detail in [Detail::Lean, Detail::Full] {
        let fast = verify::read_bytes_with("run.jsonl", journal.as_bytes(), detail);
        SERDE_ONLY.with(|s| s.set(true));
        let slow = verify::read_bytes_with("run.jsonl", journal.as_bytes(), detail);
        SERDE_ONLY.with(|s| s.set(false));
        assert_eq!(fast.spans.len(), expected_spans);
        assert_eq!(fast.skipped, 6);
        assert_eq!(fast.malformed.len(), 12);
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
        let (fast, slow) = (
            Traces::from_spans(fast.spans),
            Traces::from_spans(slow.spans),
        );
        let options = CheckOptions::default();
        let (fast_report, slow_report) = (fast.check(&options), slow.check(&options));
        assert_eq!(format!("{fast_report:?}"), format!("{slow_report:?}"));
        let plain = RenderOptions::plain();
        assert_eq!(
            render::text(&fast, &fast_report, &plain),
            render::text(&slow, &slow_report, &plain)
        );
        if detail == Detail::Full {
            assert_eq!(
                render::json(&fast, &fast_report),
                render::json(&slow, &slow_report)
            );
        }
    }
}

/// The journal's own times are read without the general parser, to the same instant;
/// anything else is left to it.
#[test]
fn the_fast_time_reader_agrees_with_the_general_one() {
    use crate::time::fast_rfc3339;
    let mut secs = 0_u64;
    while secs < 13_569_465_600 {
        for nanos in [0, 1, 123_456_789, 500_000_000, 999_999_999] {
            let t = UNIX_EPOCH + Duration::new(secs, nanos);
            for text in [
                humantime::format_rfc3339(t).to_string(),
                humantime::format_rfc3339_millis(t).to_string(),
                humantime::format_rfc3339_micros(t).to_string(),
                humantime::format_rfc3339_nanos(t).to_string(),
            ] {
                let fast = fast_rfc3339(&text);
                assert!(fast.is_some(), "{text}");
                assert_eq!(fast, crate::time::parse_rfc3339(&text), "{text}");
            }
        }
        secs += 977_777;
    }
    for text in [
        "2026-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-12-00T00:00:00Z",
        "2026-12-01T24:00:00Z",
        "2026-12-01T21:60:00Z",
        "2026-12-01T21:00:60Z",
        "2026-12-01t21:00:00Z",
        "2026-12-01T21:00:00.Z",
        "2026-12-01T21:00:00.1234567890Z",
        "2026-12-01T21:00:00,5Z",
        "1969-12-31T23:59:59Z",
        "2026-12-01T21:00:00+01:00",
        "2026-1a-01T21:00:00Z",
        "2026-12-01T21:00:0 Z",
        "2026-12-01 21:00:00Z",
    ] {
        assert_eq!(fast_rfc3339(text), None, "{text}");
    }
    assert_eq!(
        fast_rfc3339("2024-02-29T23:59:59.5Z"),
        Some(UNIX_EPOCH + Duration::new(1_709_251_199, 500_000_000))
    );
}

/// Numbers of every form, as attribute values and durations: the same values as
/// serde_json reads (`tracehop.context.rejected` keeps the value's text, so every bit of
/// a float shows).
#[test]
fn numbers_are_read_as_serde_json_reads_them() {
    let mut numbers: Vec<String> = [
        "0",
        "-0",
        "0.0",
        "-0.0",
        "1",
        "-1",
        "7.25",
        "0.1",
        "0.3",
        "11.771",
        "-3.5",
        "9007199254740993",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "18446744073709551616",
        "1234567890123456789",
        "12345678901234567890",
        "0.1234567890123456789",
        "0.00000000000000000000001",
        "123456789.123456789",
        "1e3",
        "1E-3",
        "2.5e+2",
        "1e308",
        "4.9e-324",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut rng = Rng(19);
    for _ in 0..3000 {
        let len = 1 + rng.below(24);
        let mut n: String = (0..len)
            .map(|_| char::from(b'0' + rng.below(10) as u8))
            .collect();
        if n.len() > 1 && n.starts_with('0') {
            n.replace_range(..1, "1");
        }
        if rng.below(3) > 0 && n.len() > 1 {
            let at = 1 + rng.below(n.len() - 1);
            n.insert(at, '.');
        }
        if rng.below(2) == 0 {
            n.insert(0, '-');
        }
        numbers.push(n);
    }
    for n in &numbers {
        read(&with_attribute("tracehop.context.rejected", n));
        read(&with_attribute("tracehop.queue_time_ms", n));
        read(&with_attribute("tracehop.delivery.attempt", n));
        read(&without("duration_ns").replace("0.242", n));
        if !n.contains(['-', '.', 'e', 'E']) {
            let fits = n.parse::<u64>().is_ok();
            assert_eq!(both(&with("duration_ns", n)), fits, "{n}");
        }
    }
}
