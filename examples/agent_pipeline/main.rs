//! The article's multi-agent run over real queues, drawn as one trace.
//!
//! A query, "Find vendor invoices for March", enters a **gateway**, goes over a queue to an
//! **agent_runtime**, which calls a **tool_service** over a queue and gets the result back,
//! then calls an **llm_provider** the same way, and the run stops with `completed`. Each
//! service has its own service name and its own span journal; every hop is a traced
//! producer and a traced consumer, so the whole run is one trace:
//!
//! ```text
//! cargo run --example agent_pipeline --features full                      # in-process Kafka (MockCluster)
//! cargo run --example agent_pipeline --features full -- --nats nats://127.0.0.1:4222
//! cargo run --example agent_pipeline --features full -- --amqp amqp://guest:guest@127.0.0.1:5672/%2f
//! cargo run --example agent_pipeline --features full -- --kafka 127.0.0.1:9092
//! cargo run --example agent_pipeline --features full -- --mixed           # Kafka, NATS and RabbitMQ hops
//! cargo run --example agent_pipeline --features full -- --break tool.calls  # lose context at one hop
//! ```
//!
//! With `--role SERVICE` a process runs one service only (start the consumers first; the
//! gateway role starts the runs); each writes its own journal, and
//! `tracehop tree target/tracehop-demo/*.jsonl` stitches them into one trace.

mod bus;
mod services;

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use opentelemetry::KeyValue;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde_json::json;
use tracehop::verify::{self, render, CheckOptions, RenderOptions, Traces};
use tracehop::{Journal, Telemetry};

use crate::bus::{AmqpBus, Bus, Error, KafkaBus, NatsBus};
use crate::services::{Demo, Pending};

/// How long a service waits for an answer before the run fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The queues of one run, in the order a run crosses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
enum Hop {
    /// gateway -> agent_runtime
    #[value(name = "agent.tasks")]
    Tasks,
    /// agent_runtime -> tool_service
    #[value(name = "tool.calls")]
    ToolCalls,
    /// tool_service -> agent_runtime
    #[value(name = "tool.results")]
    ToolResults,
    /// agent_runtime -> llm_provider
    #[value(name = "llm.requests")]
    LlmRequests,
    /// llm_provider -> agent_runtime
    #[value(name = "llm.responses")]
    LlmResponses,
    /// agent_runtime -> gateway
    #[value(name = "runs.completed")]
    Completed,
}

impl Hop {
    const ALL: [Hop; 6] = [
        Hop::Tasks,
        Hop::ToolCalls,
        Hop::ToolResults,
        Hop::LlmRequests,
        Hop::LlmResponses,
        Hop::Completed,
    ];

    fn name(self) -> &'static str {
        match self {
            Hop::Tasks => "agent.tasks",
            Hop::ToolCalls => "tool.calls",
            Hop::ToolResults => "tool.results",
            Hop::LlmRequests => "llm.requests",
            Hop::LlmResponses => "llm.responses",
            Hop::Completed => "runs.completed",
        }
    }

    /// The service that consumes this queue.
    fn consumer(self) -> Role {
        match self {
            Hop::Tasks | Hop::ToolResults | Hop::LlmResponses => Role::AgentRuntime,
            Hop::ToolCalls => Role::ToolService,
            Hop::LlmRequests => Role::LlmProvider,
            Hop::Completed => Role::Gateway,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
enum Role {
    /// Every service, in this process.
    All,
    #[value(name = "gateway")]
    Gateway,
    #[value(name = "agent_runtime")]
    AgentRuntime,
    #[value(name = "tool_service")]
    ToolService,
    #[value(name = "llm_provider")]
    LlmProvider,
}

impl Role {
    const SERVICES: [Role; 4] = [
        Role::Gateway,
        Role::AgentRuntime,
        Role::ToolService,
        Role::LlmProvider,
    ];

    fn service(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Gateway => "gateway",
            Role::AgentRuntime => "agent_runtime",
            Role::ToolService => "tool_service",
            Role::LlmProvider => "llm_provider",
        }
    }
}

/// The article's multi-agent run over real queues, drawn as one trace.
#[derive(Debug, Parser)]
#[command(name = "agent_pipeline")]
struct Args {
    /// Kafka bootstrap servers. Without any broker flag, an in-process Kafka
    /// (rdkafka's MockCluster) is used.
    #[arg(long, value_name = "SERVERS")]
    kafka: Option<String>,
    /// NATS server URL.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// AMQP URL of a RabbitMQ.
    #[arg(long, value_name = "URL")]
    amqp: Option<String>,
    /// Use all three brokers: gateway <-> agent_runtime over Kafka, tool calls over NATS,
    /// LLM calls over RabbitMQ (loopback defaults for addresses not given).
    #[arg(long)]
    mixed: bool,
    /// Run one service only (its own process, its own journal).
    #[arg(long, value_enum, default_value = "all")]
    role: Role,
    /// Where each service writes `<service>.jsonl`.
    #[arg(long, value_name = "DIR", default_value = "target/tracehop-demo")]
    journal_dir: PathBuf,
    /// How many runs (each its own trace).
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Send this hop without trace context, the article's "context is lost in async
    /// queues" mistake; then see what `tracehop check` says.
    #[arg(long = "break", value_enum, value_name = "HOP")]
    break_hop: Option<Hop>,
    /// Also export spans over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT, default
    /// http://localhost:4318), e.g. to the Jaeger of docker-compose.yml.
    #[arg(long)]
    otlp: bool,
    /// Prefix of queue names; processes of one multi-process run must agree on it.
    #[arg(long)]
    namespace: Option<String>,
    /// The user's query.
    #[arg(long, default_value = "Find vendor invoices for March")]
    query: String,
}

/// Which bus each hop uses.
struct Network {
    routes: HashMap<Hop, Arc<dyn Bus>>,
    namespace: String,
    broken: Option<Hop>,
}

impl Network {
    fn queue(&self, hop: Hop) -> String {
        queue_name(&self.namespace, hop)
    }

    fn bus(&self, hop: Hop) -> &Arc<dyn Bus> {
        &self.routes[&hop]
    }

    async fn send(&self, from: &Telemetry, hop: Hop, body: serde_json::Value) -> Result<(), Error> {
        let traced = self.broken != Some(hop);
        let queue = self.queue(hop);
        self.bus(hop)
            .send(from, &queue, body.to_string().into_bytes(), traced)
            .await
    }
}

fn queue_name(namespace: &str, hop: Hop) -> String {
    if namespace.is_empty() {
        hop.name().to_owned()
    } else {
        format!("{namespace}.{}", hop.name())
    }
}

/// The in-process Kafka used when no broker is named.
type Mock = MockCluster<'static, DefaultProducerContext>;

async fn network(args: &Args) -> Result<(Network, Option<Mock>), Error> {
    let given = [
        args.kafka.is_some(),
        args.nats.is_some(),
        args.amqp.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given > 1 && !args.mixed {
        return Err("pick one of --kafka, --nats, --amqp, or --mixed to use several".into());
    }
    // Queue names: plain in the in-process Kafka; on a real broker, prefixed so that runs
    // never see each other's messages (processes of one multi-process run share one).
    let real_broker = args.mixed || given > 0;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| match (args.role, real_broker) {
            (_, false) => String::new(),
            (Role::All, true) => format!("demo{}", std::process::id()),
            (_, true) => "demo".to_owned(),
        });
    let mut routes: HashMap<Hop, Arc<dyn Bus>> = HashMap::new();
    let mut mock = None;
    if args.mixed {
        let kafka: Arc<dyn Bus> = Arc::new(KafkaBus::new(
            args.kafka.as_deref().unwrap_or("127.0.0.1:9092"),
            false,
        )?);
        let nats_url = args
            .nats
            .clone()
            .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
        let nats: Arc<dyn Bus> = Arc::new(NatsBus {
            client: async_nats::connect(&nats_url).await?,
            url: nats_url,
        });
        let amqp: Arc<dyn Bus> = Arc::new(
            AmqpBus::connect(
                args.amqp
                    .as_deref()
                    .unwrap_or("amqp://guest:guest@127.0.0.1:5672/%2f"),
            )
            .await?,
        );
        routes.insert(Hop::Tasks, kafka.clone());
        routes.insert(Hop::Completed, kafka);
        routes.insert(Hop::ToolCalls, nats.clone());
        routes.insert(Hop::ToolResults, nats);
        routes.insert(Hop::LlmRequests, amqp.clone());
        routes.insert(Hop::LlmResponses, amqp);
    } else {
        let bus: Arc<dyn Bus> =
            if let Some(url) = &args.nats {
                Arc::new(NatsBus {
                    client: async_nats::connect(url).await?,
                    url: url.clone(),
                })
            } else if let Some(url) = &args.amqp {
                Arc::new(AmqpBus::connect(url).await?)
            } else {
                match &args.kafka {
                    Some(servers) => Arc::new(KafkaBus::new(servers, false)?),
                    None if args.role != Role::All => return Err(
                        "--role needs a broker every process can reach: --kafka, --nats or --amqp"
                            .into(),
                    ),
                    None => {
                        let cluster = MockCluster::new(1)?;
                        for hop in Hop::ALL {
                            cluster.create_topic(&queue_name(&namespace, hop), 1, 1)?;
                        }
                        let bus = Arc::new(KafkaBus::new(&cluster.bootstrap_servers(), true)?);
                        mock = Some(cluster);
                        bus
                    }
                }
            };
        for hop in Hop::ALL {
            routes.insert(hop, bus.clone());
        }
    }
    Ok((
        Network {
            routes,
            namespace,
            broken: args.break_hop,
        },
        mock,
    ))
}

fn journal_path(dir: &Path, role: Role) -> PathBuf {
    dir.join(format!("{}.jsonl", role.service()))
}

fn telemetry(args: &Args, role: Role) -> Result<Telemetry, Error> {
    let path = journal_path(&args.journal_dir, role);
    // A demo run starts its journal afresh.
    let _ = std::fs::remove_file(&path);
    let builder = Telemetry::builder(role.service()).journal(Journal::file(&path)?);
    #[cfg(feature = "otlp")]
    let builder = if args.otlp { builder.otlp()? } else { builder };
    #[cfg(not(feature = "otlp"))]
    if args.otlp {
        return Err("--otlp needs the `otlp` feature".into());
    }
    Ok(builder.build()?)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agent_pipeline: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<std::process::ExitCode, Error> {
    std::fs::create_dir_all(&args.journal_dir)?;
    let roles: Vec<Role> = match args.role {
        Role::All => Role::SERVICES.to_vec(),
        one => vec![one],
    };
    let (net, _mock_cluster) = network(args).await?;
    let net = Arc::new(net);
    let mut telemetry = HashMap::new();
    for &role in &roles {
        telemetry.insert(role, self::telemetry(args, role)?);
    }
    let demo = Demo {
        net: net.clone(),
        telemetry,
        tool_results: Pending::default(),
        llm_responses: Pending::default(),
        completed: Pending::default(),
    };

    // Queues first, then every consumer this process runs, then (gateway) the runs.
    let mut by_bus: HashMap<String, (Arc<dyn Bus>, Vec<String>)> = HashMap::new();
    for hop in Hop::ALL {
        let bus = net.bus(hop).clone();
        by_bus
            .entry(bus.label())
            .or_insert_with(|| (bus, Vec::new()))
            .1
            .push(net.queue(hop));
    }
    let mut used = Vec::new();
    for (label, (bus, queues)) in &by_bus {
        bus.prepare(queues).await?;
        used.push(label.clone());
    }
    used.sort();
    let mut loops = Vec::new();
    for hop in Hop::ALL
        .into_iter()
        .filter(|h| roles.contains(&h.consumer()))
    {
        let me = demo.telemetry[&hop.consumer()].clone();
        let run = net
            .bus(hop)
            .consume(me, net.queue(hop), u64::from(args.runs), demo.handler(hop))
            .await?;
        loops.push(tokio::spawn(run));
    }
    if args.role != Role::All && args.role != Role::Gateway {
        println!("ready: {} on {}", args.role.service(), used.join(", "));
    }

    let mut completed = Vec::new();
    if let Some(gateway) = demo.telemetry.get(&Role::Gateway) {
        println!("query: {:?} over {}", args.query, used.join(", "));
        for n in 1..=args.runs {
            let run = format!("run-{n}-{}", std::process::id());
            let done = demo.completed.expect(&run);
            gateway
                .in_span_with(
                    "handle_request",
                    [
                        KeyValue::new("user_query", args.query.clone()),
                        KeyValue::new("run_id", run.clone()),
                    ],
                    async {
                        tokio::time::sleep(Duration::from_millis(6)).await; // validate and route
                        net.send(gateway, Hop::Tasks, json!({"run": run, "text": args.query}))
                            .await
                    },
                )
                .await?;
            let answer = Pending::wait(done, "completed run").await?;
            println!("{run}: {answer}\nstop_reason: completed");
            completed.push(run);
        }
    }
    for l in loops {
        match tokio::time::timeout(ANSWER_TIMEOUT, l).await {
            Ok(Ok(result)) => result?,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err("a consumer did not finish its messages".into()),
        }
    }
    for t in demo.telemetry.values() {
        // A collector that is not there (with --otlp) loses spans but not the run; the
        // journal still has them all.
        if let Err(e) = t.shutdown() {
            eprintln!("warning: {}: {e}", t.service_name());
        }
    }

    let paths: Vec<PathBuf> = roles
        .iter()
        .map(|r| journal_path(&args.journal_dir, *r))
        .collect();
    if args.role != Role::All {
        println!("journal: {}", paths[0].display());
        return Ok(std::process::ExitCode::SUCCESS);
    }
    // Draw what the journals say, the way `tracehop tree` does.
    let input = verify::read_files(&paths)?;
    let traces = Traces::from_records(input.spans);
    let report = traces.check(&CheckOptions::new().entry("gateway"));
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let options = if color {
        RenderOptions::colored()
    } else {
        RenderOptions::plain()
    };
    println!();
    print!("{}", render::text(&traces, &report, &options));
    let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    println!("\njournals: {}", files.join(" "));
    println!(
        "check them: cargo run --features cli -- check --entry gateway {}",
        files.join(" ")
    );
    Ok(std::process::ExitCode::SUCCESS)
}
