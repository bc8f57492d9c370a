//! End to end: N messages through each broker's raw client and through tracehop's wrapper,
//! in one run, with throughput, publish-to-process latency and the traced/raw ratios.
//!
//! ```text
//! cargo bench --bench throughput --features full -- [options]
//!
//!   --messages N     messages per run (default 50000)
//!   --rounds R       rounds of every configuration; medians are reported (default 3)
//!   --only LIST      brokers, comma separated: nats-core, jetstream, rabbitmq,
//!                    kafka-tansu, kafka-mock (default: all)
//!   --payload B      payload bytes (default 128; at least 8, for the timestamp)
//!   --window W       messages published but not yet processed, at most (default 2000)
//!   --modes LIST     configurations, comma separated: raw, unsampled, sampled (default:
//!                    all; for profiling one of them)
//!   --memory         instead: 1,000,000 messages (or --messages) through the sampled,
//!                    journaled wrapper on one broker (default nats-core, or --only),
//!                    printing resident memory at checkpoints (with one --modes value:
//!                    that configuration instead, to compare)
//! ```
//!
//! Brokers: NATS on `TRACEHOP_NATS_URL` (default `nats://127.0.0.1:4222`, JetStream
//! enabled), RabbitMQ on `TRACEHOP_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), Kafka on `TRACEHOP_KAFKA_BROKERS` (default
//! `127.0.0.1:9092`, tansu in this project) and rdkafka's in-process `MockCluster`.
//!
//! Every configuration runs producer and consumer in this process, on separate
//! connections, each in its own task of a two-thread Tokio runtime:
//!
//! - `raw`: the client itself;
//! - `unsampled`: the wrapper with `Sampler::AlwaysOff` (spans are not recorded, context is
//!   still written and read);
//! - `sampled`: the wrapper recording every send and process span to a JSON-lines journal
//!   file in the temporary directory (one file per service, removed afterwards; the number
//!   of lines written is checked against 2 N).
//!
//! The payload starts with the publish time, so latency is measured from the moment the
//! producer hands the message to the client (raw) or the wrapper (traced) to the moment the
//! consumer's handler runs. Throughput is N over the time from the first publish to the
//! last message processed. The producer never has more than `--window` messages in flight
//! (published, not yet processed), so a slow consumer does not make NATS drop messages and
//! latency measures the pipeline, not an ever-growing backlog. Configurations are
//! interleaved round by round, in a rotating order, on fresh destinations.

use std::convert::Infallible;
use std::future::ready;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use opentelemetry_sdk::trace::Sampler;
use tokio::sync::{Notify, Semaphore};
use tracehop::{Journal, Telemetry};

type Error = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broker {
    NatsCore,
    JetStream,
    RabbitMq,
    KafkaTansu,
    KafkaMock,
}

const BROKERS: [Broker; 5] = [
    Broker::NatsCore,
    Broker::JetStream,
    Broker::RabbitMq,
    Broker::KafkaTansu,
    Broker::KafkaMock,
];

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::NatsCore => "nats-core",
            Broker::JetStream => "jetstream",
            Broker::RabbitMq => "rabbitmq",
            Broker::KafkaTansu => "kafka-tansu",
            Broker::KafkaMock => "kafka-mock",
        }
    }

    fn parse(s: &str) -> Option<Broker> {
        BROKERS.into_iter().find(|b| b.name() == s.trim())
    }

    /// The sampled goal: 90% of raw on Kafka and RabbitMQ, 75% on NATS core.
    fn sampled_goal(self) -> Option<f64> {
        match self {
            Broker::NatsCore => Some(0.75),
            Broker::RabbitMq | Broker::KafkaTansu | Broker::KafkaMock => Some(0.90),
            Broker::JetStream => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    RawHeaders,
    Unsampled,
    Sampled,
}

const MODES: [Mode; 4] = [Mode::Raw, Mode::RawHeaders, Mode::Unsampled, Mode::Sampled];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::RawHeaders => "raw+headers",
            Mode::Unsampled => "unsampled",
            Mode::Sampled => "sampled",
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    messages: u64,
    rounds: usize,
    brokers: Vec<Broker>,
    payload: usize,
    window: usize,
    modes: Vec<Mode>,
    memory: bool,
}

fn options() -> Result<Options, Error> {
    let mut o = Options {
        messages: 0,
        rounds: 3,
        brokers: BROKERS.to_vec(),
        payload: 128,
        window: 2000,
        modes: MODES.to_vec(),
        memory: false,
    };
    let mut only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| Error::from(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--messages" => o.messages = value("--messages")?.replace('_', "").parse()?,
            "--rounds" => o.rounds = value("--rounds")?.parse()?,
            "--payload" => o.payload = value("--payload")?.parse()?,
            "--window" => o.window = value("--window")?.parse()?,
            "--only" => {
                only = true;
                o.brokers = value("--only")?
                    .split(',')
                    .map(|b| Broker::parse(b).ok_or_else(|| format!("unknown broker {b:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--modes" => {
                o.modes = value("--modes")?
                    .split(',')
                    .map(|m| {
                        MODES
                            .into_iter()
                            .find(|mode| mode.name() == m.trim())
                            .ok_or_else(|| format!("unknown mode {m:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--memory" => o.memory = true,
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            other => return Err(format!("unknown option {other:?} (see the file's docs)").into()),
        }
    }
    if o.messages == 0 {
        o.messages = if o.memory { 1_000_000 } else { 50_000 };
    }
    if o.memory && !only {
        o.brokers = vec![Broker::NatsCore];
    }
    o.payload = o.payload.max(8);
    o.window = o.window.max(1);
    o.rounds = o.rounds.max(1);
    Ok(o)
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------------------

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call (a monotonic clock shared by producer and consumer).
fn now_ns() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Latencies in microseconds, in fixed buckets: exact below 1024 µs, then 128 buckets per
/// power of two (under 1% error). Recording is a relaxed atomic add; memory never grows.
struct Histogram {
    buckets: Box<[AtomicU64]>,
}

const SUB_BITS: u32 = 7;
const LINEAR: u64 = 1024;

impl Histogram {
    fn new() -> Histogram {
        let n = LINEAR as usize + (64 - 10) * (1 << SUB_BITS);
        Histogram {
            buckets: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(us: u64) -> usize {
        if us < LINEAR {
            return us as usize;
        }
        let e = 63 - us.leading_zeros();
        let m = (us >> (e - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        LINEAR as usize + (e as usize - 10) * (1 << SUB_BITS) + m as usize
    }

    fn lower(i: usize) -> u64 {
        let i = i as u64;
        if i < LINEAR {
            return i;
        }
        let k = i - LINEAR;
        let e = 10 + k / (1 << SUB_BITS);
        let m = k % (1 << SUB_BITS);
        (1 << e) + (m << (e - u64::from(SUB_BITS)))
    }

    fn record(&self, us: u64) {
        self.buckets[Self::index(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile in microseconds (the lower edge of its bucket).
    fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let target = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Self::lower(i);
            }
        }
        0
    }
}

/// Resident memory of this process: (current `VmRSS`, peak `VmHWM`) in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What producer and consumer of one run share.
struct Probe {
    n: u64,
    payload: usize,
    window: Semaphore,
    primed: std::sync::atomic::AtomicBool,
    processed: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    latency: Histogram,
    done: Notify,
    checkpoints: Vec<u64>,
    /// At each checkpoint: messages, VmRSS, VmHWM, journal bytes written so far.
    memory: Mutex<Vec<(u64, u64, u64, u64)>>,
    /// The journal files of a sampled run, to see how far the exporters are behind.
    journals: OnceLock<Vec<PathBuf>>,
}

impl Probe {
    fn new(n: u64, payload: usize, window: usize, checkpoints: Vec<u64>) -> Arc<Probe> {
        Arc::new(Probe {
            n,
            payload,
            window: Semaphore::new(window),
            primed: std::sync::atomic::AtomicBool::new(false),
            processed: AtomicU64::new(0),
            first_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            latency: Histogram::new(),
            done: Notify::new(),
            checkpoints,
            memory: Mutex::new(Vec::new()),
            journals: OnceLock::new(),
        })
    }

    /// Wait for room in the window, then make the next payload, stamped with now.
    async fn next_payload(&self) -> Vec<u8> {
        if let Ok(permit) = self.window.acquire().await {
            permit.forget();
        }
        let now = now_ns();
        let _ = self
            .first_ns
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        let mut payload = vec![b'x'; self.payload];
        payload[..8].copy_from_slice(&now.to_le_bytes());
        payload
    }

    /// The first message of a run: sent before timing starts, so that every connection,
    /// subscription and fetch is live when it does.
    const PRIMER: &'static [u8] = b"primer";

    /// Send the primer with `send` and wait until the consumer has seen it.
    async fn prime<F: std::future::Future<Output = Result<(), Error>>>(
        &self,
        send: F,
    ) -> Result<(), Error> {
        send.await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.primed.load(Ordering::Acquire) {
            if Instant::now() > deadline {
                return Err("the primer message never arrived".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// The consumer saw `payload`.
    fn processed(&self, payload: &[u8]) {
        if payload == Self::PRIMER {
            self.primed.store(true, Ordering::Release);
            return;
        }
        let now = now_ns();
        if let Some(stamp) = payload.get(..8) {
            let mut sent = [0u8; 8];
            sent.copy_from_slice(stamp);
            self.latency
                .record(now.saturating_sub(u64::from_le_bytes(sent)) / 1000);
        }
        self.window.add_permits(1);
        let count = self.processed.fetch_add(1, Ordering::Relaxed) + 1;
        if self.checkpoints.contains(&count) {
            let (rss, hwm) = rss_kib();
            if let Ok(mut m) = self.memory.lock() {
                let journal = self.journals.get().map_or(0, |files| {
                    files
                        .iter()
                        .filter_map(|f| std::fs::metadata(f).ok())
                        .map(|m| m.len())
                        .sum()
                });
                m.push((count, rss, hwm, journal));
            }
        }
        if count == self.n {
            self.last_ns.store(now, Ordering::Relaxed);
            self.done.notify_one();
        }
    }

    /// Wait until every message was processed (or `timeout`).
    async fn finished(&self, timeout: Duration) -> Result<(), Error> {
        let wait = async {
            while self.processed.load(Ordering::Relaxed) < self.n {
                let notified = self.done.notified();
                if self.processed.load(Ordering::Relaxed) >= self.n {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            format!(
                "timed out: {} of {} messages processed",
                self.processed.load(Ordering::Relaxed),
                self.n
            )
        })?;
        Ok(())
    }

    fn result(&self, mode: Mode, spans: Option<Journaled>) -> RunResult {
        let first = self.first_ns.load(Ordering::Relaxed);
        let last = self.last_ns.load(Ordering::Relaxed);
        let secs = last.saturating_sub(first) as f64 / 1e9;
        RunResult {
            mode,
            rate: self.n as f64 / secs.max(1e-9),
            p50_us: self.latency.quantile(0.50),
            p99_us: self.latency.quantile(0.99),
            spans,
        }
    }
}

/// What the journals of a traced run held: lines, bytes, and how long the final flush
/// took.
type Journaled = (u64, u64, Duration);

#[derive(Debug, Clone)]
struct RunResult {
    mode: Mode,
    /// Messages per second.
    rate: f64,
    p50_us: u64,
    p99_us: u64,
    /// Sampled runs: journal lines written and how long the final flush took.
    spans: Option<Journaled>,
}

// ---------------------------------------------------------------------------------------
// Telemetry per configuration
// ---------------------------------------------------------------------------------------

/// The producer's and the consumer's telemetry for a traced mode, with their journal files.
struct Traced {
    producer: Telemetry,
    consumer: Telemetry,
    files: [PathBuf; 2],
}

impl Traced {
    /// The telemetry of a traced mode (`None` for the raw ones), its journals known to
    /// `probe`.
    fn for_mode(mode: Mode, prefix: &str, probe: &Probe) -> Result<Option<Traced>, Error> {
        if matches!(mode, Mode::Raw | Mode::RawHeaders) {
            return Ok(None);
        }
        let traced = Traced::new(mode, &unique(prefix))?;
        let _ = probe.journals.set(traced.files.to_vec());
        Ok(Some(traced))
    }

    fn new(mode: Mode, tag: &str) -> Result<Traced, Error> {
        let dir = std::env::temp_dir();
        let files = [
            dir.join(format!("{tag}-producer.jsonl")),
            dir.join(format!("{tag}-consumer.jsonl")),
        ];
        let build = |name: &str, file: &PathBuf| -> Result<Telemetry, Error> {
            let mut builder = Telemetry::builder(name).journal(Journal::file(file)?);
            if mode == Mode::Unsampled {
                builder = builder.sampler(Sampler::AlwaysOff);
            }
            Ok(builder.build()?)
        };
        Ok(Traced {
            producer: build("bench-producer", &files[0])?,
            consumer: build("bench-consumer", &files[1])?,
            files,
        })
    }

    /// Shut down both services (writing every span), count the journal lines and bytes,
    /// remove the files.
    fn finish(self) -> Result<Journaled, Error> {
        let start = Instant::now();
        self.producer.shutdown()?;
        self.consumer.shutdown()?;
        let flush = start.elapsed();
        let mut lines = 0;
        let mut bytes = 0;
        for file in &self.files {
            bytes += std::fs::metadata(file).map_or(0, |m| m.len());
            // Streamed: a million-message journal does not fit comfortably in memory.
            if let Ok(mut f) = std::fs::File::open(file) {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n @ 1..) = std::io::Read::read(&mut f, &mut buf) {
                    lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
                }
            }
            let _ = std::fs::remove_file(file);
        }
        Ok((lines, bytes, flush))
    }
}

/// The `raw+headers` baseline: the client alone, carrying the two headers tracehop
/// writes for an unsampled message without baggage (a `traceparent` and the send time),
/// and the consumer looking up `traceparent`. What it costs over `raw` is what carrying
/// context costs this client and broker, before tracehop does anything.
mod context_headers {
    pub(super) const TRACEPARENT: &str = "traceparent";
    pub(super) const SENT_AT: &str = "tracehop-sent-at";
    pub(super) const VALUE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    /// The send time as tracehop writes it (Unix microseconds).
    pub(super) fn sent_at() -> String {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
            .to_string()
    }
}

fn timeout_for(n: u64) -> Duration {
    Duration::from_secs(60 + n / 1000)
}

// ---------------------------------------------------------------------------------------
// NATS core
// ---------------------------------------------------------------------------------------

mod nats_core {
    use super::*;
    use async_nats::Client;
    use bytes::Bytes;
    use tracehop::nats::TracedClient;

    /// The NATS connections, shared by the core NATS and JetStream runs.
    pub(super) struct Env {
        pub(super) publisher: Client,
        pub(super) subscriber: Client,
    }

    pub(super) async fn env() -> Result<Env, Error> {
        let url = env_or("TRACEHOP_NATS_URL", "nats://127.0.0.1:4222");
        Ok(Env {
            publisher: async_nats::connect(&url).await?,
            subscriber: async_nats::connect(&url).await?,
        })
    }

    pub(super) async fn run(env: &Env, mode: Mode, probe: Arc<Probe>) -> Result<RunResult, Error> {
        let subject = async_nats::Subject::from(unique("tracehop.bench.core").as_str());
        let n = probe.n;
        let traced = Traced::for_mode(mode, "tracehop-bench-nats", &probe)?;
        let consumer = match &traced {
            None => {
                let mut sub = env.subscriber.subscribe(subject.clone()).await?;
                tracehop::nats::round_trip(&env.subscriber).await?;
                let probe = probe.clone();
                let headers = mode == Mode::RawHeaders;
                tokio::spawn(async move {
                    let mut count = 0;
                    while count <= n {
                        let Some(message) = sub.next().await else {
                            break;
                        };
                        if headers {
                            let h = message.headers.as_ref();
                            black_box(h.and_then(|h| h.get(context_headers::TRACEPARENT)));
                        }
                        probe.processed(&message.payload);
                        count += 1;
                    }
                })
            }
            Some(t) => {
                let client = TracedClient::new(env.subscriber.clone(), t.consumer.clone());
                let sub = client
                    .subscribe(subject.clone())
                    .await?
                    .limit(usize::try_from(n + 1)?);
                tracehop::nats::round_trip(&env.subscriber).await?;
                let probe = probe.clone();
                tokio::spawn(async move {
                    sub.process(move |message| {
                        probe.processed(&message.payload);
                        ready(Ok::<(), Infallible>(()))
                    })
                    .await;
                })
            }
        };
        let producer = {
            let probe = probe.clone();
            let publisher = env.publisher.clone();
            let traced = traced
                .as_ref()
                .map(|t| TracedClient::new(env.publisher.clone(), t.producer.clone()));
            tokio::spawn(async move {
                let primer = Bytes::from_static(Probe::PRIMER);
                probe
                    .prime(async {
                        match &traced {
                            None => publisher.publish(subject.clone(), primer).await?,
                            Some(t) => t.publish(subject.clone(), primer).await?,
                        }
                        Ok(publisher.flush().await?)
                    })
                    .await?;
                for _ in 0..n {
                    let payload = Bytes::from(probe.next_payload().await);
                    match &traced {
                        None if mode == Mode::RawHeaders => {
                            let mut headers = async_nats::HeaderMap::new();
                            headers.insert(context_headers::TRACEPARENT, context_headers::VALUE);
                            headers.insert(context_headers::SENT_AT, context_headers::sent_at());
                            publisher
                                .publish_with_headers(subject.clone(), headers, payload)
                                .await?
                        }
                        None => publisher.publish(subject.clone(), payload).await?,
                        Some(t) => t.publish(subject.clone(), payload).await?,
                    }
                }
                publisher.flush().await?;
                Ok::<(), Error>(())
            })
        };
        producer.await??;
        probe.finished(timeout_for(n)).await?;
        consumer.await?;
        let spans = traced.map(Traced::finish).transpose()?;
        Ok(probe.result(mode, spans))
    }
}

// ---------------------------------------------------------------------------------------
// JetStream
// ---------------------------------------------------------------------------------------

mod jet_stream {
    use super::*;
    use async_nats::jetstream::{self, consumer::pull, stream};
    use bytes::Bytes;
    use tracehop::nats::TracedJetStream;

    pub(super) async fn run(
        env: &nats_core::Env,
        mode: Mode,
        probe: Arc<Probe>,
        window: usize,
    ) -> Result<RunResult, Error> {
        let name = unique("TRACEHOP_BENCH").replace('-', "_");
        let subject = format!("tracehop.bench.js.{name}");
        let publisher = jetstream::new(env.publisher.clone());
        let subscriber = jetstream::new(env.subscriber.clone());
        let stream = subscriber
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: i64::try_from(window)?.max(1000),
                ..Default::default()
            })
            .await?;
        let messages = consumer.messages().await?;
        let n = probe.n;
        let traced = Traced::for_mode(mode, "tracehop-bench-js", &probe)?;
        let consumer = match &traced {
            None => {
                let probe = probe.clone();
                let headers = mode == Mode::RawHeaders;
                tokio::spawn(async move {
                    let mut messages = messages;
                    let mut count = 0;
                    while count <= n {
                        let message = match messages.next().await {
                            Some(Ok(message)) => message,
                            // A missed heartbeat or the like: the stream goes on.
                            Some(Err(_)) => continue,
                            None => break,
                        };
                        if headers {
                            let h = message.headers.as_ref();
                            black_box(h.and_then(|h| h.get(context_headers::TRACEPARENT)));
                        }
                        probe.processed(&message.payload);
                        let _ = message.ack().await;
                        count += 1;
                    }
                })
            }
            Some(t) => {
                let js = TracedJetStream::new(subscriber.clone(), t.consumer.clone());
                let probe = probe.clone();
                tokio::spawn(async move {
                    js.messages(messages)
                        .limit(usize::try_from(n + 1).unwrap_or(usize::MAX))
                        .process(move |message| {
                            probe.processed(&message.payload);
                            ready(Ok::<(), Infallible>(()))
                        })
                        .await;
                })
            }
        };
        let producer = {
            let probe = probe.clone();
            let traced = traced
                .as_ref()
                .map(|t| TracedJetStream::new(publisher.clone(), t.producer.clone()));
            tokio::spawn(async move {
                let publisher = &publisher;
                let traced = &traced;
                let subject = &subject;
                let primer = Bytes::from_static(Probe::PRIMER);
                probe
                    .prime(async {
                        match traced {
                            None => {
                                publisher.publish(subject.clone(), primer).await?.await?;
                            }
                            Some(t) => {
                                t.publish(subject.clone(), primer).await?;
                            }
                        }
                        Ok(())
                    })
                    .await?;
                futures_util::stream::iter(0..n)
                    .map(|_| {
                        let probe = probe.clone();
                        async move {
                            let payload = Bytes::from(probe.next_payload().await);
                            match traced {
                                None if mode == Mode::RawHeaders => {
                                    let mut headers = async_nats::HeaderMap::new();
                                    headers.insert(
                                        context_headers::TRACEPARENT,
                                        context_headers::VALUE,
                                    );
                                    headers.insert(
                                        context_headers::SENT_AT,
                                        context_headers::sent_at(),
                                    );
                                    publisher
                                        .publish_with_headers(subject.clone(), headers, payload)
                                        .await?
                                        .await?;
                                }
                                None => {
                                    publisher.publish(subject.clone(), payload).await?.await?;
                                }
                                Some(t) => {
                                    t.publish(subject.clone(), payload).await?;
                                }
                            }
                            Ok::<(), Error>(())
                        }
                    })
                    .buffer_unordered(window)
                    .try_for_each(|()| ready(Ok(())))
                    .await
            })
        };
        producer.await??;
        probe.finished(timeout_for(n)).await?;
        consumer.await?;
        let spans = traced.map(Traced::finish).transpose()?;
        let _ = subscriber.delete_stream(&name).await;
        Ok(probe.result(mode, spans))
    }
}

// ---------------------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------------------

mod rabbitmq {
    use super::*;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
    use tracehop::amqp::{TracedChannel, TracedConsumer};

    pub(super) struct Env {
        _publisher: Connection,
        publish: Channel,
        consume: Connection,
    }

    pub(super) async fn env() -> Result<Env, Error> {
        let url = env_or("TRACEHOP_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        let publisher = Connection::connect(&url, ConnectionProperties::default()).await?;
        let subscriber = Connection::connect(&url, ConnectionProperties::default()).await?;
        Ok(Env {
            publish: publisher.create_channel().await?,
            _publisher: publisher,
            consume: subscriber,
        })
    }

    pub(super) async fn run(
        env: &Env,
        mode: Mode,
        probe: Arc<Probe>,
        window: usize,
    ) -> Result<RunResult, Error> {
        let queue = unique("tracehop-bench");
        let channel = env.consume.create_channel().await?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .basic_qos(
                u16::try_from(window).unwrap_or(u16::MAX),
                BasicQosOptions::default(),
            )
            .await?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let n = probe.n;
        let traced = Traced::for_mode(mode, "tracehop-bench-amqp", &probe)?;
        let consume = match &traced {
            None => {
                let probe = probe.clone();
                let headers = mode == Mode::RawHeaders;
                tokio::spawn(async move {
                    let mut consumer = consumer;
                    let mut count = 0;
                    while count <= n {
                        let Some(Ok(delivery)) = consumer.next().await else {
                            break;
                        };
                        if headers {
                            let h = delivery.properties.headers().as_ref();
                            black_box(h.and_then(|h| h.inner().get(context_headers::TRACEPARENT)));
                        }
                        probe.processed(&delivery.data);
                        let _ = delivery.ack(BasicAckOptions::default()).await;
                        count += 1;
                    }
                })
            }
            Some(t) => {
                let consumer = TracedConsumer::new(consumer, t.consumer.clone()).stop_after(n + 1);
                let probe = probe.clone();
                tokio::spawn(async move {
                    let _ = consumer
                        .run(move |delivery| {
                            probe.processed(&delivery.data);
                            ready(Ok::<(), Infallible>(()))
                        })
                        .await;
                })
            }
        };
        let producer = {
            let probe = probe.clone();
            let channel = env.publish.clone();
            let traced = traced
                .as_ref()
                .map(|t| TracedChannel::new(env.publish.clone(), t.producer.clone()));
            let queue = queue.clone();
            tokio::spawn(async move {
                let publish = |payload: Vec<u8>| {
                    let (channel, traced, queue) = (&channel, &traced, &queue);
                    async move {
                        let options = BasicPublishOptions::default();
                        let mut properties = BasicProperties::default();
                        if mode == Mode::RawHeaders {
                            let mut headers = FieldTable::default();
                            headers.insert(
                                context_headers::TRACEPARENT.into(),
                                AMQPValue::LongString(context_headers::VALUE.into()),
                            );
                            headers.insert(
                                context_headers::SENT_AT.into(),
                                AMQPValue::LongString(context_headers::sent_at().into()),
                            );
                            properties = properties.with_headers(headers);
                        }
                        match traced {
                            None => {
                                channel
                                    .basic_publish(
                                        "".into(),
                                        queue.as_str().into(),
                                        options,
                                        &payload,
                                        properties,
                                    )
                                    .await?
                                    .await?;
                            }
                            Some(t) => {
                                t.basic_publish(
                                    "".into(),
                                    queue.as_str().into(),
                                    options,
                                    &payload,
                                    properties,
                                )
                                .await?
                                .await?;
                            }
                        }
                        Ok::<(), Error>(())
                    }
                };
                probe.prime(publish(Probe::PRIMER.to_vec())).await?;
                for _ in 0..n {
                    publish(probe.next_payload().await).await?;
                }
                Ok::<(), Error>(())
            })
        };
        producer.await??;
        probe.finished(timeout_for(n)).await?;
        consume.await?;
        let spans = traced.map(Traced::finish).transpose()?;
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = channel.close(200, "bench done".into()).await;
        Ok(probe.result(mode, spans))
    }
}

// ---------------------------------------------------------------------------------------
// Kafka (tansu and MockCluster)
// ---------------------------------------------------------------------------------------

mod kafka {
    use super::*;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Header, Headers, OwnedHeaders};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
    use rdkafka::util::Timeout;
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    use tracehop::kafka::{TracedConsumer, TracedProducer};

    pub(super) struct Env {
        bootstrap: String,
        mock: Option<MockCluster<'static, DefaultProducerContext>>,
    }

    pub(super) fn env(broker: Broker) -> Result<Env, Error> {
        if broker == Broker::KafkaMock {
            let mock = MockCluster::new(1)?;
            return Ok(Env {
                bootstrap: mock.bootstrap_servers(),
                mock: Some(mock),
            });
        }
        Ok(Env {
            bootstrap: env_or("TRACEHOP_KAFKA_BROKERS", "127.0.0.1:9092"),
            mock: None,
        })
    }

    fn config(env: &Env) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &env.bootstrap)
            .set("linger.ms", "1")
            .set("message.timeout.ms", "60000")
            .set("fetch.wait.max.ms", "10");
        config
    }

    async fn topic(env: &Env) -> Result<String, Error> {
        let name = unique("tracehop-bench");
        match &env.mock {
            Some(mock) => mock.create_topic(&name, 1, 1)?,
            None => {
                let admin: AdminClient<DefaultClientContext> = config(env).create()?;
                let topic = NewTopic::new(&name, 1, TopicReplication::Fixed(1));
                let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
                for result in admin.create_topics([&topic], &options).await? {
                    result.map_err(|(t, e)| format!("create topic {t}: {e}"))?;
                }
            }
        }
        Ok(name)
    }

    async fn delete(env: &Env, topic: &str) {
        if env.mock.is_none() {
            if let Ok(admin) = config(env).create::<AdminClient<DefaultClientContext>>() {
                let _ = admin.delete_topics(&[topic], &AdminOptions::new()).await;
            }
        }
    }

    pub(super) async fn run(
        env: &Env,
        mode: Mode,
        probe: Arc<Probe>,
        window: usize,
    ) -> Result<RunResult, Error> {
        let topic = topic(env).await?;
        let n = probe.n;
        let traced = Traced::for_mode(mode, "tracehop-bench-kafka", &probe)?;
        let mut consumer_config = config(env);
        consumer_config
            .set("group.id", unique("tracehop-bench"))
            .set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer = consumer_config.create()?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let consume = match &traced {
            None => {
                let probe = probe.clone();
                let with_headers = mode == Mode::RawHeaders;
                tokio::spawn(async move {
                    let mut count = 0;
                    while count <= n {
                        match consumer.recv().await {
                            Ok(message) => {
                                if with_headers {
                                    black_box(message.headers().and_then(|h| {
                                        h.iter().find(|h| h.key == context_headers::TRACEPARENT)
                                    }));
                                }
                                probe.processed(message.payload().unwrap_or_default());
                                count += 1;
                            }
                            Err(e) => eprintln!("kafka consumer: {e}"),
                        }
                    }
                })
            }
            Some(t) => {
                // Offsets are left to librdkafka's auto-commit, as in the raw loop.
                let consumer = TracedConsumer::new(consumer, t.consumer.clone())
                    .commit(None)
                    .stop_after(n + 1);
                let probe = probe.clone();
                tokio::spawn(async move {
                    let _ = consumer
                        .run(move |message| {
                            probe.processed(message.payload().unwrap_or_default());
                            ready(Ok::<(), Infallible>(()))
                        })
                        .await;
                })
            }
        };
        let producer: FutureProducer = config(env).create()?;
        let producer_task = {
            let probe = probe.clone();
            let traced = traced
                .as_ref()
                .map(|t| TracedProducer::new(producer.clone(), t.producer.clone()));
            let topic = topic.clone();
            tokio::spawn(async move {
                let producer = &producer;
                let traced = &traced;
                let topic = topic.as_str();
                probe
                    .prime(async {
                        let record = FutureRecord::<(), [u8]>::to(topic).payload(Probe::PRIMER);
                        let sent = match traced {
                            None => producer.send(record, Timeout::Never).await,
                            Some(t) => t.send(record, Timeout::Never).await,
                        };
                        sent.map(|_| ()).map_err(|(e, _)| Error::from(e))
                    })
                    .await?;
                futures_util::stream::iter(0..n)
                    .map(|_| {
                        let probe = probe.clone();
                        async move {
                            let payload = probe.next_payload().await;
                            let mut record =
                                FutureRecord::<(), [u8]>::to(topic).payload(&payload[..]);
                            if mode == Mode::RawHeaders {
                                record = record.headers(
                                    OwnedHeaders::new_with_capacity(2)
                                        .insert(Header {
                                            key: context_headers::TRACEPARENT,
                                            value: Some(context_headers::VALUE),
                                        })
                                        .insert(Header {
                                            key: context_headers::SENT_AT,
                                            value: Some(&context_headers::sent_at()),
                                        }),
                                );
                            }
                            let sent = match traced {
                                None => producer.send(record, Timeout::Never).await,
                                Some(t) => t.send(record, Timeout::Never).await,
                            };
                            sent.map(|_| ()).map_err(|(e, _)| Error::from(e))
                        }
                    })
                    .buffer_unordered(window)
                    .try_for_each(|()| ready(Ok(())))
                    .await
            })
        };
        producer_task.await??;
        probe.finished(timeout_for(n)).await?;
        consume.await?;
        let spans = traced.map(Traced::finish).transpose()?;
        delete(env, &topic).await;
        Ok(probe.result(mode, spans))
    }
}

// ---------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------

enum Env {
    Nats(Box<nats_core::Env>),
    Amqp(Box<rabbitmq::Env>),
    Kafka(kafka::Env),
}

async fn env(broker: Broker) -> Result<Env, Error> {
    Ok(match broker {
        Broker::NatsCore | Broker::JetStream => Env::Nats(Box::new(nats_core::env().await?)),
        Broker::RabbitMq => Env::Amqp(Box::new(rabbitmq::env().await?)),
        Broker::KafkaTansu | Broker::KafkaMock => Env::Kafka(kafka::env(broker)?),
    })
}

async fn run_one(
    env: &Env,
    broker: Broker,
    mode: Mode,
    o: &Options,
    n: u64,
    checkpoints: Vec<u64>,
) -> Result<(RunResult, Arc<Probe>), Error> {
    let probe = Probe::new(n, o.payload, o.window, checkpoints);
    let result = match (env, broker) {
        (Env::Nats(e), Broker::NatsCore) => nats_core::run(e, mode, probe.clone()).await?,
        (Env::Nats(e), Broker::JetStream) => {
            jet_stream::run(e, mode, probe.clone(), o.window).await?
        }
        (Env::Amqp(e), _) => rabbitmq::run(e, mode, probe.clone(), o.window).await?,
        (Env::Kafka(e), _) => kafka::run(e, mode, probe.clone(), o.window).await?,
        _ => return Err("broker and environment do not match".into()),
    };
    Ok((result, probe))
}

/// Median messages per second, p50 and p99 (µs) of one configuration.
type Medians = (f64, f64, f64);

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

async fn throughput(o: &Options) -> Result<(), Error> {
    println!(
        "# tracehop throughput: {} messages x {} rounds, payload {} B, window {}, {}",
        o.messages,
        o.rounds,
        o.payload,
        o.window,
        machine()
    );
    let mut summary: Vec<(Broker, [Option<Medians>; MODES.len()])> = Vec::new();
    for &broker in &o.brokers {
        let env = match env(broker).await {
            Ok(env) => env,
            Err(e) => {
                println!("{}: skipped, cannot connect: {e}", broker.name());
                continue;
            }
        };
        // Warm up connections, topics and code paths; not reported.
        let warm = (o.messages / 10).max(1000);
        for &mode in &o.modes {
            if let Err(e) = run_one(&env, broker, mode, o, warm, Vec::new()).await {
                println!("{} {} warm-up failed: {e}", broker.name(), mode.name());
            }
        }
        let mut results: Vec<RunResult> = Vec::new();
        for round in 0..o.rounds {
            for i in 0..o.modes.len() {
                let mode = o.modes[(i + round) % o.modes.len()];
                match run_one(&env, broker, mode, o, o.messages, Vec::new()).await {
                    Ok((r, _)) => {
                        let spans = match r.spans {
                            Some((lines, _, flush)) if mode == Mode::Sampled => format!(
                                "  journal {lines}/{} lines, final flush {flush:.0?}",
                                2 * (o.messages + 1)
                            ),
                            _ => String::new(),
                        };
                        println!(
                            "  {:<11} round {} {:<9} {:>9.0} msg/s  p50 {:>6} µs  p99 {:>7} µs{spans}",
                            broker.name(),
                            round + 1,
                            mode.name(),
                            r.rate,
                            r.p50_us,
                            r.p99_us
                        );
                        results.push(r);
                    }
                    Err(e) => println!(
                        "  {:<11} round {} {:<9} FAILED: {e}",
                        broker.name(),
                        round + 1,
                        mode.name()
                    ),
                }
            }
        }
        let mut row = [None; MODES.len()];
        for (slot, mode) in row.iter_mut().zip(MODES) {
            let of_mode: Vec<&RunResult> = results.iter().filter(|r| r.mode == mode).collect();
            if !of_mode.is_empty() {
                *slot = Some((
                    median(of_mode.iter().map(|r| r.rate).collect()),
                    median(of_mode.iter().map(|r| r.p50_us as f64).collect()),
                    median(of_mode.iter().map(|r| r.p99_us as f64).collect()),
                ));
            }
        }
        summary.push((broker, row));
        drop(env);
    }

    println!();
    println!(
        "Medians of {} rounds, {} messages each ({} B payload, window {}):",
        o.rounds, o.messages, o.payload, o.window
    );
    println!();
    println!("| broker | mode | msg/s | vs raw | goal | p50 µs | p99 µs |");
    println!("|---|---|---:|---:|---|---:|---:|");
    for (broker, row) in &summary {
        let raw = row[0].map(|r| r.0);
        for (mode, cell) in MODES.iter().zip(row) {
            let Some((rate, p50, p99)) = cell else {
                continue;
            };
            let ratio = match (mode, raw) {
                (Mode::Raw, _) | (_, None) => "".to_owned(),
                (_, Some(raw)) => format!("{:.1}%", 100.0 * rate / raw),
            };
            let goal = match (mode, raw) {
                (Mode::Unsampled, Some(raw)) => verdict(rate / raw, 0.97),
                (Mode::Sampled, Some(raw)) => match broker.sampled_goal() {
                    Some(goal) => verdict(rate / raw, goal),
                    None => "(no goal)".to_owned(),
                },
                _ => String::new(),
            };
            println!(
                "| {} | {} | {:.0} | {} | {} | {:.0} | {:.0} |",
                broker.name(),
                mode.name(),
                rate,
                ratio,
                goal,
                p50,
                p99
            );
        }
    }
    Ok(())
}

fn verdict(ratio: f64, goal: f64) -> String {
    let mark = if ratio >= goal { "met" } else { "NOT met" };
    format!("≥ {:.0}%: {mark}", goal * 100.0)
}

async fn memory(o: &Options) -> Result<(), Error> {
    let broker = o.brokers.first().copied().unwrap_or(Broker::NatsCore);
    let n = o.messages;
    // 10k, 50k (the span queues are still filling), then every tenth of the run.
    let mut checkpoints: Vec<u64> = [10_000, 50_000]
        .into_iter()
        .chain((1..10).map(|i| n / 10 * i))
        .filter(|c| *c > 0 && *c < n)
        .collect();
    checkpoints.sort_unstable();
    checkpoints.dedup();
    checkpoints.push(n);
    println!(
        "# tracehop memory: {n} messages through the sampled, journaled wrapper on {}, payload {} B, window {}, {}",
        broker.name(),
        o.payload,
        o.window,
        machine()
    );
    let env = env(broker).await?;
    let (rss, hwm) = rss_kib();
    println!("connected:         VmRSS {rss:>8} KiB  VmHWM {hwm:>8} KiB");
    // What two telemetry handles (producer and consumer service) hold before any message:
    // mostly the span queues of their batch processors, allocated up front.
    let idle = Traced::new(Mode::Sampled, &unique("tracehop-bench-idle"))?;
    let (rss, hwm) = rss_kib();
    println!("2 idle handles:    VmRSS {rss:>8} KiB  VmHWM {hwm:>8} KiB");
    idle.finish()?;
    // Sampled unless `--modes` names another configuration (to compare).
    let mode = match o.modes.as_slice() {
        [one] => *one,
        _ => Mode::Sampled,
    };
    if mode != Mode::Sampled {
        println!("(configuration: {})", mode.name());
    }
    let (result, probe) = run_one(&env, broker, mode, o, n, checkpoints).await?;
    let points = probe.memory.lock().map(|m| m.clone()).unwrap_or_default();
    // Spans not yet written: ended (two per message) minus the lines in the journals,
    // estimated from their size and the average line.
    let line = match result.spans {
        Some((lines, bytes, _)) if lines > 0 => bytes as f64 / lines as f64,
        _ => f64::NAN,
    };
    for (count, rss, hwm, journal) in points {
        let behind = (2 * count) as f64 - journal as f64 / line;
        println!(
            "{count:>9} messages: VmRSS {rss:>8} KiB  VmHWM {hwm:>8} KiB  spans not yet exported ~{:.0}",
            behind.max(0.0)
        );
    }
    let (rss, hwm) = rss_kib();
    println!("after shutdown:    VmRSS {rss:>8} KiB  VmHWM {hwm:>8} KiB");
    if let Some((lines, _, flush)) = result.spans {
        println!(
            "{:.0} msg/s, p50 {} µs, p99 {} µs; journal {lines}/{} lines, final flush {flush:.0?}",
            result.rate,
            result.p50_us,
            result.p99_us,
            2 * (n + 1)
        );
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let o = options()?;
    let _ = now_ns();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if o.memory {
            memory(&o).await
        } else {
            throughput(&o).await
        }
    })
}
