//! Numbers written in decimal without allocating, for code that runs where allocation is not
//! allowed: between `fork` (or `clone`) and `exec`, and in a keeper process's loop.

/// Writes `value` in decimal at the start of `out`, then a NUL; returns the number of digits.
///
/// `out` must hold the digits and the NUL: 11 bytes do for any `u32`.
pub(crate) fn write_decimal(out: &mut [u8], value: u32) -> usize {
    let mut digits = [0u8; 10];
    let mut len = 0;
    let mut rest = value;
    loop {
        digits[len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for (slot, digit) in out.iter_mut().zip(digits[..len].iter().rev()) {
        *slot = *digit;
    }
    out[len] = 0;
    len
}
