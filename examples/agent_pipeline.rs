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

use std::collections::HashMap;
use std::future::Future;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};
use serde_json::json;
use tokio::sync::oneshot;
use tracehop::verify::{self, render, CheckOptions, RenderOptions, Traces};
use tracehop::{Journal, Telemetry};

type Error = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type Handler = Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

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

/// A message bus: one broker, as this demo uses it.
trait Bus: Send + Sync {
    fn label(&self) -> String;
    /// Create the queues/topics if the broker needs that.
    fn prepare<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<(), Error>>;
    /// Send `body` to `queue` as `from`, with trace context unless `traced` is false.
    fn send<'a>(
        &'a self,
        from: &'a Telemetry,
        queue: &'a str,
        body: Vec<u8>,
        traced: bool,
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// Subscribe `service` to `queue`; the returned loop runs `handler` for `count`
    /// messages, each inside its process span.
    fn consume(
        &self,
        service: Telemetry,
        queue: String,
        count: u64,
        handler: Handler,
    ) -> BoxFuture<'_, Result<BoxFuture<'static, Result<(), Error>>, Error>>;
}

struct KafkaBus {
    config: ClientConfig,
    producer: FutureProducer,
    /// Topics live in an in-process MockCluster (which `run` keeps alive).
    mock: bool,
}

impl KafkaBus {
    fn new(servers: &str, mock: bool) -> Result<KafkaBus, Error> {
        let mut config = ClientConfig::new();
        // Low-latency settings: a demo sends one message at a time.
        config
            .set("bootstrap.servers", servers)
            .set("linger.ms", "0")
            .set("fetch.wait.max.ms", "10");
        let producer: FutureProducer = config.create()?;
        Ok(KafkaBus {
            config,
            producer,
            mock,
        })
    }
}

impl Bus for KafkaBus {
    fn label(&self) -> String {
        if self.mock {
            "Kafka (in-process MockCluster)".into()
        } else {
            format!(
                "Kafka at {}",
                self.config.get("bootstrap.servers").unwrap_or("?")
            )
        }
    }

    fn prepare<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if self.mock {
                // `run` created them in the MockCluster.
                return Ok(());
            }
            let admin: AdminClient<DefaultClientContext> = self.config.create()?;
            let topics: Vec<NewTopic<'_>> = queues
                .iter()
                .map(|q| NewTopic::new(q, 1, TopicReplication::Fixed(1)))
                .collect();
            for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
                match result {
                    Ok(_) => {}
                    Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => {
                        return Err(format!("create topic {topic}: {code}").into())
                    }
                }
            }
            Ok(())
        })
    }

    fn send<'a>(
        &'a self,
        from: &'a Telemetry,
        queue: &'a str,
        body: Vec<u8>,
        traced: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let record = FutureRecord::<(), _>::to(queue).payload(&body);
            let sent = if traced {
                tracehop::kafka::TracedProducer::new(self.producer.clone(), from.clone())
                    .send(record, Duration::from_secs(10))
                    .await
            } else {
                self.producer.send(record, Duration::from_secs(10)).await
            };
            sent.map(|_| ()).map_err(|(e, _)| e.into())
        })
    }

    fn consume(
        &self,
        service: Telemetry,
        queue: String,
        count: u64,
        handler: Handler,
    ) -> BoxFuture<'_, Result<BoxFuture<'static, Result<(), Error>>, Error>> {
        Box::pin(async move {
            let group = format!("{queue}-{}", service.service_name());
            let consumer: StreamConsumer = self
                .config
                .clone()
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "6000")
                .create()?;
            // One partition per topic and one consumer per service: assign it directly
            // rather than waiting for a consumer-group rebalance.
            let mut partitions = rdkafka::TopicPartitionList::new();
            partitions.add_partition_offset(&queue, 0, rdkafka::Offset::Stored)?;
            consumer.assign(&partitions)?;
            let consumer = tracehop::kafka::TracedConsumer::new(consumer, service)
                .group_id(group)
                .stop_after(count);
            let run: BoxFuture<'static, Result<(), Error>> = Box::pin(async move {
                let result = consumer
                    .run(|m| handler(m.payload().unwrap_or_default().to_vec()))
                    .await;
                // Closing an rdkafka consumer blocks while it leaves the group: do it off
                // the async workers, or a task woken just before waits for it.
                let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
                result.map(|_| ()).map_err(|e| e.to_string().into())
            });
            Ok(run)
        })
    }
}

struct NatsBus {
    url: String,
    client: async_nats::Client,
}

impl Bus for NatsBus {
    fn label(&self) -> String {
        format!("NATS at {}", self.url)
    }

    fn prepare<'a>(&'a self, _: &'a [String]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn send<'a>(
        &'a self,
        from: &'a Telemetry,
        queue: &'a str,
        body: Vec<u8>,
        traced: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if traced {
                tracehop::nats::TracedClient::new(self.client.clone(), from.clone())
                    .publish(queue.to_owned(), body.into())
                    .await?;
            } else {
                self.client.publish(queue.to_owned(), body.into()).await?;
            }
            self.client.flush().await?;
            Ok(())
        })
    }

    fn consume(
        &self,
        service: Telemetry,
        queue: String,
        count: u64,
        handler: Handler,
    ) -> BoxFuture<'_, Result<BoxFuture<'static, Result<(), Error>>, Error>> {
        Box::pin(async move {
            let group = service.service_name().to_owned();
            let subscriber = tracehop::nats::TracedClient::new(self.client.clone(), service)
                .queue_subscribe(queue, group)
                .await?
                .limit(usize::try_from(count).unwrap_or(usize::MAX));
            // The server must know the subscription before another service publishes.
            tracehop::nats::round_trip(&self.client).await?;
            let run: BoxFuture<'static, Result<(), Error>> = Box::pin(async move {
                subscriber.process(|m| handler(m.payload.to_vec())).await;
                Ok(())
            });
            Ok(run)
        })
    }
}

struct AmqpBus {
    url: String,
    connection: Connection,
    channel: lapin::Channel,
}

impl AmqpBus {
    async fn connect(url: &str) -> Result<AmqpBus, Error> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(AmqpBus {
            url: url.to_owned(),
            connection,
            channel,
        })
    }
}

impl Bus for AmqpBus {
    fn label(&self) -> String {
        format!("RabbitMQ at {}", self.url)
    }

    fn prepare<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut args = FieldTable::default();
            // Leftover demo queues disappear ten minutes after their last use.
            args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
            for q in queues {
                self.channel
                    .queue_declare(
                        q.as_str().into(),
                        QueueDeclareOptions::default(),
                        args.clone(),
                    )
                    .await?;
            }
            Ok(())
        })
    }

    fn send<'a>(
        &'a self,
        from: &'a Telemetry,
        queue: &'a str,
        body: Vec<u8>,
        traced: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let options = BasicPublishOptions::default();
            let props = BasicProperties::default();
            if traced {
                tracehop::amqp::TracedChannel::new(self.channel.clone(), from.clone())
                    .basic_publish("".into(), queue.into(), options, &body, props)
                    .await?
                    .await?;
            } else {
                self.channel
                    .basic_publish("".into(), queue.into(), options, &body, props)
                    .await?
                    .await?;
            }
            Ok(())
        })
    }

    fn consume(
        &self,
        service: Telemetry,
        queue: String,
        count: u64,
        handler: Handler,
    ) -> BoxFuture<'_, Result<BoxFuture<'static, Result<(), Error>>, Error>> {
        Box::pin(async move {
            let channel = self.connection.create_channel().await?;
            channel.basic_qos(1, BasicQosOptions::default()).await?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("{}-{queue}", service.service_name())
                        .as_str()
                        .into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let consumer = tracehop::amqp::TracedConsumer::new(consumer, service).stop_after(count);
            let run: BoxFuture<'static, Result<(), Error>> = Box::pin(async move {
                let _channel = channel;
                consumer.run(|d| handler(d.data.clone())).await?;
                Ok(())
            });
            Ok(run)
        })
    }
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

/// Run `work` inside a span of the service's own, a child of the current context.
async fn in_span<T>(
    telemetry: &Telemetry,
    name: &'static str,
    attributes: Vec<KeyValue>,
    work: impl Future<Output = T>,
) -> T {
    let tracer = telemetry.provider().tracer("agent_pipeline");
    let span = tracer
        .span_builder(name)
        .with_attributes(attributes)
        .start_with_context(&tracer, &Context::current());
    let cx = Context::current_with_span(span);
    let out = work.with_context(cx.clone()).await;
    cx.span().set_status(Status::Ok);
    cx.span().end();
    out
}

/// Runs waiting for an answer from another service, by run id.
#[derive(Clone, Default)]
struct Pending(Arc<Mutex<HashMap<String, oneshot::Sender<String>>>>);

impl Pending {
    fn expect(&self, run: &str) -> oneshot::Receiver<String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run.to_owned(), tx);
        rx
    }

    fn answer(&self, run: &str, text: String) -> Result<(), Error> {
        let waiting = self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(run);
        match waiting {
            Some(tx) => tx
                .send(text)
                .map_err(|_| "nobody waits for this answer any more".into()),
            None => Err(format!("an answer for unknown run {run}").into()),
        }
    }

    async fn wait(rx: oneshot::Receiver<String>, what: &str) -> Result<String, Error> {
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(text)) => Ok(text),
            _ => Err(format!("no {what} within {ANSWER_TIMEOUT:?}").into()),
        }
    }
}

fn parse(body: &[u8]) -> Result<(String, String), Error> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    match (field("run"), field("text")) {
        (Some(run), Some(text)) => Ok((run, text)),
        _ => Err("message without run and text".into()),
    }
}

/// Everything one process runs: its services' consumers, and the gateway's runs.
struct Demo {
    net: Arc<Network>,
    telemetry: HashMap<Role, Telemetry>,
    tool_results: Pending,
    llm_responses: Pending,
    completed: Pending,
}

impl Demo {
    fn handler(&self, hop: Hop) -> Handler {
        let net = self.net.clone();
        let me = self.telemetry[&hop.consumer()].clone();
        let (tools, llm, done) = (
            self.tool_results.clone(),
            self.llm_responses.clone(),
            self.completed.clone(),
        );
        Arc::new(move |body: Vec<u8>| {
            let (net, me, tools, llm, done) = (
                net.clone(),
                me.clone(),
                tools.clone(),
                llm.clone(),
                done.clone(),
            );
            Box::pin(async move {
                let (run, text) = parse(&body)?;
                match hop {
                    Hop::Tasks => agent_runtime(&net, &me, &tools, &llm, run, text).await,
                    Hop::ToolCalls => tool_service(&net, &me, run, text).await,
                    Hop::LlmRequests => llm_provider(&net, &me, run, text).await,
                    Hop::ToolResults => tools.answer(&run, text),
                    Hop::LlmResponses => llm.answer(&run, text),
                    Hop::Completed => done.answer(&run, text),
                }
            })
        })
    }
}

async fn agent_runtime(
    net: &Network,
    me: &Telemetry,
    tools: &Pending,
    llm: &Pending,
    run: String,
    query: String,
) -> Result<(), Error> {
    // Plan: which tool to call.
    in_span(
        me,
        "plan",
        vec![],
        tokio::time::sleep(Duration::from_millis(12)),
    )
    .await;
    let answer = tools.expect(&run);
    let call = format!("search_invoices(vendor=*, period={:?})", month(&query));
    net.send(me, Hop::ToolCalls, json!({"run": run, "text": call}))
        .await?;
    let invoices = Pending::wait(answer, "tool result").await?;

    // Reason over the tool's result with the LLM.
    let summary = in_span(
        me,
        "reason",
        vec![KeyValue::new("gen_ai.operation.name", "chat")],
        async {
            tokio::time::sleep(Duration::from_millis(8)).await;
            let answer = llm.expect(&run);
            let prompt = format!("Summarise for the user: {invoices}");
            net.send(me, Hop::LlmRequests, json!({"run": run, "text": prompt}))
                .await?;
            Pending::wait(answer, "LLM response").await
        },
    )
    .await?;
    net.send(me, Hop::Completed, json!({"run": run, "text": summary}))
        .await
}

fn month(query: &str) -> &str {
    query.split_whitespace().last().unwrap_or("March")
}

async fn tool_service(
    net: &Network,
    me: &Telemetry,
    run: String,
    call: String,
) -> Result<(), Error> {
    let result = in_span(
        me,
        "search_invoices",
        vec![KeyValue::new("tool.call", call)],
        async {
            tokio::time::sleep(Duration::from_millis(45)).await;
            "3 invoices: ACME-0311 $1,200; Globex-0317 $640; Initech-0329 $2,310".to_owned()
        },
    )
    .await;
    net.send(me, Hop::ToolResults, json!({"run": run, "text": result}))
        .await
}

async fn llm_provider(
    net: &Network,
    me: &Telemetry,
    run: String,
    prompt: String,
) -> Result<(), Error> {
    let completion = in_span(
        me,
        "complete",
        vec![KeyValue::new("gen_ai.request.model", "demo-llm")],
        async {
            tokio::time::sleep(Duration::from_millis(120)).await;
            format!(
                "Found 3 vendor invoices for March totalling $4,150 ({} chars of context).",
                prompt.len()
            )
        },
    )
    .await;
    net.send(
        me,
        Hop::LlmResponses,
        json!({"run": run, "text": completion}),
    )
    .await
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
            in_span(
                gateway,
                "handle_request",
                vec![
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
        "check them: cargo run -- check --entry gateway {}",
        files.join(" ")
    );
    Ok(std::process::ExitCode::SUCCESS)
}
