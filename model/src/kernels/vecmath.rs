//! Vectorised element-wise math for the CPU kernels: `exp`, QuickGELU and its
//! derivative, and a softmax row.
//!
//! No crate of this build's dependency tree has a vectorised `exp` (the CPU
//! backend's own `exp` and `sigmoid` call the scalar `f32::exp` per element),
//! so [`exp`] is written here: Cephes' `expf` (range reduction by `ln 2` in
//! two parts, a degree-6 polynomial, the exponent set through its bits),
//! branch-free so that the compiler vectorises the loops that call it. Its
//! accuracy is tested against `f64::exp` over the whole `f32` range
//! (`exp_is_within_two_ulp_of_f64`): at most 2 ulp (relative error ≤ 2.4e-7).
//!
//! Every loop is compiled three times, for AVX-512, AVX2 + FMA and the
//! baseline, and the widest one the CPU has is chosen at run time
//! ([`level`]), so one binary runs on AVX2-only and AVX-512 machines alike;
//! the three give bit-identical results (`every_level_gives_the_same_bits`).

/// Below this, `exp(x)` is under the smallest normal `f32` and is returned as 0.
const EXP_LO: f32 = -87.336_55;
/// Above this, `exp(x)` saturates at `exp(EXP_HI)` ≈ 2.4e38 (`f32::exp`
/// overflows to infinity from 88.72): no caller here feeds it such values
/// except as a sigmoid's denominator, where both give 0 within 1e-38.
const EXP_HI: f32 = 88.376_26;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n · LN2_HI` is exact for |n| ≤ 128.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// QuickGELU's constant: `x · σ(1.702 x)`.
pub const QUICK_GELU_ALPHA: f32 = 1.702;

/// `e^x` in f32, branch-free (see the module's documentation for accuracy).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // max/min (not clamp) so that NaN becomes a number here: its result is
    // replaced by NaN at the end; no float-to-int conversion (Rust's
    // saturating `as` does not vectorise).
    #[allow(clippy::manual_clamp)]
    let xc = x.max(EXP_LO).min(EXP_HI);
    let n = (xc * LOG2E + 0.5).floor();
    let r = n.mul_add(-LN2_HI, xc);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5); // Cephes' 5.0000001e-1, which is 0.5 in f32
    let p = (p * r).mul_add(r, r) + 1.0;
    // 2^n through the exponent bits, n in [-126, 127]: adding 1.5·2^23 puts
    // n in the low mantissa bits (two's complement), and the shift drops
    // the rest.
    let magic = (n + 12_582_912.0).to_bits();
    let scale = f32::from_bits(magic.wrapping_add(127) << 23);
    let y = p * scale;
    // Below the range: 0 (also for -inf); NaN stays NaN.
    if x < EXP_LO {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// QuickGELU of one value: `x · σ(1.702 x) = x / (1 + e^(-1.702 x))`.
#[inline(always)]
fn quick_gelu1(x: f32) -> f32 {
    x / (1.0 + exp(-QUICK_GELU_ALPHA * x))
}

/// The gradient through QuickGELU: `g · (s + 1.702 · x · s · (1 − s))`, `s = σ(1.702 x)`.
#[inline(always)]
fn quick_gelu_grad1(x: f32, g: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-QUICK_GELU_ALPHA * x));
    g * (s + QUICK_GELU_ALPHA * x * s * (1.0 - s))
}

/// Lanes of the accumulators below: independent partial results that the
/// compiler keeps in one vector register (a sequential sum cannot be vectorised).
const LANES: usize = 16;

/// The largest of `v` (`-inf` if empty).
#[inline(always)]
fn max_of(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let m = acc
        .iter()
        .fold(f32::NEG_INFINITY, |m, &a| if a > m { a } else { m });
    chunks
        .remainder()
        .iter()
        .fold(m, |m, &x| if x > m { x } else { m })
}

/// `Σ a·b`.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let s: f32 = acc.iter().sum();
    s + ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum::<f32>()
}

/// Softmax of one row in place: `e^(x − max) / Σ`. `valid` is how many leading
/// entries take part (the causal mask); the rest are set to 0.
#[inline(always)]
fn softmax_row1(row: &mut [f32], valid: usize) {
    let (head, tail) = row.split_at_mut(valid);
    let max = max_of(head);
    let mut acc = [0.0f32; LANES];
    let mut chunks = head.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            *v = exp(*v - max);
            *a += *v;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in head.iter_mut() {
        *v *= inv;
    }
    tail.fill(0.0);
}

/// The gradient through a softmax row: `p · (g − Σ p·g)`, written over `g`.
#[inline(always)]
fn softmax_grad_row1(p: &[f32], g: &mut [f32]) {
    let d = dot(p, g);
    for (g, p) in g.iter_mut().zip(p) {
        *g = p * (*g - d);
    }
}

/// The instruction sets the loops below are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// AVX-512 (F and VL), with AVX2 and FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// The target's baseline (SSE2 on x86-64; NEON on aarch64, where LLVM
    /// vectorises these loops without run-time selection).
    Baseline,
}

impl Level {
    /// Whether this CPU can run code compiled for `self`.
    pub fn available(self) -> bool {
        match self {
            Level::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.available()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The widest level this CPU has, or the one `MMRL_CPU_SIMD=avx512|avx2|baseline`
/// asks for when the CPU has it (to measure an AVX2-only machine on an AVX-512
/// one). Decided once.
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let asked = match std::env::var("MMRL_CPU_SIMD").as_deref() {
            Ok("avx512") => Some(Level::Avx512),
            Ok("avx2") => Some(Level::Avx2),
            Ok("baseline") => Some(Level::Baseline),
            _ => None,
        };
        asked.filter(|l| l.available()).unwrap_or_else(|| {
            [Level::Avx512, Level::Avx2, Level::Baseline]
                .into_iter()
                .find(|l| l.available())
                .unwrap_or(Level::Baseline)
        })
    })
}

/// Defines `pub fn $name(args)`, which runs `$body` compiled for [`level`],
/// and `pub fn ${name}_at(level, args)` for a given [`Level`] (which must be
/// available).
macro_rules! dispatch {
    ($(#[$doc:meta])* pub fn $name:ident / $name_at:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            $name_at(level(), $($arg),*)
        }

        /// As the function without `_at`, compiled for `level`.
        pub fn $name_at(level: Level, $($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            assert!(level.available(), "this CPU cannot run {level:?} code");
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                match level {
                    // SAFETY: the CPU has the features (checked above).
                    Level::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}

dispatch! {
    /// `v[i] ← e^(v[i])`.
    pub fn exp_inplace / exp_inplace_at(v: &mut [f32]) {
        for x in v.iter_mut() {
            *x = exp(*x);
        }
    }
}

dispatch! {
    /// `v[i] ← QuickGELU(v[i])`.
    pub fn quick_gelu_inplace / quick_gelu_inplace_at(v: &mut [f32]) {
        for x in v.iter_mut() {
            *x = quick_gelu1(*x);
        }
    }
}

dispatch! {
    /// `out[i] = QuickGELU(x[i])`.
    pub fn quick_gelu_to / quick_gelu_to_at(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = quick_gelu1(v);
        }
    }
}

dispatch! {
    /// `g[i] ← g[i] · QuickGELU'(x[i])`.
    pub fn quick_gelu_grad_slice / quick_gelu_grad_slice_at(x: &[f32], g: &mut [f32]) {
        for (g, &v) in g.iter_mut().zip(x) {
            *g = quick_gelu_grad1(v, *g);
        }
    }
}

dispatch! {
    /// Softmax of each `row_len`-long row of `rows`, in place; with `causal`,
    /// row `i` (counted from `first_row`, modulo `row_len`) keeps only its
    /// first `i + 1` entries (the others become 0).
    pub fn softmax_rows / softmax_rows_at(rows: &mut [f32], row_len: usize, first_row: usize, causal: bool) {
        for (i, row) in rows.chunks_exact_mut(row_len).enumerate() {
            let valid = if causal { ((first_row + i) % row_len) + 1 } else { row_len };
            softmax_row1(row, valid);
        }
    }
}

dispatch! {
    /// `g ← p · (g − Σ p·g)` for each `row_len`-long row.
    pub fn softmax_grad_rows / softmax_grad_rows_at(p: &[f32], g: &mut [f32], row_len: usize) {
        for (p, g) in p.chunks_exact(row_len).zip(g.chunks_exact_mut(row_len)) {
            softmax_grad_row1(p, g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite positive f32.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        // Every 97th f32 bit pattern between EXP_LO and EXP_HI (about 22
        // million values, both signs, every binade), through the dispatched
        // slice path (the vector code) and the scalar one.
        let xs: Vec<f32> = (0u32..=u32::MAX)
            .step_by(97)
            .map(f32::from_bits)
            .filter(|x| x.is_finite() && *x > EXP_LO && *x < EXP_HI)
            .collect();
        assert!(xs.len() > 20_000_000, "{}", xs.len());
        let mut out = xs.clone();
        exp_inplace(&mut out);
        let mut worst = (0, 0.0f32);
        for (&x, &y) in xs.iter().zip(&out) {
            let want = (x as f64).exp() as f32;
            assert_eq!(
                y.to_bits(),
                exp(x).to_bits(),
                "vector and scalar differ at {x}"
            );
            let u = if want == 0.0 || want.is_subnormal() {
                0
            } else {
                ulps(y, want)
            };
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(
            worst.0 <= 2,
            "exp is {} ulp off at x = {}",
            worst.0,
            worst.1
        );
    }

    #[test]
    fn every_level_gives_the_same_bits() {
        let xs: Vec<f32> = (0..10_007)
            .map(|i| (i as f32 * 0.7919).sin() * 40.0)
            .collect();
        let levels: Vec<Level> = [Level::Avx512, Level::Avx2, Level::Baseline]
            .into_iter()
            .filter(|l| l.available())
            .collect();
        let run = |level| {
            let mut e = xs.clone();
            exp_inplace_at(level, &mut e);
            let mut q = xs.clone();
            quick_gelu_inplace_at(level, &mut q);
            let mut q2 = vec![0.0; xs.len()];
            quick_gelu_to_at(level, &xs, &mut q2);
            assert_eq!(q, q2);
            let mut g = vec![0.5; xs.len()];
            quick_gelu_grad_slice_at(level, &xs, &mut g);
            let mut p = xs[..10_000].to_vec();
            softmax_rows_at(level, &mut p, 100, 0, true);
            let mut pg = xs[..10_000].to_vec();
            softmax_grad_rows_at(level, &p, &mut pg, 100);
            [e, q, g, p, pg].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
        };
        let want = run(Level::Baseline);
        for level in levels {
            assert_eq!(run(level), want, "{level:?} differs from the baseline");
        }
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1000.0) > 2.3e38);
        assert!(ulps(exp(1.0), std::f32::consts::E) <= 1);
    }

    #[test]
    fn quick_gelu_and_its_gradient_match_f64() {
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.01).collect();
        let mut y = xs.clone();
        quick_gelu_inplace(&mut y);
        let mut g = vec![1.0; xs.len()];
        quick_gelu_grad_slice(&xs, &mut g);
        for ((&x, &y), &g) in xs.iter().zip(&y).zip(&g) {
            // From the f32 product 1.702·x, as both the kernel and the
            // composed op round it (its rounding, times up to 60, is the
            // largest error of either).
            let x64 = x as f64;
            let s = 1.0 / (1.0 + ((-QUICK_GELU_ALPHA * x) as f64).exp());
            let want = x64 * s;
            let dwant = s + 1.702 * x64 * s * (1.0 - s);
            assert!(
                (y as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30,
                "{x}: {y} vs {want}"
            );
            assert!(
                (g as f64 - dwant).abs() <= 1e-6 * dwant.abs() + 1e-6,
                "{x}: {g} vs {dwant}"
            );
        }
    }

    #[test]
    fn softmax_rows_match_f64_with_and_without_the_causal_mask() {
        let row_len = 13;
        let rows: Vec<f32> = (0..row_len * 2 * row_len)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.037 - 18.0)
            .collect();
        for causal in [false, true] {
            let mut p = rows.clone();
            softmax_rows(&mut p, row_len, 0, causal);
            for (i, (row, got)) in rows.chunks(row_len).zip(p.chunks(row_len)).enumerate() {
                let valid = if causal { i % row_len + 1 } else { row_len };
                let max = row[..valid].iter().fold(f64::MIN, |m, &v| m.max(v as f64));
                let sum: f64 = row[..valid].iter().map(|&v| (v as f64 - max).exp()).sum();
                for (j, (&x, &y)) in row.iter().zip(got).enumerate() {
                    let want = if j < valid {
                        (x as f64 - max).exp() / sum
                    } else {
                        0.0
                    };
                    assert!((y as f64 - want).abs() <= 1e-6 * want + 1e-12, "{i},{j}");
                }
            }
        }
    }
}
