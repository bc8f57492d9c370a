//! A handle whose only span processor is one journal writes tracehop's own spans without
//! the SDK's span (`journal::direct`). Each scenario here runs twice, on that handle and
//! on one whose journal sits beside a second (no-op) processor, so every span goes
//! through the SDK: the lines must be the same, field for field, except for the ids
//! (compared by where they appear), the clock readings and the queue time.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use opentelemetry::trace::{
    Link, Span as _, SpanKind, TraceContextExt as _, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, ShouldSample, SpanData, SpanProcessor,
};
use serde_json::Value;
use tracehop::{Incoming, Journal, Outgoing, ParentPolicy, Telemetry};

/// An in-memory journal destination.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A second span processor that does nothing: its presence makes every span an SDK span.
#[derive(Debug)]
struct Nothing;

impl SpanProcessor for Nothing {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}
    fn on_end(&self, _span: SpanData) {}
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// A sampler for roots that drops the spans whose name says "ignored" and keeps what
/// it was asked about (the SDK's `ParentBased` takes only the decision of its delegate).
#[derive(Debug, Clone, Default)]
struct Marking(Arc<Mutex<Vec<(String, usize)>>>);

impl ShouldSample for Marking {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        _trace_id: TraceId,
        name: &str,
        _kind: &SpanKind,
        attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        self.0
            .lock()
            .expect("lock")
            .push((name.to_owned(), attributes.len()));
        SamplingResult {
            decision: if name.contains("ignored") {
                SamplingDecision::Drop
            } else {
                SamplingDecision::RecordAndSample
            },
            attributes: vec![KeyValue::new("sampler.marked", true)],
            trace_state: parent
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

/// The two handles of one scenario: `(direct, through the SDK)`, and their journals.
fn handles(sampler: Option<Sampler>) -> [(Telemetry, Buffer); 2] {
    [false, true].map(|sdk| {
        let buffer = Buffer::default();
        let mut builder =
            Telemetry::builder("svc").journal(Journal::writer("memory", buffer.clone()));
        if sdk {
            builder = builder.span_processor(Nothing);
        }
        if let Some(sampler) = &sampler {
            builder = builder.sampler(sampler.clone());
        }
        (builder.build().expect("telemetry"), buffer)
    })
}

/// The journal's lines, parsed.
fn lines(telemetry: &Telemetry, buffer: &Buffer) -> Vec<Value> {
    telemetry.shutdown().expect("journal written");
    let bytes = buffer.0.lock().expect("lock").clone();
    String::from_utf8(bytes)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// `lines` with each id replaced by the order it first appears in, and the clock
/// readings blanked.
fn normalized(lines: &[Value]) -> Vec<Value> {
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut label = |v: &mut Value| {
        if let Some(s) = v.as_str() {
            let n = ids.len();
            *v = Value::String(ids.entry(s.to_owned()).or_insert(format!("id{n}")).clone());
        }
    };
    lines
        .iter()
        .map(|line| {
            let mut line = line.clone();
            for key in ["trace_id", "span_id", "parent_span_id"] {
                label(&mut line[key]);
            }
            if let Some(links) = line.get_mut("links").and_then(Value::as_array_mut) {
                for link in links {
                    label(&mut link["trace_id"]);
                    label(&mut link["span_id"]);
                }
            }
            for key in ["timestamp", "start_time", "latency_ms", "duration_ns"] {
                line[key] = Value::Null;
            }
            // Clock readings among the attributes: the queue time, `tracing`'s busy and
            // idle times.
            for key in ["tracehop.queue_time_ms", "busy_ns", "idle_ns"] {
                if let Some(v) = line["attributes"].get_mut(key) {
                    *v = Value::Null;
                }
            }
            line
        })
        .collect()
}

/// Run `scenario` on both handles; the normalized journals must be equal. Returns the
/// direct handle's lines.
async fn same_lines<F, Fut>(sampler: Option<Sampler>, scenario: F) -> Vec<Value>
where
    F: Fn(Telemetry) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let [(direct, direct_buf), (sdk, sdk_buf)] = handles(sampler);
    scenario(direct.clone()).await;
    scenario(sdk.clone()).await;
    let direct_lines = lines(&direct, &direct_buf);
    let sdk_lines = lines(&sdk, &sdk_buf);
    assert!(!direct_lines.is_empty());
    assert_eq!(
        normalized(&direct_lines),
        normalized(&sdk_lines),
        "direct:\n{direct_lines:#?}\nthrough the SDK:\n{sdk_lines:#?}"
    );
    direct_lines
}

fn str_of<'a>(line: &'a Value, key: &str) -> &'a str {
    line[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {line}"))
}

/// A hop with a late attribute, a failing handler with a user span inside it, a retry in
/// link mode and a span dropped without being ended.
#[tokio::test]
async fn a_hop_is_journaled_as_the_sdk_would_journal_it() {
    let lines = same_lines(None, |t| async move {
        let mut headers: HashMap<String, String> = HashMap::new();
        let send = t.send_span(
            Outgoing::new("kafka", "tasks")
                .body_size(7)
                .attribute("app.tenant", "acme"),
            &mut headers,
        );
        send.set_attribute("messaging.kafka.offset", 42_i64);
        send.end();

        let process = t.process_span(Incoming::new("kafka", "tasks").attempt(2), &headers);
        let tracer = t.provider().tracer("user");
        let result = process
            .run(async {
                let mut span = tracer.start("call model");
                span.set_attribute(KeyValue::new("model", "small"));
                span.end();
                Err::<(), _>("model refused \"politely\"")
            })
            .await;
        assert!(result.is_err());
        process.end();

        let linked = t.process_span(
            Incoming::new("kafka", "tasks").parent_policy(ParentPolicy::Link),
            &headers,
        );
        linked.run(async { Ok::<_, String>(()) }).await.expect("ok");
        linked.end();

        drop(t.process_span(Incoming::new("kafka", "dropped"), &headers));
    })
    .await;

    assert_eq!(lines.len(), 5, "{lines:#?}");
    let [send, user, process, linked, dropped] = &lines[..] else {
        unreachable!()
    };
    assert_eq!(str_of(send, "operation_name"), "send tasks");
    assert_eq!(send["attributes"]["messaging.kafka.offset"], 42);
    assert_eq!(send["attributes"]["app.tenant"], "acme");
    assert_eq!(send["status"], "ok");
    // The process span is the send span's child; the user's span the process span's.
    assert_eq!(str_of(process, "trace_id"), str_of(send, "trace_id"));
    assert_eq!(str_of(process, "parent_span_id"), str_of(send, "span_id"));
    assert_eq!(str_of(user, "parent_span_id"), str_of(process, "span_id"));
    assert_eq!(str_of(user, "trace_id"), str_of(send, "trace_id"));
    assert_eq!(process["status"], "error");
    assert_eq!(process["error"], "model refused \"politely\"");
    assert_eq!(process["attributes"]["tracehop.delivery.attempt"], 2);
    assert!(process["attributes"]["tracehop.queue_time_ms"].is_number());
    // Link mode: a new trace, linked to the send span.
    assert_ne!(str_of(linked, "trace_id"), str_of(send, "trace_id"));
    assert_eq!(linked["parent_span_id"], Value::Null);
    assert_eq!(linked["links"][0]["span_id"], send["span_id"]);
    // Dropped without an end: ended then, with no status.
    assert_eq!(str_of(dropped, "operation_name"), "process dropped");
    assert_eq!(dropped["status"], "unset");
}

/// Span names the journal keeps are checked for JSON escapes once, when made: a
/// destination with a quote, a backslash and a control character is escaped on every
/// line, the first and the ones after it that share the kept name, beside a clean one.
#[tokio::test]
async fn kept_span_names_are_escaped_on_every_line() {
    let odd = "tasks \"eu\"\\\n\u{1}";
    let lines = same_lines(None, |t| async move {
        for destination in [odd, "tasks", odd, "tasks", odd] {
            let mut headers: HashMap<String, String> = HashMap::new();
            t.send_span(Outgoing::new("nats", destination), &mut headers)
                .end();
            let process = t.process_span(Incoming::new("nats", destination), &headers);
            process.end();
        }
    })
    .await;
    assert_eq!(lines.len(), 10, "{lines:#?}");
    let names: Vec<&str> = lines.iter().map(|l| str_of(l, "operation_name")).collect();
    let mut expected = Vec::new();
    for destination in [odd, "tasks", odd, "tasks", odd] {
        expected.push(format!("send {destination}"));
        expected.push(format!("process {destination}"));
    }
    assert_eq!(names, expected);
}

/// A sampler that decides roots itself is asked with the span's name and attributes,
/// once per root, and a root it drops still carries context to a child that it then
/// does not record either.
#[tokio::test]
async fn a_root_sampler_is_asked_with_the_whole_span() {
    let marking = Marking::default();
    let sampler = Sampler::ParentBased(Box::new(marking.clone()));
    let lines = same_lines(Some(sampler), |t| async move {
        let mut headers: HashMap<String, String> = HashMap::new();
        t.send_span(Outgoing::new("nats", "jobs"), &mut headers)
            .end();
        let process = t.process_span(Incoming::new("nats", "jobs"), &headers);
        process.end();

        let mut ignored: HashMap<String, String> = HashMap::new();
        let send = t.send_span(Outgoing::new("nats", "ignored"), &mut ignored);
        assert!(!send.span_context().is_sampled());
        assert!(send.span_context().is_valid());
        let traceparent = ignored.get("traceparent").expect("context is still sent");
        assert!(traceparent.ends_with("-00"), "{traceparent}");
        let trace = send.span_context().trace_id();
        send.end();
        let child = t.process_span(Incoming::new("nats", "ignored"), &ignored);
        assert!(!child.is_recording());
        assert_eq!(child.context().span().span_context().trace_id(), trace);
        child.end();
    })
    .await;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let (send, process) = (&lines[0], &lines[1]);
    assert_eq!(str_of(send, "operation_name"), "send jobs");
    // `ParentBased` keeps only its delegate's decision.
    assert!(send["attributes"].get("sampler.marked").is_none());
    assert_eq!(str_of(process, "parent_span_id"), str_of(send, "span_id"));
    // Asked about the two roots, by each handle, with the same name and attributes (the
    // send span's system, destination, operation...); never about the children.
    let seen = marking.0.lock().expect("lock").clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0], seen[2]);
    assert_eq!(seen[1], seen[3]);
    assert_eq!(seen[0].0, "send jobs");
    assert_eq!(seen[1].0, "send ignored");
    assert!(seen[0].1 >= 3, "{seen:?}");
}

/// Roots under a sampler that records every root without looking (`AlwaysOn`, and the
/// default `ParentBased(AlwaysOn)`), which the journal then does not ask: each is recorded
/// in the trace it should have (a new one, the one `x-trace-id` names, a linked root's
/// own), with the lines the SDK writes, and its children stay below it; a span below a
/// context whose span is not valid is what the SDK makes of it (dropped by the default,
/// a root under `AlwaysOn`).
#[tokio::test]
async fn roots_recorded_without_asking_keep_their_traces() {
    const JOINED: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    for sampler in [None, Some(Sampler::AlwaysOn)] {
        let lines = same_lines(sampler.clone(), |t| async move {
            let mut headers: HashMap<String, String> = HashMap::new();
            t.send_span(Outgoing::new("nats", "jobs"), &mut headers)
                .end();
            t.process_span(Incoming::new("nats", "jobs"), &headers)
                .end();
            t.process_span(
                Incoming::new("nats", "jobs").parent_policy(ParentPolicy::Link),
                &headers,
            )
            .end();
            let simple: HashMap<String, String> =
                HashMap::from([("x-trace-id".to_owned(), JOINED.to_owned())]);
            let joined = t.process_span(Incoming::new("nats", "legacy"), &simple);
            let mut onward: HashMap<String, String> = HashMap::new();
            let send = t.send_span_with_parent(
                Outgoing::new("nats", "onward"),
                joined.context(),
                &mut onward,
            );
            send.end();
            joined.end();
            // Inside a span that is not valid (a no-op tracer's): the default sampler
            // follows it and drops the send; `AlwaysOn` records a root.
            let noop = Context::new().with_span(opentelemetry::trace::noop::NoopSpan::DEFAULT);
            let mut inside: HashMap<String, String> = HashMap::new();
            t.send_span_with_parent(Outgoing::new("nats", "inside-noop"), &noop, &mut inside)
                .end();
            assert!(inside.contains_key("traceparent"), "context is still sent");
        })
        .await;
        let always_on = sampler.is_some();
        assert_eq!(
            lines.len(),
            5 + usize::from(always_on),
            "{sampler:?}: {lines:#?}"
        );
        let [send, child, linked, onward, joined] = &lines[..5] else {
            unreachable!()
        };
        if always_on {
            assert_eq!(str_of(&lines[5], "operation_name"), "send inside-noop");
            assert_eq!(lines[5]["parent_span_id"], Value::Null);
        }
        assert_eq!(send["parent_span_id"], Value::Null, "{sampler:?}");
        assert_eq!(str_of(child, "trace_id"), str_of(send, "trace_id"));
        assert_eq!(str_of(child, "parent_span_id"), str_of(send, "span_id"));
        assert_ne!(str_of(linked, "trace_id"), str_of(send, "trace_id"));
        assert_eq!(linked["parent_span_id"], Value::Null);
        assert_eq!(linked["links"][0]["span_id"], send["span_id"]);
        assert_eq!(str_of(joined, "trace_id"), JOINED, "{sampler:?}");
        assert_eq!(joined["parent_span_id"], Value::Null);
        assert_eq!(str_of(onward, "trace_id"), JOINED);
        assert_eq!(str_of(onward, "parent_span_id"), str_of(joined, "span_id"));
    }
}

/// More attributes than the SDK's limit (128) are cut at the limit on both paths, at the
/// start and when set later.
#[tokio::test]
async fn span_limits_are_the_sdks() {
    let lines = same_lines(None, |t| async move {
        let mut msg = Outgoing::new("kafka", "wide");
        for i in 0..150 {
            msg = msg.attribute(Box::leak(format!("app.a{i:03}").into_boxed_str()), i as i64);
        }
        let mut headers: HashMap<String, String> = HashMap::new();
        let send = t.send_span(msg, &mut headers);
        send.set_attribute("app.late", true);
        send.end();
    })
    .await;
    let attributes = lines[0]["attributes"].as_object().expect("attributes");
    assert_eq!(attributes.len(), 128);
    assert!(attributes.get("app.late").is_none());
}

#[tracing::instrument(skip_all)]
async fn instrumented_send(t: &Telemetry, headers: &mut HashMap<String, String>) {
    t.send_span(Outgoing::new("kafka", "tasks"), headers).end();
}

/// `tracing` both ways on a direct handle: a send inside an `#[instrument]` span continues
/// its trace, and a `tracing` span inside the handler is the process span's child.
#[tokio::test]
async fn tracing_spans_nest_with_direct_spans() {
    use tracing::Instrument as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let lines = same_lines(None, |t| async move {
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(t.provider().tracer("app")));
        let _default = tracing::subscriber::set_default(subscriber);
        let mut headers: HashMap<String, String> = HashMap::new();
        instrumented_send(&t, &mut headers).await;
        let process = t.process_span(Incoming::new("kafka", "tasks"), &headers);
        process
            .run(async {
                // Opened inside the handler, so its parent is the process span.
                async { Ok::<_, String>(()) }
                    .instrument(tracing::info_span!("call_llm"))
                    .await
            })
            .await
            .expect("ok");
        process.end();
    })
    .await;
    let name = |line: &Value| str_of(line, "operation_name").to_owned();
    let find = |n: &str| {
        lines
            .iter()
            .find(|l| name(l) == n)
            .unwrap_or_else(|| panic!("{n} in {lines:#?}"))
    };
    let (outer, send, process, inner) = (
        find("instrumented_send"),
        find("send tasks"),
        find("process tasks"),
        find("call_llm"),
    );
    assert_eq!(str_of(send, "parent_span_id"), str_of(outer, "span_id"));
    assert_eq!(str_of(send, "trace_id"), str_of(outer, "trace_id"));
    assert_eq!(str_of(process, "parent_span_id"), str_of(send, "span_id"));
    assert_eq!(str_of(inner, "parent_span_id"), str_of(process, "span_id"));
    assert_eq!(str_of(inner, "trace_id"), str_of(outer, "trace_id"));
}

/// A span that ends after `shutdown` is not written and not counted as lost, on both
/// paths (the SDK discards it; the direct journal does the same), and the shutdown itself
/// reports nothing.
#[tokio::test]
async fn a_span_ending_after_shutdown_is_not_written() {
    for (telemetry, buffer) in handles(None) {
        let mut headers: HashMap<String, String> = HashMap::new();
        telemetry
            .send_span(Outgoing::new("kafka", "before"), &mut headers)
            .end();
        let late = telemetry.send_span(Outgoing::new("kafka", "late"), &mut headers);
        telemetry.shutdown().expect("shut down");
        late.end();
        let stats = telemetry.journal_stats();
        assert_eq!(stats[0].written, 1, "{stats:?}");
        assert_eq!(stats[0].dropped, 0, "{stats:?}");
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("send before"), "{text}");
    }
}
