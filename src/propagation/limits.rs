//! The W3C size limits for `tracestate` and `baggage`, enforced by dropping whole members.
//!
//! Oversized context must never fail a message, and must not make the SDK throw away the
//! whole header either (its baggage propagator drops a header over 8192 bytes entirely).
//! These functions return the header unchanged when it is within limits (no allocation),
//! and otherwise a copy that keeps as many leading members as fit.

use std::borrow::Cow;

/// At most this many `tracestate` list members are kept.
pub const TRACESTATE_MAX_MEMBERS: usize = 32;
/// At most this many characters of `tracestate` are kept.
pub const TRACESTATE_MAX_LEN: usize = 512;
/// Members longer than this are dropped first when `tracestate` must be shortened.
const TRACESTATE_LONG_MEMBER: usize = 128;
/// At most this many `baggage` list members are kept.
pub const BAGGAGE_MAX_MEMBERS: usize = 64;
/// At most this many bytes of `baggage` are kept.
pub const BAGGAGE_MAX_LEN: usize = 8192;

/// Limit a `tracestate` value to 32 members and 512 characters.
///
/// Per the W3C spec, when it must be shortened, members longer than 128 characters go
/// first, then members from the end. Empty members are dropped.
pub fn limit_tracestate(value: &str) -> Cow<'_, str> {
    let within =
        value.len() <= TRACESTATE_MAX_LEN && members_at_most(value, TRACESTATE_MAX_MEMBERS);
    if within {
        return Cow::Borrowed(value);
    }
    let members: Vec<&str> = value
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .collect();
    let mut kept: Vec<&str> = Vec::with_capacity(TRACESTATE_MAX_MEMBERS);
    let mut len = 0;
    // First pass drops long members outright; then keep from the front while it fits.
    for m in members.iter().filter(|m| m.len() <= TRACESTATE_LONG_MEMBER) {
        let add = m.len() + usize::from(!kept.is_empty());
        if kept.len() == TRACESTATE_MAX_MEMBERS || len + add > TRACESTATE_MAX_LEN {
            break;
        }
        kept.push(m);
        len += add;
    }
    Cow::Owned(kept.join(","))
}

/// Limit a `baggage` value to 64 members and 8192 bytes, keeping leading members.
pub fn limit_baggage(value: &str) -> Cow<'_, str> {
    let within = value.len() <= BAGGAGE_MAX_LEN && members_at_most(value, BAGGAGE_MAX_MEMBERS);
    if within {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len().min(BAGGAGE_MAX_LEN));
    let members = value
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .take(BAGGAGE_MAX_MEMBERS);
    for m in members {
        let add = m.len() + usize::from(!out.is_empty());
        if out.len() + add > BAGGAGE_MAX_LEN {
            // A later, shorter member might still fit, but the sender's order is the only
            // priority we know: keep a prefix of whole members.
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(m);
    }
    Cow::Owned(out)
}

/// Whether `value` has at most `max` non-blank list members. A member takes at least one
/// byte and a comma, so a short header cannot have too many; counting commas is enough
/// for any other header short of the limit, which is nearly every header.
fn members_at_most(value: &str, max: usize) -> bool {
    if value.len() < 2 * max {
        return true;
    }
    let commas = value.bytes().filter(|b| *b == b',').count();
    commas < max || value.split(',').filter(|m| !is_blank(m)).count() <= max
}

fn is_blank(member: &str) -> bool {
    member.trim_matches([' ', '\t']).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_borrowed() {
        assert!(matches!(
            limit_tracestate("a=1,b=2"),
            Cow::Borrowed("a=1,b=2")
        ));
        assert!(matches!(limit_baggage("k=v"), Cow::Borrowed("k=v")));
    }

    #[test]
    fn blank_members_do_not_count_towards_the_limit() {
        let sparse = format!("a=1{}b=2", ",".repeat(100));
        assert!(matches!(limit_baggage(&sparse), Cow::Borrowed(_)));
        let sparse = format!("a=1{}b=2", ", ".repeat(40));
        assert!(matches!(limit_tracestate(&sparse), Cow::Borrowed(_)));
    }

    #[test]
    fn tracestate_keeps_32_members() {
        let v: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        let joined = v.join(",");
        let out = limit_tracestate(&joined);
        let members: Vec<&str> = out.split(',').collect();
        assert_eq!(members.len(), 32);
        assert_eq!(members[0], "k0=v");
        assert_eq!(members[31], "k31=v");
    }

    #[test]
    fn tracestate_drops_long_members_first_and_fits_512() {
        let long = format!("big={}", "x".repeat(200));
        let mut v = vec![long.clone()];
        v.extend((0..20).map(|i| format!("key{i}={}", "y".repeat(20))));
        let joined = v.join(",");
        let out = limit_tracestate(&joined);
        assert!(out.len() <= 512, "{}", out.len());
        assert!(!out.contains("big="));
        assert!(out.starts_with("key0="));
        assert!(out.split(',').all(|m| m.contains('=')));
    }

    #[test]
    fn baggage_keeps_64_members_and_8192_bytes() {
        let v: Vec<String> = (0..100).map(|i| format!("k{i}=v")).collect();
        let joined = v.join(",");
        let out = limit_baggage(&joined);
        assert_eq!(out.split(',').count(), 64);
        let big: Vec<String> = (0..10)
            .map(|i| format!("k{i}={}", "z".repeat(1000)))
            .collect();
        let joined = big.join(",");
        let out = limit_baggage(&joined);
        assert!(out.len() <= 8192);
        assert_eq!(out.split(',').count(), 8);
        assert!(out.split(',').all(|m| m.len() == 1003));
    }
}
