//! The AVX-512 inner loop of attention: up to 16 query vectors that share a KV head, scored
//! against 16 keys at a time with an online softmax, for head sizes that are multiples of 16.
//!
//! The generic loop scores one (query, key) pair at a time, so every score ends in a horizontal
//! sum and every weight in a scalar `exp`; at the 512+ positions of a question about an image that
//! made attention a tenth of a decoded token's time, several times what reading the KV cache costs.
//! Here each key's products with all query vectors are summed together by one transpose-and-add
//! tree (16 sums in 15 vector adds; for up to 8 vectors, as in a decode step, one tree sums two
//! keys' products, and each query chunk loaded feeds both), the softmax runs with the query
//! vectors in the lanes (one vector `exp` per key), and values are accumulated 16 keys at a time
//! from registers. Rows of an f16 cache are widened sixteen values at a time as they are loaded
//! (`vcvtph2ps`).

use std::arch::x86_64::*;

use super::kernels::{Kv, MAX_HEAD_DIM, MAX_Q};
use super::simd::x86::exp512 as exp;

/// Keys per step: one per lane of a score vector.
const KEYS: usize = 16;

/// What [`attend`] reads: `query(x)` is query vector `x` (at least `d` floats), scored with
/// factor `scale`; key `t` of vector `x` counts when `ranges[x].0 <= t < ranges[x].1`; the key
/// and value rows of key `t` are `k[t·kw + off..][..d]` and `v[t·kw + off..][..d]`, both f32 or
/// both f16.
pub(super) struct Keys<'a> {
    pub query: &'a dyn Fn(usize) -> &'a [f32],
    pub scale: f32,
    pub nv: usize,
    pub d: usize,
    pub k: Kv<'a>,
    pub v: Kv<'a>,
    pub kw: usize,
    pub off: usize,
    pub ranges: &'a [(usize, usize); MAX_Q],
    /// The union of the ranges.
    pub lo: usize,
    pub hi: usize,
}

/// Online softmax attention: on return `acc[x][..d]` holds `Σ p·v` and `l[x]` holds `Σ p`, with
/// `p = exp(score - running max)`, for every vector `x < nv`. Returns false (touching nothing)
/// when this machine lacks AVX-512F or the shapes are outside what the kernel handles.
pub(super) fn attend(
    a: &Keys<'_>,
    acc: &mut [[f32; MAX_HEAD_DIM]; MAX_Q],
    l: &mut [f32; MAX_Q],
) -> bool {
    let fits = |buf: Kv<'_>| a.hi == 0 || (a.hi - 1) * a.kw + a.off + a.d <= buf.len();
    let (k, v, half) = match (a.k, a.v) {
        (Kv::F32(k), Kv::F32(v)) => (k.as_ptr().cast::<u8>(), v.as_ptr().cast::<u8>(), false),
        (Kv::F16(k), Kv::F16(v)) => (k.as_ptr().cast::<u8>(), v.as_ptr().cast::<u8>(), true),
        _ => return false,
    };
    if a.d == 0
        || !a.d.is_multiple_of(16)
        || a.d > MAX_HEAD_DIM
        || a.nv == 0
        || a.nv > MAX_Q
        || a.hi > i32::MAX as usize
        || !fits(a.k)
        || !fits(a.v)
        || !is_x86_feature_detected!("avx512f")
    {
        return false;
    }
    // The scaled queries side by side, so the kernel reads them with plain vector loads.
    let mut qs = [[0f32; MAX_HEAD_DIM]; MAX_Q];
    for (x, row) in qs.iter_mut().enumerate().take(a.nv) {
        for (q, &v) in row.iter_mut().zip(&(a.query)(x)[..a.d]) {
            *q = v * a.scale;
        }
    }
    macro_rules! by_chunks {
        ($($c:literal)*) => {
            match (a.d / 16, half, a.nv <= 8) {
                // SAFETY: AVX-512F detected above; d = 16·C <= MAX_HEAD_DIM, nv <= MAX_Q and every
                // key row read (t < hi) lies inside k and v, whose elements are f16 exactly when
                // `half`, as checked above.
                $(($c, false, true) => unsafe { run::<$c, false, 8, 2>(a, k, v, &qs, acc, l) },
                  ($c, false, false) => unsafe { run::<$c, false, 16, 1>(a, k, v, &qs, acc, l) },
                  ($c, true, true) => unsafe { run::<$c, true, 8, 2>(a, k, v, &qs, acc, l) },
                  ($c, true, false) => unsafe { run::<$c, true, 16, 1>(a, k, v, &qs, acc, l) },)*
                _ => unreachable!("d is a multiple of 16 up to MAX_HEAD_DIM"),
            }
        };
    }
    by_chunks!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    true
}

/// A row of zeros stands in for the value rows past the last key of a partial step (their
/// weights are zero), so the value loop always runs over 16 rows; zero bytes are a zero f32 and a
/// zero f16 alike.
static ZERO_ROW: [u8; 4 * MAX_HEAD_DIM] = [0; 4 * MAX_HEAD_DIM];

/// Sixteen values from `p` (of f16 when `H`, else of f32) as f32.
///
/// # Safety
/// AVX-512F, and `p` valid for sixteen values of its type.
#[inline(always)]
unsafe fn load16<const H: bool>(p: *const u8) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe {
        if H {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        } else {
            _mm512_loadu_ps(p.cast())
        }
    }
}

/// `k` and `v` point at the first element of `a.k` and `a.v`: f16 when `H`, else f32. Keys are
/// scored `T` at a time for up to `P` vectors (`P·T = 16`, `nv <= P`).
#[target_feature(enable = "avx512f")]
fn run<const C: usize, const H: bool, const P: usize, const T: usize>(
    a: &Keys<'_>,
    k: *const u8,
    v: *const u8,
    qs: &[[f32; MAX_HEAD_DIM]; MAX_Q],
    acc: &mut [[f32; MAX_HEAD_DIM]; MAX_Q],
    l_out: &mut [f32; MAX_Q],
) {
    let nv = a.nv;
    // Bytes per stored value.
    let eb = if H { 2 } else { 4 };
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    // Lane x: x, the first index of a permute taking key i's scores from lanes i·P + x.
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // Lanes past nv get an empty range, so they never hold a weight.
    let (mut lo_l, mut hi_l) = ([i32::MAX; 16], [0i32; 16]);
    for x in 0..nv {
        lo_l[x] = a.ranges[x].0 as i32;
        hi_l[x] = a.ranges[x].1 as i32;
    }
    // SAFETY: 16 i32 each.
    let (lo_v, hi_v) = unsafe {
        (
            _mm512_loadu_si512(lo_l.as_ptr().cast()),
            _mm512_loadu_si512(hi_l.as_ptr().cast()),
        )
    };
    let mut m = neg_inf;
    let mut l = _mm512_setzero_ps();
    // p[j][x]: weight of key j of the step for vector x.
    let mut p = [[0f32; 16]; KEYS];
    let mut start = a.lo;
    while start < a.hi {
        let cnt = (a.hi - start).min(KEYS);
        let mut s = [neg_inf; KEYS];
        let mut valid = [0u16; KEYS];
        let mut bm = neg_inf;
        // T keys at a time: each query chunk loaded feeds T products, and one sum tree makes the
        // T·P scores (lane t·P + x: key t, vector x).
        for j0 in (0..cnt).step_by(T) {
            let mut rows = [ZERO_ROW.as_ptr(); T];
            for (i, row) in rows.iter_mut().enumerate() {
                let (j, t) = (j0 + i, start + j0 + i);
                if j >= cnt {
                    break;
                }
                // SAFETY: t < hi, so the row's d values lie inside k (checked by `attend`).
                *row = unsafe { k.add((t * a.kw + a.off) * eb) };
                // The rows are a KV head's slice of each cached position, a few to a page, which
                // the hardware prefetchers lose at every page: ask for this step's value row and
                // the next step's key row now, while this key is scored.
                let ahead = k.wrapping_add(((t + KEYS) * a.kw + a.off) * eb);
                let vrow = v.wrapping_add((t * a.kw + a.off) * eb);
                // Prefetches do not fault (the intrinsic is safe); the addresses are only hints.
                for line in (0..C * 16 * eb).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(vrow.wrapping_add(line).cast());
                    if t + KEYS < a.hi {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
                    }
                }
            }
            let mut prod = [_mm512_setzero_ps(); 16];
            for c in 0..C {
                // SAFETY: 16·c + 16 <= d, inside each key row (or the zero row).
                let kc: [__m512; T] =
                    std::array::from_fn(|i| unsafe { load16::<H>(rows[i].add(16 * c * eb)) });
                for x in 0..P {
                    // Vectors past nv score rows of zeros (their lanes are masked off below);
                    // a bound known at compile time keeps `prod` in registers.
                    // SAFETY: qs rows hold MAX_HEAD_DIM >= d floats.
                    let q = unsafe { _mm512_loadu_ps(qs[x].as_ptr().add(16 * c)) };
                    for (i, kv) in kc.iter().enumerate() {
                        prod[i * P + x] = _mm512_fmadd_ps(*kv, q, prod[i * P + x]);
                    }
                }
            }
            let sums = sum16(&prod);
            for i in 0..T.min(cnt - j0) {
                let (j, t) = (j0 + i, start + j0 + i);
                let sc = if T == 1 {
                    sums
                } else {
                    _mm512_permutexvar_ps(
                        _mm512_add_epi32(lane, _mm512_set1_epi32((i * P) as i32)),
                        sums,
                    )
                };
                let tv = _mm512_set1_epi32(t as i32);
                let ok = _mm512_cmple_epi32_mask(lo_v, tv) & _mm512_cmpgt_epi32_mask(hi_v, tv);
                valid[j] = ok;
                s[j] = _mm512_mask_mov_ps(neg_inf, ok, sc);
                bm = _mm512_max_ps(bm, s[j]);
            }
        }
        let nm = _mm512_max_ps(m, bm);
        // Lanes with no key yet keep a max of -inf; their sums are still zero, so they need no
        // rescaling (and -inf - -inf would be NaN).
        let live = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(nm, neg_inf);
        let corr = _mm512_mask_mov_ps(_mm512_set1_ps(1.0), live, exp(_mm512_sub_ps(m, nm)));
        l = _mm512_mul_ps(l, corr);
        let mut cf = [0f32; 16];
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(cf.as_mut_ptr(), corr) };
        for x in 0..nv {
            if cf[x] != 1.0 {
                let f = _mm512_set1_ps(cf[x]);
                for c in 0..C {
                    // SAFETY: 16·c + 16 <= d <= MAX_HEAD_DIM.
                    unsafe {
                        let o = acc[x].as_mut_ptr().add(16 * c);
                        _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_loadu_ps(o), f));
                    }
                }
            }
        }
        let mut rows = [ZERO_ROW.as_ptr(); KEYS];
        for j in 0..KEYS {
            let pj = if j < cnt {
                // SAFETY: start + j < hi, inside v (checked by `attend`).
                rows[j] = unsafe { v.add(((start + j) * a.kw + a.off) * eb) };
                _mm512_maskz_mov_ps(valid[j], exp(_mm512_sub_ps(s[j], nm)))
            } else {
                _mm512_setzero_ps()
            };
            l = _mm512_add_ps(l, pj);
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(p[j].as_mut_ptr(), pj) };
        }
        m = nm;
        // acc[x] += Σ_j p[j][x]·v[j], a 4-vector x 4-chunk tile of acc at a time held in
        // registers over the 16 keys: each value load feeds four FMAs, each broadcast four.
        for x0 in (0..nv).step_by(4) {
            let xw = (nv - x0).min(4);
            for c0 in (0..C).step_by(4) {
                let cw = (C - c0).min(4);
                let mut tile = [[_mm512_setzero_ps(); 4]; 4];
                for (xi, row) in tile.iter_mut().enumerate().take(xw) {
                    for (ci, t) in row.iter_mut().enumerate().take(cw) {
                        // SAFETY: 16·(c0 + ci) + 16 <= d <= MAX_HEAD_DIM.
                        *t = unsafe { _mm512_loadu_ps(acc[x0 + xi].as_ptr().add(16 * (c0 + ci))) };
                    }
                }
                for (j, &row) in rows.iter().enumerate() {
                    let mut vr = [_mm512_setzero_ps(); 4];
                    for (ci, v) in vr.iter_mut().enumerate().take(cw) {
                        // SAFETY: each row pointer addresses at least d values (or zero bytes).
                        *v = unsafe { load16::<H>(row.add(16 * (c0 + ci) * eb)) };
                    }
                    for (xi, trow) in tile.iter_mut().enumerate().take(xw) {
                        let b = _mm512_set1_ps(p[j][x0 + xi]);
                        for (t, v) in trow.iter_mut().zip(&vr).take(cw) {
                            *t = _mm512_fmadd_ps(b, *v, *t);
                        }
                    }
                }
                for (xi, row) in tile.iter().enumerate().take(xw) {
                    for (ci, t) in row.iter().enumerate().take(cw) {
                        // SAFETY: as above.
                        unsafe {
                            _mm512_storeu_ps(acc[x0 + xi].as_mut_ptr().add(16 * (c0 + ci)), *t)
                        };
                    }
                }
            }
        }
        start += cnt;
    }
    let mut lf = [0f32; 16];
    // SAFETY: 16 floats.
    unsafe { _mm512_storeu_ps(lf.as_mut_ptr(), l) };
    l_out[..nv].copy_from_slice(&lf[..nv]);
}

/// Lane `j` of the result is the sum of the lanes of `a[j]`: pairs of vectors are interleaved and
/// added, halving the count and doubling what each lane sums, four times over.
#[target_feature(enable = "avx512f")]
fn sum16(a: &[__m512; 16]) -> __m512 {
    let mut b = [_mm512_setzero_ps(); 8];
    for (i, r) in b.iter_mut().enumerate() {
        let (x, y) = (a[2 * i], a[2 * i + 1]);
        *r = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
    }
    let mut c = [_mm512_setzero_ps(); 4];
    for (i, r) in c.iter_mut().enumerate() {
        let (x, y) = (b[2 * i], b[2 * i + 1]);
        *r = _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(x, y),
            _mm512_shuffle_ps::<0xEE>(x, y),
        );
    }
    let mut d = [_mm512_setzero_ps(); 2];
    for (i, r) in d.iter_mut().enumerate() {
        let (x, y) = (c[2 * i], c[2 * i + 1]);
        *r = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(x, y),
            _mm512_shuffle_f32x4::<0xDD>(x, y),
        );
    }
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x88>(d[0], d[1]),
        _mm512_shuffle_f32x4::<0xDD>(d[0], d[1]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Called directly (so a shape the kernel declines cannot fall back unnoticed): five vectors
    /// with different key ranges, one of them empty, against the softmax written out.
    #[test]
    fn five_vectors_with_their_own_ranges_match_the_formula() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512F here: the kernel is not used on this machine");
            return;
        }
        let (d, kw, off, n) = (64, 192, 64, 53);
        let val = |i: usize| (i as f32 * 0.61).sin() * 3.0;
        let k: Vec<f32> = (0..n * kw).map(val).collect();
        let v: Vec<f32> = (0..n * kw).map(|i| val(i + 7)).collect();
        let mut qs = [[0f32; MAX_HEAD_DIM]; MAX_Q];
        for (x, row) in qs.iter_mut().enumerate() {
            for (c, q) in row.iter_mut().enumerate().take(d) {
                *q = val(x * 131 + c * 3) * 0.5;
            }
        }
        let mut ranges = [(0, 0); MAX_Q];
        ranges[..5].copy_from_slice(&[(0, 53), (3, 20), (17, 18), (9, 9), (30, 53)]);
        let query = |x: usize| &qs[x][..];
        let keys = Keys {
            query: &query,
            scale: 1.0,
            nv: 5,
            d,
            k: Kv::F32(&k),
            v: Kv::F32(&v),
            kw,
            off,
            ranges: &ranges,
            lo: 0,
            hi: n,
        };
        let (mut acc, mut l) = ([[0f32; MAX_HEAD_DIM]; MAX_Q], [0f32; MAX_Q]);
        assert!(attend(&keys, &mut acc, &mut l));
        for x in 0..5 {
            let (a, b) = ranges[x];
            let sc: Vec<f32> = (a..b)
                .map(|t| (0..d).map(|c| qs[x][c] * k[t * kw + off + c]).sum())
                .collect();
            let mx = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = sc.iter().map(|s| (s - mx).exp()).sum();
            if a == b {
                assert_eq!(l[x], 0.0);
                assert!(acc[x][..d].iter().all(|&o| o == 0.0));
                continue;
            }
            for c in 0..d {
                let want: f32 = (a..b)
                    .zip(&sc)
                    .map(|(t, s)| (s - mx).exp() / z * v[t * kw + off + c])
                    .sum();
                let got = acc[x][c] / l[x];
                assert!(
                    (got - want).abs() < 1e-5,
                    "vector {x} [{c}]: {got} vs {want}"
                );
            }
        }
    }
}
