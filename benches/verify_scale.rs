//! `tracehop check`, `tree` and `stats` at scale: a generator of journals and a
//! measurement of wall time and peak memory (`/usr/bin/time -v`) of the release binary.
//!
//! ```sh
//! cargo build --release --features cli --bin tracehop
//! cargo bench --features cli --bench verify_scale -- --spans 1000000   # demo-shaped runs
//! cargo bench --features cli --bench verify_scale -- --spans 200000 --shape chain
//! cargo bench --features cli --bench verify_scale -- --spans 10000000 --only check
//! ```
//!
//! The demo shape repeats a real run of the demo (`benches/data/demo_run.jsonl`: 17 spans
//! over 4 services, as its journals wrote them) with fresh ids and times, one journal file
//! per service. The chain shape is one trace in which each span is the parent of the next
//! (as chained consumers produce). Journals go to `target/verify-scale/` and are reused
//! when they already hold the requested spans.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TEMPLATE: &str = include_str!("data/demo_run.jsonl");

struct Args {
    spans: usize,
    shape: String,
    only: Option<String>,
}

fn args() -> Args {
    let mut args = Args {
        spans: 1_000_000,
        shape: "demo".into(),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--spans" => args.spans = it.next().and_then(|v| v.parse().ok()).expect("--spans N"),
            "--shape" => args.shape = it.next().expect("--shape demo|chain"),
            "--only" => args.only = it.next(),
            // cargo bench passes --bench; criterion-style filters are ignored.
            _ => {}
        }
    }
    args
}

fn hex(n: u64, digits: usize) -> String {
    format!("{n:0digits$x}")
}

/// A deterministic stream of ids.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

fn parse(t: &str) -> SystemTime {
    humantime::parse_rfc3339(t).expect("template time")
}

/// Demo-shaped runs: the template's lines with new trace and span ids, shifted in time.
fn demo(dir: &Path, spans: usize) -> Vec<PathBuf> {
    let lines: Vec<serde_json::Value> = TEMPLATE
        .lines()
        .map(|l| serde_json::from_str(l).expect("template line"))
        .collect();
    let first = lines
        .iter()
        .filter_map(|l| l["start_time"].as_str())
        .map(parse)
        .min()
        .expect("template has times");
    let mut files: HashMap<String, BufWriter<File>> = HashMap::new();
    let mut paths = Vec::new();
    let mut ids = Ids(7);
    let runs = spans.div_ceil(lines.len());
    let start = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    for run in 0..runs {
        let trace = format!("{}{}", hex(ids.next(), 16), hex(ids.next(), 16));
        let mut map: HashMap<&str, String> = HashMap::new();
        let shift = start + Duration::from_millis(run as u64 * 50);
        for line in &lines {
            let id = line["span_id"].as_str().unwrap();
            map.insert(id, hex(ids.next(), 16));
        }
        for line in &lines {
            let mut l = line.clone();
            l["trace_id"] = trace.clone().into();
            l["span_id"] = map[line["span_id"].as_str().unwrap()].clone().into();
            if let Some(p) = line["parent_span_id"].as_str() {
                l["parent_span_id"] = map[p].clone().into();
            }
            for key in ["timestamp", "start_time"] {
                if let Some(t) = line[key].as_str() {
                    let offset = parse(t).duration_since(first).unwrap_or_default();
                    l[key] = rfc3339(shift + offset).into();
                }
            }
            let service = l["service_name"].as_str().unwrap().to_owned();
            let file = files.entry(service.clone()).or_insert_with(|| {
                let path = dir.join(format!("{service}.jsonl"));
                paths.push(path.clone());
                BufWriter::new(File::create(path).unwrap())
            });
            serde_json::to_writer(&mut *file, &l).unwrap();
            file.write_all(b"\n").unwrap();
        }
    }
    for (_, mut f) in files {
        f.flush().unwrap();
    }
    paths
}

/// One trace, each span the parent of the next.
fn chain(dir: &Path, spans: usize) -> Vec<PathBuf> {
    let path = dir.join("chain.jsonl");
    let mut out = BufWriter::new(File::create(&path).unwrap());
    let start = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let trace = "c0ffee00c0ffee00c0ffee00c0ffee00";
    for i in 0..spans as u64 {
        let begin = start + Duration::from_micros(i * 100);
        // The chain starts at a request; every span after it processes a message sent
        // from inside the one before.
        let parent = if i == 0 {
            String::new()
        } else {
            format!(",\"parent_span_id\":\"{}\"", hex(i, 16))
        };
        let kind = if i == 0 { "server" } else { "consumer" };
        let (operation, attributes) = if i == 0 {
            ("handle_request", String::new())
        } else {
            (
                "process chain",
                ",\"attributes\":{\"messaging.system\":\"kafka\",\
                 \"messaging.destination.name\":\"chain\",\
                 \"messaging.operation.type\":\"process\",\"tracehop.queue_time_ms\":0.02}"
                    .to_owned(),
            )
        };
        writeln!(
            out,
            "{{\"timestamp\":\"{}\",\"event\":\"span_finished\",\"trace_id\":\"{trace}\",\
             \"span_id\":\"{}\"{parent},\"service_name\":\"worker\",\
             \"operation_name\":\"{operation}\",\"span_kind\":\"{kind}\",\
             \"start_time\":\"{}\",\"latency_ms\":0.08,\"duration_ns\":80000,\
             \"status\":\"ok\",\"error\":null{attributes}}}",
            rfc3339(begin + Duration::from_micros(80)),
            hex(i + 1, 16),
            rfc3339(begin)
        )
        .unwrap();
    }
    out.flush().unwrap();
    vec![path]
}

fn journals(shape: &str, spans: usize) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/verify-scale");
    let dir = root.join(format!("{shape}-{spans}"));
    let done = dir.join("done");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        eprintln!("generating {spans} {shape} spans in {}", dir.display());
        match shape {
            "chain" => chain(&dir, spans),
            _ => demo(&dir, spans),
        };
        std::fs::write(&done, "").unwrap();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

/// Wall time, CPU time (user + system) and peak RSS of one command, from
/// `/usr/bin/time -v`.
fn measure(binary: &Path, args: &[&str], files: &[PathBuf]) -> (Duration, f64, u64, i32) {
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(binary)
        .args(args)
        .args(files)
        .stdout(std::process::Stdio::null())
        .output()
        .expect("run /usr/bin/time -v (apt-get install time)");
    let report = String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| {
        report
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(name)
                    .map(str::trim)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{report}"))
    };
    let rss_kb: u64 = field("Maximum resident set size (kbytes):")
        .parse()
        .unwrap();
    let wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss):");
    let mut seconds = 0.0;
    for part in wall.split(':') {
        seconds = seconds * 60.0 + part.parse::<f64>().unwrap();
    }
    let code: i32 = field("Exit status:").parse().unwrap();
    let cpu = field("User time (seconds):").parse::<f64>().unwrap()
        + field("System time (seconds):").parse::<f64>().unwrap();
    (Duration::from_secs_f64(seconds), cpu, rss_kb * 1024, code)
}

fn main() {
    let args = args();
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/tracehop");
    assert!(
        binary.exists(),
        "build the release binary first: cargo build --release --features cli --bin tracehop"
    );
    let files = journals(&args.shape, args.spans);
    let bytes: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average before: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{} {} spans, {} files, {:.1} MB of journal",
        args.spans,
        args.shape,
        files.len(),
        bytes as f64 / 1e6
    );
    let tasks: [(&str, &[&str]); 5] = [
        ("check", &["check"]),
        ("check --json", &["check", "--json"]),
        ("tree", &["tree"]),
        ("stats", &["stats"]),
        ("stats --json", &["stats", "--json"]),
    ];
    println!("| command | wall | CPU (user + sys) | peak RSS | exit |");
    println!("|---|---:|---:|---:|---:|");
    for (name, task) in tasks {
        if args.only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let (wall, cpu, rss, code) = measure(&binary, task, &files);
        println!(
            "| `tracehop {name}` | {:.2} s | {cpu:.2} s | {:.0} MB | {code} |",
            wall.as_secs_f64(),
            rss as f64 / 1e6
        );
    }
}
