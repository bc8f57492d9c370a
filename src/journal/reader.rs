//! Reading journals back: many files, any order, malformed lines counted, never fatal.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use super::record::SpanRecord;
use crate::{Error, Result};

/// A line that could not be read as a span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The file (or `-` for standard input) the line came from.
    pub source: String,
    /// The 1-based line number.
    pub line: usize,
    /// What was wrong with it.
    pub error: String,
}

/// What reading one or more journals produced.
#[derive(Debug, Clone, Default)]
pub struct ReadReport {
    /// Every span read, in input order.
    pub spans: Vec<SpanRecord>,
    /// Lines that were not spans, with where they were.
    pub malformed: Vec<Malformed>,
    /// Well-formed events that are not finished spans (`span_started`, log lines), skipped.
    pub skipped: usize,
}

/// Read the journal files at `paths` (one per service is normal); `-` reads standard
/// input. A file that cannot be opened is an error; bad lines inside a file are not.
pub fn read_files<P: AsRef<Path>>(paths: &[P]) -> Result<ReadReport> {
    let mut report = ReadReport::default();
    for_each_source(paths, |name, reader| {
        read_into(name, BufReader::new(reader), &mut report)
    })?;
    Ok(report)
}

/// Open each of `paths` (`-` is standard input) and hand it to `read` with its name; a
/// file that cannot be opened or read is [`Error::JournalIo`] naming it.
pub(crate) fn for_each_source<P: AsRef<Path>>(
    paths: &[P],
    mut read: impl FnMut(&str, &mut dyn io::Read) -> io::Result<()>,
) -> Result<()> {
    for path in paths {
        let path = path.as_ref();
        let name = path.display().to_string();
        let result = if name == "-" {
            read(&name, &mut io::stdin().lock())
        } else {
            File::open(path).and_then(|mut file| read(&name, &mut file))
        };
        result.map_err(|source| Error::JournalIo { path: name, source })?;
    }
    Ok(())
}

/// Read journal lines from any reader.
pub fn read_reader(source: &str, reader: impl BufRead) -> io::Result<ReadReport> {
    let mut report = ReadReport::default();
    read_into(source, reader, &mut report)?;
    Ok(report)
}

/// Read journal lines from a string.
pub fn read_str(source: &str, text: &str) -> ReadReport {
    let mut report = ReadReport::default();
    // Reading from memory cannot fail.
    let _ = read_into(source, text.as_bytes(), &mut report);
    report
}

fn read_into(source: &str, mut reader: impl BufRead, report: &mut ReadReport) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        line_no += 1;
        let mut bad = |error: String| {
            report.malformed.push(Malformed {
                source: source.to_owned(),
                line: line_no,
                error,
            })
        };
        let Ok(text) = std::str::from_utf8(&buf) else {
            bad("not UTF-8".to_owned());
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                bad(format!("not JSON: {e}"));
                continue;
            }
        };
        match value.get("event").and_then(|e| e.as_str()) {
            Some("span_finished") | None => {}
            Some(_) => {
                report.skipped += 1;
                continue;
            }
        }
        match serde_json::from_value::<SpanRecord>(value) {
            Ok(span) => report.spans.push(span),
            Err(e) => bad(format!("not a span: {e}")),
        }
    }
}
