//! Kafka record headers as tracehop carriers.
//!
//! [`ReadCarrier`] is implemented for rdkafka's [`BorrowedHeaders`] (a consumed message)
//! and [`OwnedHeaders`] (a record being built or a detached message), and
//! [`WriteCarrier`] for [`OwnedHeaders`].
//!
//! Writing keeps every header already present, in order and byte for byte, null values
//! included: the context headers are appended. If a header with the name tracehop is
//! writing already exists (a `traceparent` the user copied from an incoming message, a
//! forwarded message's old context), its first occurrence is replaced in place and later
//! duplicates of that name are dropped, so the record never carries two contexts. Only
//! tracehop's own header names are ever replaced; rdkafka cannot remove a header, so a
//! replacement rebuilds the header list (the only case in which headers are copied).
//!
//! [`ReadCarrier::get`] returns the value of the *last* header with the requested name
//! (Kafka allows duplicates; this matches the Java client's `lastHeader`), or nothing when
//! that value is null. [`ReadCarrier::for_each`], which extraction uses, visits every
//! header in order, repeats included (so two `traceparent` headers are seen as two),
//! leaving out null values.

use std::panic::{catch_unwind, AssertUnwindSafe};

use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};

use crate::propagation::{HeaderValue, ReadCarrier, WriteCarrier};

/// Every header of `headers`, in order, or `None` if they cannot be read.
///
/// rdkafka panics when it reads a header name that is not UTF-8 (a protocol violation a
/// foreign producer can still commit). A message is never failed for its headers, so
/// such a header list is treated as unreadable instead.
pub(crate) fn entries<H: Headers>(headers: &H) -> Option<Vec<Header<'_, &[u8]>>> {
    catch_unwind(AssertUnwindSafe(|| headers.iter().collect())).ok()
}

fn last_value<'h, H: Headers>(headers: &'h H, key: &str) -> Option<&'h [u8]> {
    // As `entries`, without collecting them: a header list that cannot be read (even
    // after the match) reads as empty.
    catch_unwind(AssertUnwindSafe(|| {
        headers.iter().filter(|h| h.key == key).last()
    }))
    .ok()
    .flatten()
    .and_then(|h| h.value)
}

/// Whether `headers` has a header named `key` (`false` if they cannot be read).
fn contains<H: Headers>(headers: &H, key: &str) -> bool {
    catch_unwind(AssertUnwindSafe(|| headers.iter().any(|h| h.key == key))).unwrap_or(false)
}

/// Visit every non-null header of `headers` in order. A header list that cannot be read
/// (see [`entries`]) stops the visit where it became unreadable.
fn for_each<'h, H: Headers>(headers: &'h H, visit: &mut dyn FnMut(&'h str, HeaderValue<'h>)) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        for header in headers.iter() {
            if let Some(value) = header.value {
                visit(header.key, HeaderValue::Bytes(value));
            }
        }
    }));
}

fn keys<H: Headers>(headers: &H) -> Vec<&str> {
    entries(headers)
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.key)
        .collect()
}

/// Both of rdkafka's header types read the same way, through [`Headers`].
macro_rules! read_carrier {
    ($($headers:ty),*) => {$(
        impl ReadCarrier for $headers {
            fn get(&self, key: &str) -> Option<&[u8]> {
                last_value(self, key)
            }
            fn keys(&self) -> Vec<&str> {
                keys(self)
            }
            fn for_each<'a>(&'a self, visit: &mut dyn FnMut(&'a str, HeaderValue<'a>)) {
                for_each(self, visit);
            }
        }
    )*};
}

read_carrier!(BorrowedHeaders, OwnedHeaders);

impl WriteCarrier for OwnedHeaders {
    fn set(&mut self, key: &str, value: String) {
        if !contains(self, key) {
            // The common case: append, leaving the user's headers untouched.
            let headers = std::mem::take(self);
            *self = headers.insert(Header {
                key,
                value: Some(&value),
            });
            return;
        }
        *self = replace(self, &[(key, &value)]);
    }
}

/// `headers` with each `(key, value)` of `context` in place of the first header of that
/// name and later ones of the name dropped, every other header kept in order; names not
/// present are appended in `context` order. The same as setting them one by one.
fn replace<K: AsRef<str>, V: AsRef<str>>(
    headers: &OwnedHeaders,
    context: &[(K, V)],
) -> OwnedHeaders {
    let existing = entries(headers).unwrap_or_default();
    let mut rebuilt = OwnedHeaders::new_with_capacity(existing.len() + context.len());
    let mut written = vec![false; context.len()];
    for h in existing {
        match context.iter().position(|(k, _)| k.as_ref() == h.key) {
            None => rebuilt = rebuilt.insert(h),
            Some(i) if !written[i] => {
                written[i] = true;
                rebuilt = rebuilt.insert(Header {
                    key: context[i].0.as_ref(),
                    value: Some(context[i].1.as_ref()),
                });
            }
            Some(_) => {}
        }
    }
    for (i, (key, value)) in context.iter().enumerate() {
        if !written[i] {
            rebuilt = rebuilt.insert(Header {
                key: key.as_ref(),
                value: Some(value.as_ref()),
            });
        }
    }
    rebuilt
}

/// The context headers of one record, collected before they go into its `OwnedHeaders`
/// in one pass: no placeholder header list per header, no scan of the user's headers per
/// header, and a list of the right size when the record had none.
#[derive(Debug, Default)]
pub(crate) struct ContextHeaders {
    headers: Vec<(std::borrow::Cow<'static, str>, String)>,
}

impl WriteCarrier for ContextHeaders {
    fn set(&mut self, key: &str, value: String) {
        let key = match crate::propagation::known_header(key) {
            Some(name) => std::borrow::Cow::Borrowed(name),
            None => std::borrow::Cow::Owned(key.to_owned()),
        };
        match self.headers.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.headers.push((key, value)),
        }
    }

    fn readable(&self) -> Option<&dyn ReadCarrier> {
        Some(self)
    }
}

impl ReadCarrier for ContextHeaders {
    fn get(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_bytes())
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

impl ContextHeaders {
    /// `user`'s headers (kept as they are) with the context headers added, as
    /// [`WriteCarrier::set`] on `OwnedHeaders` would add them one by one.
    pub(crate) fn add_to(self, user: Option<OwnedHeaders>) -> OwnedHeaders {
        let context = &self.headers;
        match user {
            None => append(OwnedHeaders::new_with_capacity(context.len()), context),
            Some(user) if context.iter().any(|(k, _)| contains(&user, k)) => {
                replace(&user, context)
            }
            Some(user) => append(user, context),
        }
    }
}

fn append<K: AsRef<str>, V: AsRef<str>>(
    mut headers: OwnedHeaders,
    context: &[(K, V)],
) -> OwnedHeaders {
    for (key, value) in context {
        headers = headers.insert(Header {
            key: key.as_ref(),
            value: Some(value.as_ref()),
        });
    }
    headers
}

/// The headers of one message, read once: what the consumer wrapper hands the core.
///
/// Reading through rdkafka's [`Headers`] calls into librdkafka for every header; a
/// snapshot reads them once and answers every lookup from memory.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderSnapshot<'a> {
    entries: Vec<Header<'a, &'a [u8]>>,
}

impl<'a> HeaderSnapshot<'a> {
    pub(crate) fn of<H: Headers>(headers: Option<&'a H>) -> HeaderSnapshot<'a> {
        HeaderSnapshot {
            entries: headers.and_then(entries).unwrap_or_default(),
        }
    }
}

impl ReadCarrier for HeaderSnapshot<'_> {
    fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .rev()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
    }
    fn keys(&self) -> Vec<&str> {
        self.entries.iter().map(|h| h.key).collect()
    }
    fn for_each<'b>(&'b self, visit: &mut dyn FnMut(&'b str, HeaderValue<'b>)) {
        for header in &self.entries {
            if let Some(value) = header.value {
                visit(header.key, HeaderValue::Bytes(value));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::{SENT_AT, TRACEPARENT};

    fn all(h: &OwnedHeaders) -> Vec<(String, Option<Vec<u8>>)> {
        h.iter()
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect()
    }

    fn user_headers() -> OwnedHeaders {
        OwnedHeaders::new()
            .insert(Header {
                key: "b-first",
                value: Some(&[0u8, 159, 146, 150][..]),
            })
            .insert(Header {
                key: "nothing",
                value: None::<&[u8]>,
            })
            .insert(Header {
                key: "dup",
                value: Some("1"),
            })
            .insert(Header {
                key: "dup",
                value: Some("2"),
            })
            .insert(Header {
                key: "empty",
                value: Some(""),
            })
    }

    #[test]
    fn set_appends_and_keeps_user_headers_byte_for_byte() {
        let mut h = user_headers();
        let before = all(&h);
        h.set(TRACEPARENT, "00-x-y-01".to_owned());
        h.set(SENT_AT, "1".to_owned());
        let after = all(&h);
        assert_eq!(&after[..before.len()], &before[..]);
        assert_eq!(
            &after[before.len()..],
            &[
                (TRACEPARENT.to_owned(), Some(b"00-x-y-01".to_vec())),
                (SENT_AT.to_owned(), Some(b"1".to_vec())),
            ]
        );
    }

    #[test]
    fn set_replaces_an_existing_header_in_place_without_duplicates() {
        let mut h = OwnedHeaders::new()
            .insert(Header {
                key: "a",
                value: Some("1"),
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some("old"),
            })
            .insert(Header {
                key: "n",
                value: None::<&[u8]>,
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some("older"),
            });
        h.set(TRACEPARENT, "new".to_owned());
        assert_eq!(
            all(&h),
            vec![
                ("a".to_owned(), Some(b"1".to_vec())),
                (TRACEPARENT.to_owned(), Some(b"new".to_vec())),
                ("n".to_owned(), None),
            ]
        );
    }

    /// Collecting the context headers and adding them at once gives what setting them one
    /// by one gives, with and without user headers, replacing or not.
    #[test]
    fn context_headers_added_at_once_equal_setting_them_one_by_one() {
        fn with_old_context() -> OwnedHeaders {
            user_headers()
                .insert(Header {
                    key: SENT_AT,
                    value: Some("old"),
                })
                .insert(Header {
                    key: "z",
                    value: Some("last"),
                })
                .insert(Header {
                    key: SENT_AT,
                    value: Some("older"),
                })
        }
        let starts: [fn() -> Option<OwnedHeaders>; 3] = [
            || None,
            || Some(user_headers()),
            || Some(with_old_context()),
        ];
        for start in starts {
            let mut one_by_one = start().unwrap_or_default();
            let mut collected = ContextHeaders::default();
            for (k, v) in [
                (TRACEPARENT, "00-a-b-01"),
                (SENT_AT, "42"),
                ("custom-key", "c"),
            ] {
                one_by_one.set(k, v.to_owned());
                collected.set(k, v.to_owned());
            }
            assert_eq!(all(&collected.add_to(start())), all(&one_by_one));
        }
    }

    #[test]
    fn user_duplicates_of_other_names_are_kept() {
        let mut h = user_headers();
        h.set(TRACEPARENT, "v".to_owned());
        let dups: Vec<_> = h.iter().filter(|x| x.key == "dup").collect();
        assert_eq!(dups.len(), 2);
    }

    #[test]
    fn get_returns_the_last_value_and_null_is_absent() {
        let h = user_headers();
        assert_eq!(ReadCarrier::get(&h, "dup"), Some(&b"2"[..]));
        assert_eq!(ReadCarrier::get(&h, "nothing"), None);
        assert_eq!(ReadCarrier::get(&h, "empty"), Some(&b""[..]));
        assert_eq!(ReadCarrier::get(&h, "missing"), None);
        assert_eq!(
            ReadCarrier::keys(&h),
            vec!["b-first", "nothing", "dup", "dup", "empty"]
        );
        let snap = HeaderSnapshot::of(Some(&h));
        assert_eq!(snap.get("dup"), Some(&b"2"[..]));
        assert_eq!(snap.get("nothing"), None);
        assert_eq!(snap.keys(), ReadCarrier::keys(&h));
        assert_eq!(HeaderSnapshot::of::<OwnedHeaders>(None).keys().len(), 0);
    }

    /// Every non-null header, in order, repeats included: through the headers and
    /// through a snapshot alike.
    #[test]
    fn for_each_visits_every_value_in_order() {
        let h = user_headers();
        let mut seen = Vec::new();
        ReadCarrier::for_each(&h, &mut |k, v| seen.push((k.to_owned(), v)));
        let want = vec![
            (
                "b-first".to_owned(),
                HeaderValue::Bytes(&[0u8, 159, 146, 150][..]),
            ),
            ("dup".to_owned(), HeaderValue::Bytes(&b"1"[..])),
            ("dup".to_owned(), HeaderValue::Bytes(&b"2"[..])),
            ("empty".to_owned(), HeaderValue::Bytes(&b""[..])),
        ];
        assert_eq!(seen, want);
        let snap = HeaderSnapshot::of(Some(&h));
        let mut seen = Vec::new();
        snap.for_each(&mut |k, v| seen.push((k.to_owned(), v)));
        assert_eq!(seen, want);
    }
}
