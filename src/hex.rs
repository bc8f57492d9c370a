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
