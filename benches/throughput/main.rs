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
//!   --once           instead: one run of --messages messages, one broker (--only) and
//!                    one configuration (--modes), no warm-up: what
//!                    `cargo xtask bench-instructions` runs under callgrind
//! ```
//!
//! Brokers: NATS on `TRACEHOP_NATS_URL` (default `nats://127.0.0.1:4222`, JetStream
//! enabled), RabbitMQ on `TRACEHOP_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), Kafka on `TRACEHOP_KAFKA_BROKERS` (default
//! `127.0.0.1:9092`, tansu in this project) and rdkafka's in-process `MockCluster`. Each
//! Kafka run makes a topic and deletes it afterwards; `TRACEHOP_BENCH_KEEP_TOPICS=1`
//! keeps them (BENCHMARKS: the librdkafka metadata-cache crash).
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

mod jet_stream;
mod kafka;
mod measure;
mod nats_core;
mod rabbitmq;
mod traced;

use measure::*;
use traced::*;

// Options

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

    /// The goals (issue 14), as shares of `raw+headers` throughput in the same run:
    /// (unsampled, sampled and journaled).
    fn goals(self) -> (f64, f64) {
        match self {
            Broker::NatsCore => (0.90, 0.75),
            Broker::JetStream => (0.95, 0.90),
            Broker::RabbitMq => (0.99, 0.97),
            Broker::KafkaTansu | Broker::KafkaMock => (0.97, 0.92),
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
    once: bool,
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
        once: false,
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
            "--once" => o.once = true,
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

// Driver

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
    println!("| broker | mode | msg/s | vs raw | vs raw+headers | goal | p50 µs | p99 µs |");
    println!("|---|---|---:|---:|---:|---|---:|---:|");
    for (broker, row) in &summary {
        let raw = row[0].map(|r| r.0);
        let headers = row[1].map(|r| r.0);
        let (unsampled_goal, sampled_goal) = broker.goals();
        for (mode, cell) in MODES.iter().zip(row) {
            let Some((rate, p50, p99)) = cell else {
                continue;
            };
            let share = |base: Option<f64>| match (mode, base) {
                (Mode::Raw, _) | (_, None) => String::new(),
                (_, Some(base)) => format!("{:.1}%", 100.0 * rate / base),
            };
            let goal = match (mode, headers) {
                (Mode::Unsampled, Some(base)) => verdict(rate / base, unsampled_goal),
                (Mode::Sampled, Some(base)) => verdict(rate / base, sampled_goal),
                _ => String::new(),
            };
            println!(
                "| {} | {} | {:.0} | {} | {} | {} | {:.0} | {:.0} |",
                broker.name(),
                mode.name(),
                rate,
                share(raw),
                if *mode == Mode::RawHeaders {
                    String::new()
                } else {
                    share(headers)
                },
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

/// One run of one configuration on one broker, nothing else: the unit of
/// `cargo xtask bench-instructions`.
async fn once(o: &Options) -> Result<(), Error> {
    let (&broker, &mode) = match (o.brokers.as_slice(), o.modes.as_slice()) {
        ([broker], [mode]) => (broker, mode),
        _ => return Err("--once takes one --only broker and one --modes configuration".into()),
    };
    COUNT_LINES.store(false, Ordering::Relaxed);
    let env = env(broker).await?;
    let (result, _) = run_one(&env, broker, mode, o, o.messages, Vec::new()).await?;
    println!(
        "{} {} {} messages: {:.0} msg/s, journal {:?} bytes",
        broker.name(),
        mode.name(),
        o.messages,
        result.rate,
        result.spans.map(|(_, bytes, _)| bytes)
    );
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
        if o.once {
            once(&o).await
        } else if o.memory {
            memory(&o).await
        } else {
            throughput(&o).await
        }
    })
}
