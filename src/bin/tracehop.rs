//! `tracehop`: draw trace trees from span journals and check that every trace is whole.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tracehop::journal::ReadReport;
use tracehop::verify::{self, render, CheckOptions, RenderOptions, Traces};

/// Draw trace trees from span journals and check that async steps stay in the trace.
///
/// Input is any number of span journals (JSON lines as tracehop writes them, one file per
/// service is normal, in any order) and OTLP JSON as the OpenTelemetry Collector's file
/// exporter writes it. `-` reads standard input. Lines that are not spans are reported
/// with file and line and otherwise skipped.
#[derive(Debug, Parser)]
#[command(name = "tracehop", version, propagate_version = true)]
#[command(after_help = "\
Exit status: 0 when every trace is whole (check) or the trees were drawn (tree),
1 when check finds a broken trace or no spans at all, 2 on usage errors or unreadable files.

Examples:
  tracehop tree gateway.jsonl worker.jsonl tools.jsonl
  tracehop check --entry gateway *.jsonl
  cat otlp.json | tracehop check --json -")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Draw every trace as a tree, one line per span, with where the time went, the spans
    /// that failed and where context broke.
    Tree(Input),
    /// Check that every trace is whole; exit 1 when any is not (to gate CI).
    ///
    /// Rules: a consumer that started a new trace (or a root outside the --entry
    /// services), a parent that no input contains, several roots in one trace, spans
    /// without service or operation name, and incoming context a consumer rejected.
    /// Spans that ended in error are listed but do not fail the check.
    Check {
        #[command(flatten)]
        input: Input,
        /// Also draw the trees.
        #[arg(long)]
        tree: bool,
    },
}

#[derive(Debug, Args)]
struct Input {
    /// Span journals or OTLP JSON files; `-` for standard input.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// A service where runs start (a gateway, a scheduler); repeatable. Once any is
    /// named, a trace rooted in another service is reported as a split run.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (input, check, tree) = match cli.command {
        Command::Tree(input) => (input, false, true),
        Command::Check { input, tree } => (input, true, tree),
    };
    match run(&input, check, tree) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tracehop: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(input: &Input, check: bool, tree: bool) -> Result<ExitCode, String> {
    if input.files.iter().filter(|f| f.as_os_str() == "-").count() > 1 {
        return Err("standard input (-) can be read only once".to_owned());
    }
    let mut read = ReadReport::default();
    let mut unreadable = Vec::new();
    for path in &input.files {
        match verify::read_files(std::slice::from_ref(path)) {
            Ok(more) => {
                read.spans.extend(more.spans);
                read.malformed.extend(more.malformed);
                read.skipped += more.skipped;
            }
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

    let span_lines = read.spans.len();
    let traces = Traces::from_records(std::mem::take(&mut read.spans));
    let options = input
        .entry
        .iter()
        .fold(CheckOptions::new(), |o, e| o.entry(e.clone()));
    let report = traces.check(&options);
    let color = !input.no_color
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stdout().is_terminal();
    let render_options = RenderOptions { color };

    let out = if input.json {
        let mut value = render::json(&traces, &report);
        value["input"] = json!({
            "files": input.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "spans": span_lines,
            "skipped": read.skipped,
            "malformed": read.malformed.iter().map(|m| json!({
                "source": m.source, "line": m.line, "error": m.error,
            })).collect::<Vec<_>>(),
        });
        let mut text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
        text.push('\n');
        text
    } else if tree {
        let mut text = render::text(&traces, &report, &render_options);
        if check {
            text.push('\n');
            text.push_str(&render::findings_text(&traces, &report, &render_options));
        }
        text
    } else {
        render::findings_text(&traces, &report, &render_options)
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // A closed pipe (`| head`) is not worth an error message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(format!("writing output: {e}"));
        }
    }

    if !check {
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
