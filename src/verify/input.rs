//! Reading verification input: span journals and OTLP JSON, from files or standard input.
//!
//! Journals are read a line at a time (the file is never held in memory) straight into
//! compact [`Spans`]; a file whose first line is not a JSON value (a pretty-printed OTLP
//! document) is read whole.

use std::io::{self, Read};
use std::path::Path;
use std::sync::{mpsc, Mutex};

use serde_json::Value;

use super::otlp_json;
use super::parse::{journal_line, scanned_line, LineOutcome};
use super::store::{Detail, Spans};
use crate::journal::{self, Malformed};
use crate::Result;

const OTLP_MARKER: &[u8] = b"\"resourceSpans\"";

/// What reading produced: the spans, and the lines that were not spans.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Every span read, compact, in input order.
    pub spans: Spans,
    /// Lines that were not spans, with where they were.
    pub malformed: Vec<Malformed>,
    /// Well-formed events that are not finished spans (`span_started`, log lines), skipped.
    pub skipped: usize,
}

impl Input {
    /// Nothing read yet; spans will be kept with `detail`.
    pub fn new(detail: Detail) -> Input {
        Input {
            spans: Spans::new(detail),
            ..Input::default()
        }
    }

    /// Add what `more` read.
    pub fn append(&mut self, more: Input) {
        self.spans.append(more.spans);
        self.malformed.extend(more.malformed);
        self.skipped += more.skipped;
    }

    fn line(&mut self, source: &str, line: usize, bytes: &[u8]) {
        // Most lines are spans the fast reader reads; it leaves anything else (OTLP JSON
        // among them) to what follows.
        if scan_lines() && scanned_line(bytes, &mut self.spans) {
            return;
        }
        if contains_otlp(bytes) {
            if let Ok(doc) = serde_json::from_slice::<Value>(bytes) {
                if otlp_json::is_otlp(&doc) {
                    self.otlp(source, line, &doc);
                    return;
                }
            }
        }
        match journal_line(bytes, &mut self.spans) {
            LineOutcome::Span | LineOutcome::Blank => {}
            LineOutcome::Skipped => self.skipped += 1,
            LineOutcome::Malformed(error) => self.malformed.push(Malformed {
                source: source.to_owned(),
                line,
                error,
            }),
        }
    }

    fn otlp(&mut self, source: &str, line: usize, doc: &Value) {
        let (records, errors) = otlp_json::spans(doc);
        self.spans.extend_records(&records);
        self.malformed
            .extend(errors.into_iter().map(|error| Malformed {
                source: source.to_owned(),
                line,
                error: format!("OTLP span not read: {error}"),
            }));
    }

    /// Read `bytes` from `source`: one document (pretty-printed OTLP) or lines.
    fn bytes(&mut self, source: &str, bytes: &[u8]) {
        if contains_otlp(bytes) {
            if let Ok(doc) = serde_json::from_slice::<Value>(bytes) {
                if otlp_json::is_otlp(&doc) {
                    self.otlp(source, 1, &doc);
                    return;
                }
            }
        }
        let _ = self.lines(source, 1, bytes);
    }

    /// Read the lines of `bytes`, the first being line `first_line`; returns how many
    /// lines there were.
    fn lines(&mut self, source: &str, first_line: usize, bytes: &[u8]) -> usize {
        let mut start = 0;
        let mut line = first_line;
        for end in memchr::memchr_iter(b'\n', bytes) {
            self.line(source, line, &bytes[start..end]);
            start = end + 1;
            line += 1;
        }
        if start < bytes.len() {
            self.line(source, line, &bytes[start..]);
            line += 1;
        }
        line - first_line
    }

    /// Read lines from `reader` in blocks, parsed on a thread per core; a first line that
    /// is not a JSON value (the start of a pretty-printed document) makes it read the
    /// rest whole.
    fn stream(&mut self, source: &str, mut reader: impl Read) -> io::Result<()> {
        let mut first = Vec::with_capacity(BLOCK + (1 << 16));
        (&mut reader).take(BLOCK as u64).read_to_end(&mut first)?;
        if first.is_empty() {
            return Ok(());
        }
        let first_line = memchr::memchr(b'\n', &first).unwrap_or(first.len());
        if starts_a_document(&first[..first_line]) {
            reader.read_to_end(&mut first)?;
            self.bytes(source, &first);
            return Ok(());
        }
        let detail = self.spans.detail();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let (tx, rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(workers * 2);
        let rx = Mutex::new(rx);
        // Per block: its number, its lines, and the malformed lines it added (numbered
        // from 1 in the block until every block's length is known).
        type Blocks = Vec<(usize, usize, std::ops::Range<usize>)>;
        let (read, parts) = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut input = Input::new(detail);
                        let mut blocks: Blocks = Vec::new();
                        loop {
                            let next = rx
                                .lock()
                                .map_err(|_| ())
                                .and_then(|rx| rx.recv().map_err(|_| ()));
                            let Ok((seq, block)) = next else { break };
                            let before = input.malformed.len();
                            // A journal line is a few hundred bytes.
                            input.spans.spans.reserve(block.len() / 256);
                            let lines = input.lines(source, 1, &block);
                            blocks.push((seq, lines, before..input.malformed.len()));
                        }
                        input.spans.spans.shrink_to_fit();
                        (input, blocks)
                    })
                })
                .collect();
            let read = send_blocks(&mut reader, first, &tx);
            drop(tx);
            let parts: Vec<(Input, Blocks)> = crate::verify::join_all(handles);
            (read, parts)
        });
        let blocks: usize = parts.iter().map(|(_, b)| b.len()).sum();
        let mut lines = vec![0; blocks];
        for (_, b) in &parts {
            for (seq, n, _) in b {
                lines[*seq] = *n;
            }
        }
        let mut first_line = vec![1; blocks];
        for seq in 1..blocks {
            first_line[seq] = first_line[seq - 1] + lines[seq - 1];
        }
        let before = self.malformed.len();
        for (mut input, b) in parts {
            for (seq, _, range) in b {
                for m in &mut input.malformed[range] {
                    m.line += first_line[seq] - 1;
                }
            }
            self.append(input);
        }
        self.malformed[before..].sort_by_key(|m| m.line);
        read
    }
}

#[cfg(test)]
thread_local! {
    /// Tests turn the fast reader off on their thread, to compare it with serde.
    pub(crate) static SERDE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether lines go to the fast reader first.
fn scan_lines() -> bool {
    #[cfg(test)]
    if SERDE_ONLY.with(std::cell::Cell::get) {
        return false;
    }
    true
}

const BLOCK: usize = 1 << 22;

/// Blocks of ~4 MiB of whole lines, numbered, read straight into their buffers.
fn send_blocks(
    reader: &mut impl Read,
    mut block: Vec<u8>,
    tx: &mpsc::SyncSender<(usize, Vec<u8>)>,
) -> io::Result<()> {
    let mut seq = 0;
    loop {
        let want = BLOCK.saturating_sub(block.len());
        let got = reader.take(want as u64).read_to_end(&mut block)?;
        if block.is_empty() {
            return Ok(());
        }
        let cut = if got < want {
            block.len()
        } else {
            match memchr::memrchr(b'\n', &block) {
                Some(i) => i + 1,
                // One line longer than a block: read on.
                None => {
                    if reader.take(BLOCK as u64).read_to_end(&mut block)? == 0 {
                        block.len()
                    } else {
                        continue;
                    }
                }
            }
        };
        let mut next = Vec::with_capacity(BLOCK + (1 << 16));
        next.extend_from_slice(&block[cut..]);
        block.truncate(cut);
        if tx.send((seq, block)).is_err() {
            return Ok(());
        }
        seq += 1;
        block = next;
    }
}

/// A first line that opens a JSON object or array it does not close.
fn starts_a_document(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    (text.starts_with('{') || text.starts_with('['))
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_err()
}

/// Read every file in `paths` (`-` is standard input) as span journal lines or OTLP JSON,
/// in any mix, keeping every detail of each span. A file that cannot be read is an error;
/// lines that are not spans are counted in [`Input::malformed`] with file and line.
pub fn read_files<P: AsRef<Path>>(paths: &[P]) -> Result<Input> {
    read_files_with(paths, Detail::Full)
}

/// [`read_files`], keeping `detail` of each span ([`Detail::Lean`] for the least memory).
pub fn read_files_with<P: AsRef<Path>>(paths: &[P], detail: Detail) -> Result<Input> {
    let mut input = Input::new(detail);
    journal::for_each_source(paths, |name, reader| input.stream(name, reader))?;
    Ok(input)
}

/// Read span journal lines and OTLP JSON from memory, keeping every detail; `source`
/// names it in [`Malformed`] entries.
///
/// OTLP JSON may be one document per line (the Collector's file exporter) or a single
/// pretty-printed document.
pub fn read_bytes(source: &str, bytes: &[u8]) -> Input {
    read_bytes_with(source, bytes, Detail::Full)
}

/// [`read_bytes`], keeping `detail` of each span.
pub fn read_bytes_with(source: &str, bytes: &[u8], detail: Detail) -> Input {
    let mut input = Input::new(detail);
    input.bytes(source, bytes);
    input
}

/// Whether `haystack` mentions `"resourceSpans"` (an OTLP document).
fn contains_otlp(haystack: &[u8]) -> bool {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(OTLP_MARKER));
    FINDER.find(haystack).is_some()
}
