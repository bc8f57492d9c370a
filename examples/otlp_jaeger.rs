//! Export a two-service hop over OTLP to Jaeger (or Tempo, or any OpenTelemetry
//! collector), configured by the standard `OTEL_EXPORTER_OTLP_*` variables.
//!
//! ```text
//! docker compose up -d jaeger
//! cargo run --example otlp_jaeger --features otlp
//! # then open the printed http://localhost:16686/trace/<trace id>
//! ```
//!
//! The only tracehop-specific line is `.otlp()?` on each service's builder; the journal
//! keeps working beside it (here into `target/otlp-example/*.jsonl`).

use std::collections::HashMap;

use opentelemetry::trace::TraceContextExt as _;
use tracehop::{Incoming, Journal, Outgoing, Telemetry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .unwrap_or_else(|_| "http://localhost:4318".to_owned());
    std::fs::create_dir_all("target/otlp-example")?;
    let service = |name: &str| -> tracehop::Result<Telemetry> {
        Telemetry::builder(name)
            .otlp()? // spans go to the collector...
            .journal(Journal::file(format!("target/otlp-example/{name}.jsonl"))?) // ...and the journal
            .build()
    };
    let gateway = service("gateway")?;
    let worker = service("worker")?;

    // Any broker adapter does exactly this; a map of headers stands in for the broker.
    let mut headers: HashMap<String, String> = HashMap::new();
    let send = gateway.send_span(Outgoing::new("kafka", "agent.tasks"), &mut headers);
    let trace_id = send.context().span().span_context().trace_id();
    send.end();
    let process = worker.process_span(Incoming::new("kafka", "agent.tasks"), &headers);
    process
        .run(async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(())
        })
        .await?;
    process.end();

    // Shutting down flushes the batch exporters; an unreachable collector is reported.
    let mut exported = true;
    for service in [&gateway, &worker] {
        if let Err(e) = service.shutdown() {
            eprintln!(
                "{}: {e} (is a collector listening on {endpoint}?)",
                service.service_name()
            );
            exported = false;
        }
    }
    if exported {
        println!("exported to {endpoint}");
        println!("open http://localhost:16686/trace/{trace_id}");
    }
    Ok(())
}
