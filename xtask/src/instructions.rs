//! `cargo xtask bench-instructions`: instructions per message of each broker's raw client,
//! raw client with the context headers, and tracehop unsampled and sampled + journaled,
//! counted by `valgrind --tool=callgrind` in the client process (brokers are separate
//! processes; the journal's writer thread is counted).
//!
//! Each configuration runs twice, with `--messages` and with ten times that plus as many
//! again; the difference divided by the difference in messages is the cost per message,
//! free of start-up and connection costs. Instruction counts do not depend on the clock,
//! but they are not the same from run to run: the async clients poll and wake more or less
//! often with the threads' timing, and glibc's allocator costs more or less with the
//! heap's state (one binary's figure moves by a few hundred instructions per message, a
//! whole run's by up to ~1,000). So each broker's modes run `--rounds` times (3 by
//! default), interleaved (every mode once, then again), and the table gives each mode's
//! median with the lowest and highest round; the overheads are of the medians.
//!
//! ```text
//! cargo xtask bench-instructions [--messages N] [--rounds N] [--only nats-core,jetstream,rabbitmq,kafka-tansu] [--metrics]
//! ```
//!
//! `--metrics` runs the traced modes with messaging metrics on (`TRACEHOP_BENCH_METRICS=1`:
//! an in-memory reader) and prints their cost over the same modes without, one round
//! (`--rounds` is refused with it).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The brokers measured by default (the in-process MockCluster would count the broker).
const BROKERS: &[&str] = &["nats-core", "jetstream", "rabbitmq", "kafka-tansu"];
const MODES: &[&str] = &["raw", "raw+headers", "unsampled", "sampled"];

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut small: u64 = 2_000;
    let mut brokers: Vec<String> = BROKERS.iter().map(|b| (*b).to_owned()).collect();
    let mut args = args.iter();
    let mut metrics = false;
    let mut rounds: Option<usize> = None;
    while let Some(arg) = args.next() {
        if arg == "--metrics" {
            metrics = true;
            continue;
        }
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--messages" => small = value.parse().map_err(|e| format!("--messages: {e}"))?,
            "--only" => brokers = value.split(',').map(str::to_owned).collect(),
            "--rounds" => {
                let n: usize = value.parse().map_err(|e| format!("--rounds: {e}"))?;
                if n == 0 {
                    return Err("--rounds must be at least 1".to_owned());
                }
                rounds = Some(n);
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if metrics && rounds.is_some() {
        return Err("--rounds does not apply to --metrics (one round)".to_owned());
    }
    let rounds = rounds.unwrap_or(3);
    let large = small * 11;
    which("valgrind")?;
    let bench = build_bench()?;
    let out_dir = std::env::temp_dir().join("tracehop-callgrind");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    if metrics {
        return metrics_cost(&bench, &out_dir, &brokers, small, large);
    }
    println!(
        "# instructions per message: (I({large}) - I({small})) / {} messages, 128-byte payloads; \
         the median of {rounds} interleaved rounds (lowest-highest)",
        large - small
    );
    println!();
    println!("| broker | raw | raw+headers | unsampled | sampled + journaled | tracehop over raw+headers (unsampled / journaled) |");
    println!("|---|---:|---:|---:|---:|---|");
    for broker in &brokers {
        // Per mode, one figure per round.
        let mut per_message: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
        for round in 1..=rounds {
            for (at, mode) in MODES.iter().enumerate() {
                let a = instructions(&bench, &out_dir, broker, mode, small)?;
                let b = instructions(&bench, &out_dir, broker, mode, large)?;
                let figure = b.saturating_sub(a) as f64 / (large - small) as f64;
                eprintln!("{broker} {mode} round {round}: {figure:.0}");
                per_message[at].push(figure);
            }
        }
        let medians: Vec<f64> = per_message.iter().map(|f| median(f)).collect();
        let cell = |at: usize| spread(&per_message[at]);
        println!(
            "| {broker} | {} | {} | {} | {} | {:.0} / {:.0} |",
            cell(0),
            cell(1),
            cell(2),
            cell(3),
            medians[2] - medians[1],
            medians[3] - medians[1]
        );
    }
    Ok(())
}

/// The median of `figures` (not empty; the mean of the middle two for an even count).
fn median(figures: &[f64]) -> f64 {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// `median (lowest-highest)`, or the figure alone for one round.
fn spread(figures: &[f64]) -> String {
    let (low, high) = figures
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &f| (l.min(f), h.max(f)));
    if figures.len() < 2 {
        return format!("{:.0}", median(figures));
    }
    format!("{:.0} ({low:.0}-{high:.0})", median(figures))
}

/// The traced modes with and without metrics: what metrics add per message.
fn metrics_cost(
    bench: &Path,
    out_dir: &Path,
    brokers: &[String],
    small: u64,
    large: u64,
) -> Result<(), String> {
    println!(
        "# instructions per message with metrics on: (I({large}) - I({small})) / {} messages",
        large - small
    );
    println!();
    println!("| broker | unsampled | + metrics | sampled + journaled | + metrics |");
    println!("|---|---:|---:|---:|---:|");
    for broker in brokers {
        let mut cells = Vec::new();
        for mode in ["unsampled", "sampled"] {
            let mut per = [0.0; 2];
            for (i, on) in [false, true].into_iter().enumerate() {
                let env = on.then_some(("TRACEHOP_BENCH_METRICS", "1"));
                let a = instructions_with(bench, out_dir, broker, mode, small, env)?;
                let b = instructions_with(bench, out_dir, broker, mode, large, env)?;
                per[i] = b.saturating_sub(a) as f64 / (large - small) as f64;
            }
            cells.push(format!("{:.0} | +{:.0}", per[0], per[1] - per[0]));
        }
        println!("| {broker} | {} | {} |", cells[0], cells[1]);
    }
    Ok(())
}

fn which(program: &str) -> Result<(), String> {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        Ok(())
    } else {
        Err(format!(
            "{program} is not installed (apt-get install -y {program})"
        ))
    }
}

/// Build the throughput bench (release, all brokers) and return its executable.
fn build_bench() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "bench",
            "--features",
            "full",
            "--bench",
            "throughput",
            "--no-run",
            "--message-format",
            "json",
        ])
        .output()
        .map_err(|e| format!("building the bench: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the bench failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("\"executable\"") && l.contains("throughput"))
        .find_map(|l| {
            let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = l[start..].find('"')? + start;
            Some(PathBuf::from(&l[start..end]))
        })
        .ok_or_else(|| "cargo did not name the bench executable".to_owned())
}

/// Total instructions of one `--once` run under callgrind.
fn instructions(
    bench: &Path,
    out_dir: &Path,
    broker: &str,
    mode: &str,
    messages: u64,
) -> Result<u64, String> {
    instructions_with(bench, out_dir, broker, mode, messages, None)
}

/// [`instructions`], with one more environment variable for the run.
fn instructions_with(
    bench: &Path,
    out_dir: &Path,
    broker: &str,
    mode: &str,
    messages: u64,
    env: Option<(&str, &str)>,
) -> Result<u64, String> {
    let tag = if env.is_some() { "-env" } else { "" };
    let out = out_dir.join(format!("{broker}-{mode}-{messages}{tag}.out"));
    let mut command = Command::new("valgrind");
    if let Some((k, v)) = env {
        command.env(k, v);
    }
    let status = command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(bench)
        .args([
            "--once",
            "--only",
            broker,
            "--modes",
            mode,
            "--messages",
            &messages.to_string(),
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("running valgrind: {e}"))?;
    if !status.success() {
        return Err(format!(
            "{broker} {mode} {messages}: the run failed ({status})"
        ));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("{}: no instruction total", out.display()))
}

#[cfg(test)]
mod tests {
    use super::{median, spread};

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert_eq!(
            spread(&[35_120.4, 35_285.0, 35_203.0]),
            "35203 (35120-35285)"
        );
        assert_eq!(spread(&[12.0]), "12");
    }
}
