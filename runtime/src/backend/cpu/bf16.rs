//! The AMX path's product on AVX-512 BF16 instead of tiles (AMD Zen 4 and later, Intel Cooper
//! Lake): same packing, same 32x32 output block, same bf16 rounding, so a CPU without AMX runs
//! the vision tower and half-precision weights at twice the f32 kernel's multiply-adds per
//! instruction (`vdpbf16ps` does two per lane where `vfmadd` does one).
//!
//! The activations' VNNI layout (a tile row holds `k = 2p, 2p + 1` of 16 rows side by side) is
//! one vector of 16 rows' pairs; each weight row's pair is broadcast from its tile row. Eight
//! weight rows by 32 activation rows (16 accumulators) per pass over `k`, four passes per block.
//!
//! It pays only where `vdpbf16ps` issues as often as a 512-bit FMA: on AMD (Zen 4 runs one of
//! each per cycle, so the bf16 kernel does twice the multiply-adds: the 3B vision MLP's product
//! 1.6x faster than the f32 kernel). Intel cores issue two FMAs per cycle and one `vdpbf16ps` per
//! two: on a 2-vCPU Xeon VM (AVX-512 BF16 and FP16, no AMX) a stream of independent
//! `vdpbf16ps` took 0.74 ns each against 0.18 for `vfmadd231ps`, the product 1.8x slower than the
//! f32 kernel (57.9 against 32.5 ms) and the 448x448 encode 9.3-9.8 s against 6.1-7.1 s.

#[cfg(target_arch = "x86_64")]
use super::amx::{BLOCK, TILE, TK, TR};

/// Weight rows per pass.
#[cfg(target_arch = "x86_64")]
const R: usize = 8;

/// Whether [`kernel`] is faster than the f32 kernel on this CPU (see the module doc): an AMD CPU
/// (or Hygon, the same cores).
pub(super) fn pays() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU and only reads the vendor string.
        #[allow(unused_unsafe)]
        let id = unsafe { std::arch::x86_64::__cpuid(0) };
        let vendor = [id.ebx, id.edx, id.ecx].map(u32::to_le_bytes).concat();
        vendor == b"AuthenticAMD" || vendor == b"HygonGenuine"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

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
