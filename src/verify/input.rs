//! Reading verification input: span journals and OTLP JSON, from files or standard input.

use std::io::{self, Read};
use std::path::Path;

use serde_json::Value;

use super::otlp_json;
use crate::journal::{self, Malformed, ReadReport};
use crate::{Error, Result};

const OTLP_MARKER: &[u8] = b"\"resourceSpans\"";

/// Read every file in `paths` (`-` is standard input) as span journal lines or OTLP JSON,
/// in any mix. A file that cannot be read is an error; lines that are not spans are
/// counted in [`ReadReport::malformed`] with file and line.
pub fn read_files<P: AsRef<Path>>(paths: &[P]) -> Result<ReadReport> {
    let mut report = ReadReport::default();
    for path in paths {
        let (name, bytes) = read_path(path.as_ref())?;
        merge(&mut report, read_bytes(&name, &bytes));
    }
    Ok(report)
}

/// The contents of `path` (`-` is standard input) and the name to report it by.
fn read_path(path: &Path) -> Result<(String, Vec<u8>)> {
    let name = path.display().to_string();
    let mut bytes = Vec::new();
    let result = if name == "-" {
        io::stdin().lock().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes).map(|_| ()))
    };
    match result {
        Ok(()) => Ok((name, bytes)),
        Err(source) => Err(Error::JournalIo { path: name, source }),
    }
}

/// Add `more` to `report`.
fn merge(report: &mut ReadReport, more: ReadReport) {
    report.spans.extend(more.spans);
    report.malformed.extend(more.malformed);
    report.skipped += more.skipped;
}

/// Read span journal lines and OTLP JSON from memory; `source` names it in
/// [`Malformed`] entries.
///
/// OTLP JSON may be one document per line (the Collector's file exporter) or a single
/// pretty-printed document.
pub fn read_bytes(source: &str, bytes: &[u8]) -> ReadReport {
    if !contains(bytes, OTLP_MARKER) {
        return read_journal(source, bytes);
    }
    // One document spread over many lines.
    if let Ok(doc) = serde_json::from_slice::<Value>(bytes) {
        if otlp_json::is_otlp(&doc) {
            let mut report = ReadReport::default();
            add_otlp(&mut report, source, 1, &doc);
            return report;
        }
    }
    // Line by line: OTLP lines are converted here and blanked for the journal reader, which
    // keeps line numbers.
    let mut report = ReadReport::default();
    let mut rest = Vec::with_capacity(bytes.len());
    for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        if contains(line, OTLP_MARKER) {
            if let Ok(doc) = serde_json::from_slice::<Value>(line) {
                if otlp_json::is_otlp(&doc) {
                    add_otlp(&mut report, source, i + 1, &doc);
                    rest.push(b'\n');
                    continue;
                }
            }
        }
        rest.extend_from_slice(line);
    }
    let journal = read_journal(source, &rest);
    merge(&mut report, journal);
    report.malformed.sort_by_key(|m| m.line);
    report
}

fn read_journal(source: &str, bytes: &[u8]) -> ReadReport {
    // Reading from memory cannot fail.
    journal::read_reader(source, bytes).unwrap_or_default()
}

fn add_otlp(report: &mut ReadReport, source: &str, line: usize, doc: &Value) {
    let (spans, errors) = otlp_json::spans(doc);
    report.spans.extend(spans);
    report
        .malformed
        .extend(errors.into_iter().map(|error| Malformed {
            source: source.to_owned(),
            line,
            error: format!("OTLP span not read: {error}"),
        }));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
