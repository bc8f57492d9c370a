//! The lines of the text tree: a span's line, shortened ids, the critical path.

use std::fmt::Write as _;

use super::text::{Paint, MAX_INDENT, PATH_SHOWN};
use super::{format_duration, shorten};
use crate::journal::Status;
use crate::verify::node::{Node, Trace};
use crate::verify::rules::{blank, operation_of, service_of};
use crate::verify::store::{Id, SpanKey};
use crate::verify::timing::CriticalPath;
use std::borrow::Cow;

/// The shortest prefix length, from 8 up, that tells apart every span id of `trace` and
/// every parent id they name.
pub(crate) fn id_len(trace: &Trace<'_>) -> usize {
    let spans = trace.spans();
    let keys = spans
        .iter()
        .flat_map(|s| std::iter::once(s.id).chain(s.parent));
    let mut hex: Vec<u64> = Vec::new();
    let mut text: Vec<String> = Vec::new();
    for key in keys {
        match key {
            SpanKey::Hex(v) => hex.push(v),
            SpanKey::Text(_) => {
                let id = key.id(&trace.all.ids).to_string();
                if id.len() > 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    text.push(id);
                }
            }
        }
    }
    hex.sort_unstable();
    hex.dedup();
    text.sort_unstable();
    text.dedup();
    let mut len = 8;
    while len < 16 {
        let shift = (16 - len) * 4;
        let hex_ok = hex.windows(2).all(|w| w[0] >> shift != w[1] >> shift);
        let mut short: Vec<&str> = text.iter().map(|id| shorten(id, len)).collect();
        short.dedup();
        if hex_ok && short.len() == text.len() {
            return len;
        }
        len += 4;
    }
    len
}

pub(crate) fn id_text(id: Id<'_>, len: usize) -> String {
    id.prefix(len).into_owned()
}

/// `critical path: 368ms, 183ms of it waiting`, then a line per span on it: its time on
/// the path and how long it waited first.
pub(crate) fn critical_path_text(
    out: &mut String,
    trace: &Trace<'_>,
    path: &CriticalPath,
    len: usize,
) {
    let spans = path.spans();
    if spans.len() < 2 {
        return;
    }
    let mut work = vec![std::time::Duration::ZERO; trace.len()];
    let mut waited = vec![std::time::Duration::ZERO; trace.len()];
    for step in &path.steps {
        let slot = if step.waiting { &mut waited } else { &mut work };
        slot[step.index] += step.duration();
    }
    let _ = write!(
        out,
        "critical path: {} over {} spans",
        format_duration(path.duration()),
        spans.len()
    );
    if !path.waiting().is_zero() {
        let _ = write!(out, ", {} of it waiting", format_duration(path.waiting()));
    }
    out.push('\n');
    for (k, &i) in spans.iter().enumerate() {
        if spans.len() > 2 * PATH_SHOWN && k == PATH_SHOWN {
            let _ = writeln!(out, "  ... {} more", spans.len() - 2 * PATH_SHOWN);
        }
        if spans.len() > 2 * PATH_SHOWN && k >= PATH_SHOWN && k < spans.len() - PATH_SHOWN {
            continue;
        }
        let node = trace.node(i);
        out.push_str("  ");
        out.push_str(service_of(&node));
        out.push(' ');
        out.push_str(operation_of(&node));
        out.push(' ');
        node.span_id().push_prefix(out, len);
        out.push(' ');
        super::push_duration(out, work[i]);
        if !waited[i].is_zero() {
            out.push_str(" (waited ");
            super::push_duration(out, waited[i]);
            out.push(')');
        }
        out.push('\n');
    }
}

/// Spaces for the deepest indentation.
const INDENT: &str = match std::str::from_utf8(&[b' '; 2 * MAX_INDENT]) {
    Ok(spaces) => spaces,
    Err(_) => "",
};

pub(crate) fn span_line(out: &mut String, node: Node<'_>, len: usize, p: &Paint) {
    // Deep chains (a retry loop, a recursive agent) would make lines quadratic in size:
    // beyond MAX_INDENT levels, say the depth instead of indenting further.
    let depth = node.depth();
    if depth <= MAX_INDENT {
        out.push_str(&INDENT[..2 * depth]);
    } else {
        out.push_str(&INDENT[..2 * MAX_INDENT]);
        let _ = write!(out, "(depth {depth}) ");
    }
    let service = if blank(node.service()) {
        p.yellow(service_of(&node))
    } else {
        p.cyan(service_of(&node))
    };
    let operation = if blank(node.operation()) {
        p.yellow(operation_of(&node))
    } else {
        p.bold(operation_of(&node))
    };
    out.push_str(&service);
    out.push(' ');
    out.push_str(&operation);
    out.push_str(" span ");
    if p.on {
        out.push_str(&p.dim(&id_text(node.span_id(), len)));
    } else {
        node.span_id().push_prefix(out, len);
    }
    out.push_str(" parent=");
    match node.parent_span_id() {
        None => out.push('-'),
        Some(id) if node.parent_missing() => {
            out.push_str(&p.yellow(&format!("{} (missing)", id.prefix(len))));
        }
        Some(id) if node.in_cycle() => {
            out.push_str(&p.yellow(&format!("{} (loop)", id.prefix(len))))
        }
        Some(id) => id.push_prefix(out, len),
    }
    out.push(' ');
    match node.duration() {
        Some(d) => super::push_duration(out, d),
        None => out.push_str("latency=?"),
    }
    if let Some(q) = node.queue_time() {
        out.push_str(" queue=");
        super::push_duration(out, q);
    }
    let status = match node.status() {
        Status::Ok => p.green("ok"),
        Status::Error => p.red("error"),
        Status::Unset => Cow::Borrowed("unset"),
    };
    out.push_str(" status=");
    out.push_str(&status);
    if let Some(error) = node.error() {
        let _ = write!(out, " error={}", p.red(&format!("{error:?}")));
    }
    if let Some(attempt) = node.attempt().filter(|&a| a > 1) {
        let _ = write!(out, " attempt={attempt}");
    }
    if let Some(n) = node.batch_size() {
        let _ = write!(out, " batch={n}");
    }
    if node.links().len() > 0 {
        out.push_str(" links=");
        for (i, l) in node.links().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{}/{}",
                Prefix(l.trace_id(), 8),
                Prefix(l.span_id(), len)
            );
        }
    }
    if let Some(why) = node.context_rejected() {
        let _ = write!(out, " {}", p.yellow(&format!("context=rejected({why})")));
    } else if node.context_missing() {
        let _ = write!(out, " {}", p.yellow("context=missing"));
    } else if node.context_linked() {
        out.push_str(" context=linked");
    }
    out.push('\n');
}

/// An id shortened as the tree shows it, written without an intermediate string.
struct Prefix<'a>(Id<'a>, usize);

impl std::fmt::Display for Prefix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.write_prefix(f, self.1)
    }
}
