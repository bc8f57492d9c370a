//! The names and span names a thread used last, shared instead of made again for every
//! recorded span: a service sends to and consumes from a few destinations (streams,
//! consumers), so `messaging.destination.name` and `send <destination>` are nearly always
//! the ones the previous message had. A name not among the last few is made as before,
//! and takes the oldest one's place.

use std::cell::RefCell;
use std::sync::Arc;

use opentelemetry::StringValue;

/// How many names of each kind a thread keeps.
const KEPT: usize = 8;

/// A name (a destination, a stream, a consumer) as an attribute value, sharing one
/// allocation with the last spans that had it.
pub(crate) fn value(name: &str) -> StringValue {
    with_recent(
        |recent| recent.value(name),
        || Arc::<str>::from(name).into(),
    )
}

/// The span name `<operation> <destination>` (the operation alone if `temporary`), as
/// [`span_name`](super::span_name) makes it, shared; and whether it is written in JSON as
/// it is (checked once, when the name is made).
pub(crate) fn span(
    operation: &'static str,
    destination: &str,
    temporary: bool,
) -> (Arc<str>, bool) {
    with_recent(
        |recent| {
            recent.span(operation, destination, temporary, || {
                Arc::<str>::from(destination).into()
            })
        },
        || made_span(operation, destination, temporary),
    )
}

/// [`span`] of a destination the caller holds as a shared value (a kept name, a
/// subscription's subject): the name kept for it is then found by the value's address,
/// without comparing its text.
pub(crate) fn span_of(
    operation: &'static str,
    destination: &StringValue,
    temporary: bool,
) -> (Arc<str>, bool) {
    let text = destination.as_str();
    with_recent(
        |recent| recent.span(operation, text, temporary, || destination.clone()),
        || made_span(operation, text, temporary),
    )
}

/// A new span name and whether it needs no JSON escape.
fn made_span(operation: &'static str, destination: &str, temporary: bool) -> (Arc<str>, bool) {
    let name = super::span_name(operation, destination, temporary);
    let clean = crate::journal::is_json_clean(&name);
    (name.into(), clean)
}

fn with_recent<T>(kept: impl FnOnce(&mut Recent) -> T, make: impl FnOnce() -> T) -> T {
    RECENT
        .try_with(|recent| match recent.try_borrow_mut() {
            Ok(mut recent) => Some(kept(&mut recent)),
            Err(_) => None,
        })
        .ok()
        .flatten()
        .unwrap_or_else(make)
}

thread_local! {
    static RECENT: RefCell<Recent> = const { RefCell::new(Recent::new()) };
}

struct Recent {
    values: Ring<StringValue>,
    spans: Ring<KeptSpan>,
}

/// A span name and what it was made of.
struct KeptSpan {
    operation: &'static str,
    /// The destination (empty for a temporary one), shared with the caller's value when
    /// it gave one.
    destination: StringValue,
    temporary: bool,
    name: Arc<str>,
    /// `name` needs no JSON escape.
    clean: bool,
}

/// The last [`KEPT`] values, the oldest replaced first.
struct Ring<T> {
    items: Vec<T>,
    next: usize,
}

impl<T> Ring<T> {
    const fn new() -> Ring<T> {
        Ring {
            items: Vec::new(),
            next: 0,
        }
    }

    fn find_or(&mut self, matches: impl Fn(&T) -> bool, make: impl FnOnce() -> T) -> &T {
        if let Some(at) = self.items.iter().position(matches) {
            return &self.items[at];
        }
        let item = make();
        let at = if self.items.len() < KEPT {
            self.items.push(item);
            self.items.len() - 1
        } else {
            let at = self.next;
            self.next = (at + 1) % KEPT;
            self.items[at] = item;
            at
        };
        &self.items[at]
    }
}

/// Whether two names are the same text: the same address (a `&'static str`, a name the
/// caller keeps), else the same bytes.
#[inline]
fn same(kept: &str, name: &str) -> bool {
    kept.len() == name.len() && (std::ptr::eq(kept.as_ptr(), name.as_ptr()) || kept == name)
}

impl Recent {
    const fn new() -> Recent {
        Recent {
            values: Ring::new(),
            spans: Ring::new(),
        }
    }

    fn value(&mut self, name: &str) -> StringValue {
        self.values
            .find_or(
                |kept| same(kept.as_str(), name),
                || Arc::<str>::from(name).into(),
            )
            .clone()
    }

    /// The span name kept for `operation` on `destination`, or one made now, keeping
    /// `keep()` as its destination.
    fn span(
        &mut self,
        operation: &'static str,
        destination: &str,
        temporary: bool,
        keep: impl FnOnce() -> StringValue,
    ) -> (Arc<str>, bool) {
        let kept = self.spans.find_or(
            |kept| {
                kept.temporary == temporary
                    && same(kept.operation, operation)
                    && (temporary || same(kept.destination.as_str(), destination))
            },
            || {
                let (name, clean) = made_span(operation, destination, temporary);
                KeptSpan {
                    operation,
                    destination: if temporary {
                        StringValue::from("")
                    } else {
                        keep()
                    },
                    temporary,
                    name,
                    clean,
                }
            },
        );
        (kept.name.clone(), kept.clean)
    }
}

#[cfg(test)]
mod tests {
    use super::{span, span_of, value, KEPT};

    /// A span name asked for by a shared destination value is the one asked for by its
    /// text, and the other way round; another value of the same text, or a temporary
    /// destination, finds it too; another text does not.
    #[test]
    fn span_names_by_value_and_by_text_are_the_same() {
        let subject = value("jobs.by.value");
        let (by_value, clean) = span_of("process", &subject, false);
        assert_eq!(&*by_value, "process jobs.by.value");
        assert!(clean);
        assert!(std::sync::Arc::ptr_eq(
            &by_value,
            &span_of("process", &subject, false).0
        ));
        let (by_text, _) = span("process", "jobs.by.value", false);
        assert!(std::sync::Arc::ptr_eq(&by_value, &by_text));
        let owned = opentelemetry::StringValue::from(String::from("jobs.by.value"));
        assert!(std::sync::Arc::ptr_eq(
            &by_value,
            &span_of("process", &owned, false).0
        ));
        assert_eq!(
            &*span_of("process", &value("jobs.by.other"), false).0,
            "process jobs.by.other"
        );
        assert_eq!(&*span_of("send", &subject, false).0, "send jobs.by.value");
        assert_eq!(&*span_of("process", &subject, true).0, "process");

        let (first, _) = span("publish", "by.text.first", false);
        let later = value("by.text.first");
        assert!(std::sync::Arc::ptr_eq(
            &first,
            &span_of("publish", &later, false).0
        ));
        let (quoted, clean) = span_of("send", &value("q\"d"), false);
        assert_eq!(&*quoted, "send q\"d");
        assert!(!clean);
    }

    /// Names come back equal to what is asked for, shared while they are kept, and made
    /// afresh once more than [`KEPT`] others came since.
    #[test]
    fn names_are_shared_while_kept() {
        let a = value("orders");
        let b = value("orders");
        assert_eq!(a.as_str(), "orders");
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        assert_eq!(value("orders.eu").as_str(), "orders.eu");

        let (s, clean) = span("send", "orders", false);
        assert_eq!(&*s, "send orders");
        assert!(clean);
        assert!(std::sync::Arc::ptr_eq(&s, &span("send", "orders", false).0));
        assert_eq!(&*span("process", "orders", false).0, "process orders");
        assert_eq!(&*span("send", "orders", true).0, "send");
        assert_eq!(&*span("send", "inbox.1", true).0, "send");
        assert_eq!(&*span("publish", "orders", false).0, "publish orders");
        // A name JSON must escape says so, made and kept alike.
        for _ in 0..2 {
            let (quoted, clean) = span("send", "or\"ders", false);
            assert_eq!(&*quoted, "send or\"ders");
            assert!(!clean);
        }
        assert!(!span("send", "a\\b", false).1);
        assert!(!span("send", "a\u{7}", false).1);

        for i in 0..KEPT {
            let name = format!("other.{i}");
            assert_eq!(value(&name).as_str(), name);
        }
        let again = value("orders");
        assert_eq!(again.as_str(), "orders");
        assert!(!std::ptr::eq(a.as_str(), again.as_str()));
    }
}
