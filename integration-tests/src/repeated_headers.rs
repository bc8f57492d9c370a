//! One scenario for every broker that can repeat a header (Kafka, NATS): four messages
//! whose context headers repeat, the way each is read, and what W3C says must come of it.

use std::collections::HashMap;

use opentelemetry::baggage::BaggageExt as _;
use tracehop::propagation::{ReadCarrier, BAGGAGE, TRACEPARENT, TRACESTATE};
use tracehop::{Incoming, Outgoing, SpanRecord, Telemetry};

/// The traceparent the messages continue.
pub const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// Another valid one, for the message with two.
pub const OTHER_TP: &str = "00-11111111111111111111111111111111-2222222222222222-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

/// The headers of each message, in order, repeats included.
pub fn messages() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        // 0: two traceparents.
        vec![(TRACEPARENT, TP), ("user", "u"), (TRACEPARENT, OTHER_TP)],
        // 1: tracestate and baggage split over several headers.
        vec![
            (TRACEPARENT, TP),
            (TRACESTATE, "a=1,b=2"),
            (BAGGAGE, "k1=v1"),
            (TRACESTATE, "c=3"),
            (BAGGAGE, "k2=v2,k3=v3"),
            (TRACESTATE, "d=4,e=5"),
        ],
        // 2: a tracestate with a key twice.
        vec![(TRACEPARENT, TP), (TRACESTATE, "foo=1,foo=2")],
        // 3: the same key in two tracestate headers.
        vec![
            (TRACEPARENT, TP),
            (TRACESTATE, "foo=1"),
            (TRACESTATE, "foo=2"),
        ],
    ]
}

/// Open the process span of message `index` as received, and return the headers a send
/// made inside it carries on.
pub fn process_and_forward(
    telemetry: &Telemetry,
    index: usize,
    system: &'static str,
    destination: &str,
    headers: &dyn ReadCarrier,
) -> HashMap<String, String> {
    let process = telemetry.process_span(Incoming::new(system, destination), headers);
    if index == 1 {
        let baggage = process.context().baggage();
        let mut members: Vec<String> = baggage
            .iter()
            .map(|(k, (v, _))| format!("{k}={v}"))
            .collect();
        members.sort();
        assert_eq!(members, ["k1=v1", "k2=v2", "k3=v3"], "baggage joined");
    }
    let mut out = HashMap::new();
    process.in_scope(|| {
        telemetry
            .send_span(Outgoing::new(system, "next"), &mut out)
            .end()
    });
    process.end();
    out
}

/// What W3C says of the four messages, on their process spans (`records`, named
/// `process <destination>`) and on what a send inside each carried on (`forwarded`).
pub fn assert_w3c(
    records: &[SpanRecord],
    destination: &str,
    forwarded: &[HashMap<String, String>],
) {
    let name = format!("process {destination}");
    let process: Vec<_> = records
        .iter()
        .filter(|s| s.operation_name.as_deref() == Some(name.as_str()))
        .collect();
    assert_eq!((process.len(), forwarded.len()), (4, 4));
    // 0: a new trace, and why.
    assert_eq!(process[0].parent_span_id, None);
    assert_ne!(process[0].trace_id, TRACE_ID);
    assert_eq!(
        process[0].attribute_str("tracehop.context.rejected"),
        Some("traceparent is repeated")
    );
    // 1: continued, with every tracestate member in order.
    assert_eq!(process[1].parent_span_id.as_deref(), Some(SPAN_ID));
    assert_eq!(
        forwarded[1].get(TRACESTATE).map(String::as_str),
        Some("a=1,b=2,c=3,d=4,e=5")
    );
    assert!(
        forwarded[1][BAGGAGE].contains("k2=v2"),
        "{:?}",
        forwarded[1]
    );
    // 2 and 3: continued without the tracestate, which is not forwarded.
    for (p, out) in process[2..].iter().zip(&forwarded[2..]) {
        assert_eq!(p.trace_id, TRACE_ID);
        assert_eq!(p.parent_span_id.as_deref(), Some(SPAN_ID));
        assert_eq!(
            p.attribute_str("tracehop.context.discarded"),
            Some("tracestate has duplicate keys")
        );
        assert_eq!(out.get(TRACESTATE), None, "{out:?}");
        assert!(out[TRACEPARENT].contains(TRACE_ID));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guard against an edit that makes a case vacuous: the traceparents are valid (so a
    /// rejection is for the repeat), and the repeats are there.
    #[test]
    fn the_scenarios_cover_what_they_claim() {
        use tracehop::propagation::traceparent::validate;
        assert!(validate(TP.as_bytes()).is_ok() && validate(OTHER_TP.as_bytes()).is_ok());
        let m = messages();
        let count = |i: usize, name: &str| m[i].iter().filter(|(k, _)| *k == name).count();
        assert_eq!(count(0, TRACEPARENT), 2);
        assert_eq!((count(1, TRACESTATE), count(1, BAGGAGE)), (3, 2));
        assert_eq!(count(3, TRACESTATE), 2);
    }
}
