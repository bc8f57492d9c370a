//! Lowercase hex, a table lookup per byte: trace and span ids in `traceparent` and in
//! journal lines.

/// The sixteen lowercase hex digits.
pub(crate) const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Every byte's two lowercase hex digits.
static PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [DIGITS[b >> 4], DIGITS[b & 0x0f]];
        b += 1;
    }
    pairs
};

/// Each byte's value as a lowercase hex digit: `0`-`9` and `a`-`f` give 0 to 15, `A`-`F`
/// give [`UPPER`], anything else [`NOT_HEX`] (both have a high-nibble bit set, so OR-ing
/// the values of several digits and testing `& 0xf0` finds any byte that is not one).
pub(crate) static VALUES: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = UPPER;
        i += 1;
    }
    table
};

/// [`VALUES`] of an uppercase hex digit.
pub(crate) const UPPER: u8 = 0x40;

/// [`VALUES`] of a byte that is no hex digit.
pub(crate) const NOT_HEX: u8 = 0x80;

/// Lowercase hex of `bytes` into `out`, which is twice as long.
pub(crate) fn put(out: &mut [u8], bytes: &[u8]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(b)]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_byte_as_format_writes_it() {
        for b in 0..=255u8 {
            let mut out = [0u8; 2];
            super::put(&mut out, &[b]);
            assert_eq!(
                std::str::from_utf8(&out).expect("ascii"),
                format!("{b:02x}")
            );
        }
    }
}
