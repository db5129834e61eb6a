//! The AMX path's product on AVX-512 BF16 instead of tiles (AMD Zen 4 and later, Intel Cooper
//! Lake): same packing, same 32x32 output block, same bf16 rounding, so a CPU without AMX runs
//! the vision tower and half-precision weights at twice the f32 kernel's multiply-adds per
//! instruction (`vdpbf16ps` does two per lane where `vfmadd` does one).
//!
//! The activations' VNNI layout (a tile row holds `k = 2p, 2p + 1` of 16 rows side by side) is
//! one vector of 16 rows' pairs; each weight row's pair is broadcast from its tile row. Eight
//! weight rows by 32 activation rows (16 accumulators) per pass over `k`, four passes per block.

#[cfg(target_arch = "x86_64")]
use super::amx::{BLOCK, TILE, TK, TR};

/// Weight rows per pass.
#[cfg(target_arch = "x86_64")]
const R: usize = 8;

/// Whether this CPU runs [`kernel`].
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// `acc[r][i] = Σ_p a_r[p] · b_i[p]` for a 32-row weight block `a` (two strips of `kt` tiles)
/// and a 32-row activation block `b` (two VNNI strips of `kt` tiles), as `amx::os::kernel`.
///
/// # Safety
/// [`available`] must have returned true.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn kernel(a: &[u16], b: &[u16], kt: usize, acc: &mut [[f32; BLOCK]; BLOCK]) {
    use std::arch::x86_64::*;
    assert!(a.len() == 2 * kt * TILE && b.len() == 2 * kt * TILE);
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for r0 in (0..BLOCK).step_by(R) {
        let mut c = [[_mm512_setzero_ps(); 2]; R];
        for kc in 0..kt {
            for q in 0..TR {
                // SAFETY: `kc < kt` and `q < 16`: each 64-byte activation load starts at tile row
                // `q` of tile `kc` in strip 0 or 1, and each 4-byte weight read at pair `q` of
                // row `r % 16` of tile `kc` in strip `r / 16`, all inside the asserted lengths.
                // The bit casts are between 512-bit vector types.
                unsafe {
                    let x0 = _mm512_loadu_si512(bp.add(kc * TILE + q * TK) as *const _);
                    let x1 = _mm512_loadu_si512(bp.add((kt + kc) * TILE + q * TK) as *const _);
                    let (x0, x1) = (
                        std::mem::transmute::<__m512i, __m512bh>(x0),
                        std::mem::transmute::<__m512i, __m512bh>(x1),
                    );
                    for (rr, cr) in c.iter_mut().enumerate() {
                        let r = r0 + rr;
                        let at = ((r / TR) * kt + kc) * TILE + (r % TR) * TK + 2 * q;
                        let w = _mm512_set1_epi32((ap.add(at) as *const i32).read_unaligned());
                        let w = std::mem::transmute::<__m512i, __m512bh>(w);
                        cr[0] = _mm512_dpbf16_ps(cr[0], x0, w);
                        cr[1] = _mm512_dpbf16_ps(cr[1], x1, w);
                    }
                }
            }
        }
        for (rr, cr) in c.iter().enumerate() {
            // SAFETY: two 16-lane stores into the 32 f32s of row `r0 + rr` of `acc`.
            unsafe {
                _mm512_storeu_ps(acc[r0 + rr].as_mut_ptr(), cr[0]);
                _mm512_storeu_ps(acc[r0 + rr].as_mut_ptr().add(16), cr[1]);
            }
        }
    }
}
