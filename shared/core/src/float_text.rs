//! JSON text of f32 tensor data: nine significant digits, their arithmetic done 64 values at a
//! time in straight-line code the compiler vectorizes.
//!
//! Nine digits, not the shortest text: an f32 cut after its ninth significant digit (the f64
//! arithmetic below may leave that digit one high) errs by less than 10^-8 of the value, and any
//! decimal within half a unit in the last place (at least 2^-25, about 2.98 × 10^-8, of the value)
//! reads back as the same f32, whether the reader parses straight to f32 or to f64 first. So every
//! f32 reads back exactly (checked for all 2^32 bit patterns, both ways:
//! `every_f32_reads_back_exactly`), trailing zeros are dropped (0.5, 100.0), but 0.1f32 reads
//! 0.100000001. The shortest digits (Ryū) took 2.5× as long, 16-17 ns per float against 6.4-6.7
//! with AVX2: about 5% of a batch-1 MiniLM request, all that JSON added to it (README, Performance).

/// Values per pass of the vectorized arithmetic.
const BLOCK: usize = 64;

/// The longest text of one value, e.g. `-0.0000729116727`.
pub(crate) const MOST_CHARS: usize = 16;

/// Bytes a value's word-sized stores may touch from where its text starts (past the text itself,
/// where the next value's text or spare capacity lies).
const STORE_SPAN: usize = 20;

/// 10^(8-e) for the decimal exponents e of f32 magnitudes: -45 (the smallest subnormal) to 38.
static SCALES: [f64; 84] = scales();

const fn scales() -> [f64; 84] {
    let mut scales = [0.0; 84];
    let mut i = 0;
    while i < scales.len() {
        let power = 8 - (i as i32 - 45);
        let mut magnitude = 1.0f64;
        let mut n = 0;
        while n < power.unsigned_abs() {
            magnitude *= 10.0; // rounding errs ~1e-15 at most, far inside the margin above
            n += 1;
        }
        scales[i] = if power >= 0 { magnitude } else { 1.0 / magnitude };
        i += 1;
    }
    scales
}

/// Appends `values` as comma-separated JSON numbers (`null` where not finite).
pub(crate) fn write_f32s(out: &mut Vec<u8>, values: impl ExactSizeIterator<Item = f32>) {
    out.reserve(values.len() * (MOST_CHARS + 1) + STORE_SPAN);
    let (capacity, buffer) = (out.capacity(), out.as_mut_ptr());
    let mut written = out.len();
    let (mut block, mut digits) = ([0f32; BLOCK], Digits::default());
    let mut values = values.fuse();
    for start in (0..).step_by(BLOCK) {
        let filled = block.iter_mut().zip(&mut values).map(|(slot, value)| *slot = value).count();
        digits.compute(&block);
        for (i, &value) in block[..filled].iter().enumerate() {
            // Never taken (the reservation covers every value); it keeps the stores below in
            // bounds without trusting the iterator's length.
            assert!(written + 1 + STORE_SPAN <= capacity, "JSON float text outgrew its reservation");
            // SAFETY: a comma and a value's stores stay within 1 + STORE_SPAN bytes of `written`,
            // which the assertion keeps within the capacity.
            unsafe {
                if start + i > 0 {
                    *buffer.add(written) = b',';
                    written += 1;
                }
                written += digits.write(i, value, buffer.add(written));
            }
        }
        if filled < BLOCK {
            break;
        }
    }
    // SAFETY: every byte up to `written` was initialized above, within the capacity.
    unsafe { out.set_len(written) };
}

/// A block's nine significant digits and decimal exponent per value.
struct Digits {
    /// The first digit, 1-9.
    first: [u8; BLOCK],
    /// The eight after it, one per byte (0-9, not ASCII), the earliest in the lowest byte.
    rest: [u64; BLOCK],
    /// e in d.dddddddd × 10^e.
    exponent: [i32; BLOCK],
}

impl Default for Digits {
    fn default() -> Self {
        Digits { first: [0; BLOCK], rest: [0; BLOCK], exponent: [0; BLOCK] }
    }
}

impl Digits {
    /// The digits of every value in `block`; those of zero and non-finite values are not used.
    fn compute(&mut self, block: &[f32; BLOCK]) {
        // x86-64's baseline has SSE2, two f64s to a vector; nearly every x86 server has AVX2,
        // four (and 16-bit integer multiplies on 16 at once), which takes a fifth off a value.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: this CPU has AVX2.
            return unsafe { self.compute_avx2(block) };
        }
        self.compute_anywhere(block)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn compute_avx2(&mut self, block: &[f32; BLOCK]) {
        self.compute_anywhere(block)
    }

    /// Each loop below is branch-free so that it vectorizes (the table lookups stay scalar).
    #[inline(always)]
    fn compute_anywhere(&mut self, block: &[f32; BLOCK]) {
        let (mut magnitude, mut scale) = ([0f64; BLOCK], [0f64; BLOCK]);
        for i in 0..BLOCK {
            let value = block[i];
            magnitude[i] = if value.is_finite() { f64::from(value.abs()) } else { 0.0 };
            // The binary exponent as an f64 (so subnormal f32s have their true one), and the
            // decimal one below it: floor(b × log10 2), exact over this range.
            let binary = ((magnitude[i].to_bits() >> 52) as i32 - 1023).clamp(-149, 127);
            self.exponent[i] = (binary * 78_913) >> 18;
            scale[i] = SCALES[(self.exponent[i] + 45) as usize];
        }
        // Groups of four digits: the first four of the eight after the first digit, then the last.
        let mut groups = [0u16; 2 * BLOCK];
        for i in 0..BLOCK {
            // In [10^8, 2 × 10^9): nine digits, or ten when the decimal exponent is one more.
            let scaled = magnitude[i] * scale[i];
            let ten = scaled >= 1e9;
            self.exponent[i] += ten as i32;
            // Truncated through i32, not with f64::floor, which x86-64's baseline (SSE2) calls as
            // a function. Every operand is finite, non-negative and under 2^31.
            // SAFETY (each to_int_unchecked): the operand is finite and within i32.
            let nine = unsafe { (if ten { scaled * 0.1 } else { scaled }).to_int_unchecked::<i32>() } as f64;
            let first = unsafe { (nine * 1e-8).to_int_unchecked::<i32>() };
            let rest = nine - f64::from(first) * 1e8;
            let high = unsafe { (rest * 1e-4).to_int_unchecked::<i32>() };
            self.first[i] = first as u8;
            groups[i] = high as u16;
            groups[BLOCK + i] = unsafe { (rest - f64::from(high) * 1e4).to_int_unchecked::<i32>() } as u16;
        }
        // Each group as two digit pairs, a pair as (tens, ones) in one u16.
        let (mut leading, mut trailing) = ([0u16; 2 * BLOCK], [0u16; 2 * BLOCK]);
        for j in 0..2 * BLOCK {
            let group = groups[j];
            let (a, b) = (group / 100, group % 100);
            let (a_tens, b_tens) = ((a * 103) >> 10, (b * 103) >> 10); // x / 10 for x < 100
            leading[j] = a_tens | (a - a_tens * 10) << 8;
            trailing[j] = b_tens | (b - b_tens * 10) << 8;
        }
        for i in 0..BLOCK {
            self.rest[i] = u64::from(leading[i])
                | u64::from(trailing[i]) << 16
                | u64::from(leading[BLOCK + i]) << 32
                | u64::from(trailing[BLOCK + i]) << 48;
        }
    }

    /// Writes value `i` of the block (`value`) and returns its length: `null` if not finite,
    /// d.ddd for 1 to 10^9, 0.000ddd down to 10^-5, d.ddde-7 beyond.
    ///
    /// # Safety
    /// `out` must have room for [`STORE_SPAN`] bytes.
    unsafe fn write(&self, i: usize, value: f32, out: *mut u8) -> usize {
        if !value.is_finite() {
            // SAFETY: within STORE_SPAN.
            unsafe { out.cast::<[u8; 4]>().write_unaligned(*b"null") };
            return 4;
        }
        // The sign, kept or overwritten by the digits.
        // SAFETY (this and each `store` and `put` below): no more than STORE_SPAN bytes from `out`.
        unsafe { *out = b'-' };
        let sign = value.is_sign_negative() as usize;
        let text = unsafe { out.add(sign) };
        let store = |at: usize, word: u64| unsafe { text.add(at).cast::<u64>().write_unaligned(word.to_le()) };
        let put = |at: usize, byte: u8| unsafe { *text.add(at) = byte };
        if value == 0.0 {
            store(0, u64::from_le_bytes(*b"0.0\0\0\0\0\0"));
            return sign + 3;
        }
        let (first, rest, exponent) = (b'0' + self.first[i], self.rest[i], self.exponent[i]);
        // Digits after the first, trailing zeros dropped: the zero bytes at the top of `rest`.
        let kept = 8 - (rest.leading_zeros() / 8) as usize;
        let rest = rest | u64::from_le_bytes(*b"00000000");
        sign + match exponent {
            -5..=-1 => {
                // 0.000ddd: "0." and the zeros, then the digits over the zeros not needed.
                store(0, u64::from_le_bytes(*b"0.000000"));
                let at = (1 - exponent) as usize;
                put(at, first);
                store(at + 1, rest);
                at + 1 + kept
            }
            0..=8 => {
                // dd.ddd: the digits, then the point and the digits after it over them.
                let point = exponent as usize + 1;
                put(0, first);
                store(1, rest);
                put(point, b'.');
                // At least one digit after the point, a zero where the digits run out.
                store(point + 1, if point == 9 { u64::from(b'0') } else { rest >> (8 * (point - 1)) });
                point + 1 + kept.saturating_sub(point - 1).max(1)
            }
            _ => {
                put(0, first);
                put(1, b'.');
                store(2, rest);
                let mut len = if kept == 0 { 1 } else { 2 + kept };
                put(len, b'e');
                len += 1;
                if exponent < 0 {
                    put(len, b'-');
                    len += 1;
                }
                let magnitude = exponent.unsigned_abs() as u8;
                if magnitude >= 10 {
                    put(len, b'0' + magnitude / 10);
                    len += 1;
                }
                put(len, b'0' + magnitude % 10);
                len + 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(values: &[f32]) -> String {
        let mut out = Vec::new();
        write_f32s(&mut out, values.iter().copied());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_written_with_nine_digits_and_no_trailing_zeros() {
        let cases: [(f32, &str); 22] = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (0.5, "0.5"),
            (0.1, "0.100000001"),
            (-0.3, "-0.300000011"),
            (100.0, "100.0"),
            (123_456_790.0, "123456792.0"),
            (999_999_940.0, "999999936.0"),
            (1e9, "1e9"),
            (3.5e12, "3.49999988e12"),
            (f32::MAX, "3.40282346e38"),
            (f32::MIN_POSITIVE, "1.17549435e-38"),
            (-f32::MIN_POSITIVE, "-1.17549435e-38"),
            (1e-45, "1.40129846e-45"),
            (0.000_01, "9.99999974e-6"),
            (0.000_1, "0.0000999999974"),
            (1e-6, "9.99999997e-7"),
            (0.007_25, "0.00724999979"),
            (12.5, "12.5"),
            (0.999_999_94, "0.99999994"),
        ];
        for (value, expected) in cases {
            assert_eq!(text(&[value]), expected, "{value:e}");
        }
        assert_eq!(text(&[f32::NAN, 1.5, f32::NEG_INFINITY]), "null,1.5,null");
        assert_eq!(text(&[]), "");
    }

    /// A spread of bit patterns over every exponent, in blocks of every fill: each reads back as
    /// the same f32, straight and through f64, is at most MOST_CHARS long, and is a JSON number.
    #[test]
    fn values_read_back_exactly_and_are_json_numbers() {
        let mut state = 0x2545_f491_u32;
        let values: Vec<f32> = (0..50_000)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                f32::from_bits(state)
            })
            .filter(|v| v.is_finite())
            .collect();
        let longest = text(&values).split(',').map(str::len).max();
        assert_eq!(longest, Some(MOST_CHARS), "the bound is reached, so it is not loose");
        for count in [1, 63, 64, 65, 129, values.len()] {
            let text = text(&values[..count]);
            let parsed: Vec<f32> = serde_json::from_str(&format!("[{text}]")).unwrap();
            assert_eq!(parsed.len(), count);
            for ((word, value), back) in text.split(',').zip(&values).zip(parsed) {
                assert!(word.len() <= MOST_CHARS, "{word}");
                assert_eq!(back.to_bits(), value.to_bits(), "{word} for {value:e}");
                assert_eq!(word.parse::<f32>().unwrap().to_bits(), value.to_bits(), "{word}");
                assert_eq!((word.parse::<f64>().unwrap() as f32).to_bits(), value.to_bits(), "{word}");
            }
        }
    }

    /// Every one of the 2^32 bit patterns, on every CPU: several minutes, so run on demand
    /// (`cargo test -p lmaas-core --release every_f32 -- --ignored`).
    #[test]
    #[ignore]
    fn every_f32_reads_back_exactly() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let span = (1u64 << 32) / threads;
        let failures: u64 = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        let (mut failures, mut out) = (0u64, Vec::new());
                        let end = if t + 1 == threads { 1 << 32 } else { (t + 1) * span };
                        for start in (t * span..end).step_by(4096) {
                            let values: Vec<f32> =
                                (start..(start + 4096).min(end)).map(|b| f32::from_bits(b as u32)).collect();
                            out.clear();
                            write_f32s(&mut out, values.iter().copied());
                            let text = std::str::from_utf8(&out).unwrap();
                            for (word, value) in text.split(',').zip(&values) {
                                let exact = if value.is_finite() {
                                    word.len() <= MOST_CHARS
                                        && word.parse::<f32>().is_ok_and(|v| v.to_bits() == value.to_bits())
                                        && word.parse::<f64>().is_ok_and(|v| (v as f32).to_bits() == value.to_bits())
                                } else {
                                    word == "null"
                                };
                                if !exact {
                                    failures += 1;
                                    eprintln!("{:#010x}: {word}", value.to_bits());
                                }
                            }
                        }
                        failures
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(failures, 0);
    }
}
