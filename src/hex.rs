//! Lowercase hex, a table lookup per byte or eight digits a word at a time: trace and span
//! ids in `traceparent` and in journal lines.

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

/// The sixteen lowercase hex digits of `v`, most significant first, into `out` (which is
/// sixteen bytes long), a word at a time.
#[inline]
pub(crate) fn put_u64(out: &mut [u8], v: u64) {
    out[..8].copy_from_slice(&spread((v >> 32) as u32).to_be_bytes());
    out[8..16].copy_from_slice(&spread(v as u32).to_be_bytes());
}

/// The thirty-two lowercase hex digits of `v` (a trace id), most significant first, into
/// `out` (thirty-two bytes long).
#[inline]
pub(crate) fn put_u128(out: &mut [u8], v: u128) {
    put_u64(&mut out[..16], (v >> 64) as u64);
    put_u64(&mut out[16..32], v as u64);
}

/// The eight nibbles of `x` as eight lowercase hex digits in one word, the first digit in
/// the highest byte.
#[inline]
fn spread(x: u32) -> u64 {
    let x = u64::from(x);
    // Nibble pairs, then nibbles, into bytes of their own: the first nibble into the
    // highest byte.
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    let x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose nibble is 10 or more (adding 6 carries into its bit 4).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    x + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10)
}

/// Eight lowercase hex digits as the integer they spell, a word at a time: each byte
/// must be `0`-`9` or `a`-`f`.
#[inline]
pub(crate) fn eight(bytes: &[u8]) -> Option<u32> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // The first digit in the highest byte.
    let x = u64::from_be_bytes(bytes.try_into().ok()?);
    // Every byte below 0x80 (so that adding to a byte cannot carry into the next).
    if x & HI != 0 {
        return None;
    }
    // High bit set in a byte when it is >= the bound (bytes < 0x80, bounds <= 0x80).
    let at_least = |bound: u8| (x + LO * u64::from(0x80 - bound)) & HI;
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    if digit | letter != HI {
        return None;
    }
    // '0'-'9' are 0x30-0x39, 'a'-'f' 0x61-0x66: the low nibble, plus 9 for letters.
    let nibbles = (x & (LO * 0x0f)) + (letter >> 7) * 9;
    // Pairs of digits into bytes, pairs of bytes into 16 bits, then into 32.
    let bytes = ((nibbles >> 4) | nibbles) & 0x00ff_00ff_00ff_00ff;
    let halves = ((bytes >> 8) | bytes) & 0x0000_ffff_0000_ffff;
    let v = (((halves >> 16) | halves) & 0xffff_ffff) as u32;
    Some(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sixteen_and_thirty_two_digits_as_format_writes_them() {
        let sixteen = |x: u64| {
            let mut out = [0u8; 16];
            super::put_u64(&mut out, x);
            assert_eq!(
                std::str::from_utf8(&out).expect("ascii"),
                format!("{x:016x}")
            );
        };
        let mut x: u64 = 0x0123_4567_89ab_cdef;
        for _ in 0..10_000 {
            sixteen(x);
            // A cheap walk over many values (xorshift).
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        for x in [
            0,
            u64::MAX,
            0xa,
            0xa0,
            0x9999_9999_9999_9999,
            0xffff_0000_ffff_0000,
        ] {
            sixteen(x);
        }
        for x in [
            0,
            u128::MAX,
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            1 << 64,
            0xa,
        ] {
            let mut out = [0u8; 32];
            super::put_u128(&mut out, x);
            assert_eq!(
                std::str::from_utf8(&out).expect("ascii"),
                format!("{x:032x}")
            );
        }
    }

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
