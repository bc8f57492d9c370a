//! `tracehop`: draw trace trees from span journals, check that every trace is whole, sum
//! up pathways across runs and write one HTML page to look at.

use std::io::{BufWriter, IsTerminal as _, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tracehop::verify::{self, render, CheckOptions, Detail, Input as Read, RenderOptions, Traces};

/// Draw trace trees from span journals and check that async steps stay in the trace.
///
/// Input is any number of span journals (JSON lines as tracehop writes them, one file per
/// service is normal, in any order) and OTLP JSON as the OpenTelemetry Collector's file
/// exporter writes it. `-` reads standard input. Lines that are not spans are reported
/// with file and line and otherwise skipped.
#[derive(Debug, Parser)]
#[command(name = "tracehop", version, propagate_version = true)]
#[command(after_help = "\
Exit status: 0 when every trace is whole (check) or the output was written (tree, stats,
view), 1 when check finds a broken trace or no spans at all, 2 on usage errors or
unreadable files.

Examples:
  tracehop tree gateway.jsonl worker.jsonl tools.jsonl
  tracehop check --entry gateway *.jsonl
  tracehop view *.jsonl -o run.html
  tracehop stats --json journals/*.jsonl
  cat otlp.json | tracehop check --json -")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Draw every trace as a tree, one line per span, with where the time went (self time,
    /// queue time, the blocking critical path), the spans that failed and where context
    /// broke.
    Tree(Input),
    /// Check that every trace is whole; exit 1 when any is not (to gate CI).
    ///
    /// Rules: a consumer that started a new trace (or a root outside the --entry
    /// services), a parent that no input contains, several roots in one trace, spans
    /// without service or operation name, and incoming context a consumer rejected. A
    /// trace whose consumer span links to a send span in the input continues that run and
    /// is not split. Spans that ended in error are listed but do not fail the check.
    Check {
        #[command(flatten)]
        input: Input,
        /// Also draw the trees.
        #[arg(long)]
        tree: bool,
    },
    /// Across all traces: per pathway (producer service > destination > consumer service)
    /// messages, queue and processing time p50/p95/p99, error, retry and broken-context
    /// rates; per service its self time.
    Stats(Input),
    /// Write one self-contained HTML page (no network needed): a waterfall per trace with
    /// queue waits, retries, links, errors and the critical path, the check's findings,
    /// and an index of the runs.
    View {
        #[command(flatten)]
        input: Input,
        /// Where to write the page.
        #[arg(short = 'o', long = "out", value_name = "FILE", required = true)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
struct Input {
    /// Span journals or OTLP JSON files; `-` for standard input.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// A service where runs start (a gateway, a scheduler); repeatable. Once any is
    /// named, a trace rooted in another service is reported as a split run; a consumer
    /// root in a named service is not.
    #[arg(long = "entry", value_name = "SERVICE")]
    entry: Vec<String>,
    /// Write JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Never use colours (they are used only on a terminal, and never when NO_COLOR is
    /// set).
    #[arg(long)]
    no_color: bool,
}

const SHOWN_MALFORMED: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Tree,
    Check { tree: bool },
    Stats,
    View,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (input, task, out) = match cli.command {
        Command::Tree(input) => (input, Task::Tree, None),
        Command::Check { input, tree } => (input, Task::Check { tree }, None),
        Command::Stats(input) => (input, Task::Stats, None),
        Command::View { input, out } => (input, Task::View, Some(out)),
    };
    match run(&input, task, out) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tracehop: {message}");
            ExitCode::from(2)
        }
    }
}

fn read(input: &Input, detail: Detail) -> Result<Read, String> {
    if input.files.iter().filter(|f| f.as_os_str() == "-").count() > 1 {
        return Err("standard input (-) can be read only once".to_owned());
    }
    let mut read = Read::new(detail);
    let mut unreadable = Vec::new();
    for path in &input.files {
        match verify::read_files_with(std::slice::from_ref(path), detail) {
            Ok(more) => read.append(more),
            Err(tracehop::Error::JournalIo { path, source }) => {
                unreadable.push(format!("cannot read {path}: {source}"));
            }
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    if !unreadable.is_empty() {
        return Err(unreadable.join("\ntracehop: "));
    }
    for m in read.malformed.iter().take(SHOWN_MALFORMED) {
        eprintln!("tracehop: warning: {}:{}: {}", m.source, m.line, m.error);
    }
    if read.malformed.len() > SHOWN_MALFORMED {
        eprintln!(
            "tracehop: warning: ... and {} more malformed lines",
            read.malformed.len() - SHOWN_MALFORMED
        );
    }
    Ok(read)
}

fn run(input: &Input, task: Task, out: Option<PathBuf>) -> Result<ExitCode, String> {
    // Text output needs only what the rules and trees read; JSON and HTML show every
    // attribute.
    let detail = if (input.json && task != Task::Stats) || task == Task::View {
        Detail::Full
    } else {
        Detail::Lean
    };
    // TRACEHOP_TIMINGS=1: how long each phase took, on standard error.
    let timings = std::env::var_os("TRACEHOP_TIMINGS").is_some();
    let started = std::time::Instant::now();
    let phase = |what: &str| {
        if timings {
            eprintln!(
                "tracehop: {what} done at {:.3} s",
                started.elapsed().as_secs_f64()
            );
        }
    };
    let mut read = read(input, detail)?;
    phase("reading");
    let span_lines = read.spans.len();
    let traces = Traces::from_spans(std::mem::take(&mut read.spans));
    phase("stitching");
    let options = input
        .entry
        .iter()
        .fold(CheckOptions::new(), |o, e| o.entry(e.clone()));
    // Statistics do not need the rules.
    let report = if task == Task::Stats {
        verify::Report::default()
    } else {
        traces.check(&options)
    };
    phase("checking");
    let color = !input.no_color
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stdout().is_terminal();
    let render_options = RenderOptions { color };

    if let Some(path) = out {
        let file = std::fs::File::create(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let mut w = BufWriter::new(file);
        render::write_html(&mut w, &traces, &report)
            .and_then(|()| w.flush())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!(
            "tracehop: wrote {} ({})",
            path.display(),
            render::total_line(&traces, &report, &RenderOptions::plain())
        );
        return Ok(ExitCode::SUCCESS);
    }

    let stdout = std::io::stdout().lock();
    let mut w = BufWriter::with_capacity(1 << 16, stdout);
    let written = match task {
        Task::Stats if input.json => {
            let mut value = render::stats_json(&traces.stats());
            value["input"] = input_json(input, span_lines, &read);
            serde_json::to_writer_pretty(&mut w, &value)
                .map_err(std::io::Error::from)
                .and_then(|()| w.write_all(b"\n"))
        }
        Task::Stats => w.write_all(render::stats_text(&traces.stats()).as_bytes()),
        _ if input.json => {
            let mut extra = serde_json::Map::new();
            extra.insert("input".to_owned(), input_json(input, span_lines, &read));
            render::write_json_with(&mut w, &traces, &report, extra)
        }
        Task::Tree => render::write_text(&mut w, &traces, &report, &render_options),
        Task::Check { tree: true } => render::write_text(&mut w, &traces, &report, &render_options)
            .and_then(|()| w.write_all(b"\n"))
            .and_then(|()| render::write_findings(&mut w, &traces, &report, &render_options)),
        Task::Check { tree: false } | Task::View => {
            render::write_findings(&mut w, &traces, &report, &render_options)
        }
    };
    let written = written.and_then(|()| w.flush());
    phase("writing");
    if let Err(e) = written {
        // A closed pipe (`| head`) is not worth an error message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(format!("writing output: {e}"));
        }
    }

    if !matches!(task, Task::Check { .. }) {
        return Ok(ExitCode::SUCCESS);
    }
    if traces.is_empty() {
        eprintln!("tracehop: no spans in the input: nothing to check");
        return Ok(ExitCode::from(1));
    }
    Ok(if report.is_whole() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn input_json(input: &Input, spans: usize, read: &Read) -> serde_json::Value {
    json!({
        "files": input.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "spans": spans,
        "skipped": read.skipped,
        "malformed": read.malformed.iter().map(|m| json!({
            "source": m.source, "line": m.line, "error": m.error,
        })).collect::<Vec<_>>(),
    })
}
