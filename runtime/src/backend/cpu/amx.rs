//! Intel AMX tile product for many activation rows (prefill, the vision tower): bf16 inputs, f32
//! accumulation, on CPUs that have AMX-BF16 (Xeon Sapphire Rapids and later) under Linux.
//!
//! It takes the place of the f32 kernel in `gemm` for every weight type except F32, whose rows
//! are exact in f32 and stay there. A quantized or half weight already carries less precision
//! than bf16's 8-bit mantissa loses next to it, and the activations lose about what the Q8
//! quantization of the one-row path loses (llama.cpp makes the same trade with its int8 AMX
//! kernels). The fixtures' Q4_K_M KL and Q8_0 greedy tokens are unchanged by it.
//!
//! Layout: each panel of decoded weights and the activations are packed once into 1 KiB tiles
//! (16 rows of 32 bf16), consecutive along `k`, so the kernel walks four tile streams with one
//! increment. The activations take the VNNI layout `tdpbf16ps` wants for its second operand (a
//! tile row holds two consecutive `k` of 16 rows side by side): they are packed once per product,
//! the weights once per panel, so the transposition falls on the `n` activation rows rather than
//! the `m` weight rows. The kernel keeps a 32x32 block of the output in four accumulator tiles
//! for the whole of `k`; its transpose goes into the panel block.
//!
//! `ANATOMY_AMX=0` turns the path off process-wide; `CpuBackend::with_amx(false)` per backend
//! (a same-run baseline in benchmarks).

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::gemm::{for_each_panel, grow};

/// bf16 values along `k` in one tile row (64 bytes).
pub(super) const TK: usize = 32;
/// Rows of a tile.
pub(super) const TR: usize = 16;
/// bf16 values in one tile.
pub(super) const TILE: usize = TK * TR;
/// Activation rows and weight rows of one kernel call: 2x2 accumulator tiles.
pub(super) const BLOCK: usize = 2 * TR;

/// Which instructions multiply the packed blocks.
#[derive(Clone, Copy)]
enum Engine {
    /// AMX tiles (`tdpbf16ps`).
    Tiles,
    /// AVX-512 BF16 vectors (`vdpbf16ps`, `super::bf16`).
    Vectors,
}

/// Proof that a bf16 path is on, which [`gemm_panels`] takes: only [`available`] (AMX) and
/// [`avx512_bf16`] make one.
#[derive(Clone, Copy)]
pub(super) struct Bf16(Engine);

/// The AMX path when it is on: the CPU has AMX-TILE and AMX-BF16, the kernel granted this process
/// the tile state, and `ANATOMY_AMX` is not `0`. Decided once per process.
pub(super) fn available() -> Option<Bf16> {
    static ON: OnceLock<bool> = OnceLock::new();
    let on = *ON.get_or_init(|| {
        std::env::var("ANATOMY_AMX").map_or(true, |v| v.trim() != "0") && os::enable()
    });
    on.then_some(Bf16(Engine::Tiles))
}

/// The same products on AVX-512 BF16 vectors, for CPUs without AMX, where the CPU has them and
/// they beat the f32 kernel (`bf16::pays`: AMD); `ANATOMY_BF16=0` turns them off, `1` on
/// wherever the CPU has them (to measure them against the f32 kernel on an Intel CPU).
pub(super) fn avx512_bf16() -> Option<Bf16> {
    let on = match std::env::var("ANATOMY_BF16") {
        Ok(v) => v.trim() != "0",
        Err(_) => super::bf16::pays(),
    };
    on.then(avx512_bf16_kernel).flatten()
}

/// The AVX-512 BF16 vectors wherever the CPU has them, whether or not they pay.
pub(super) fn avx512_bf16_kernel() -> Option<Bf16> {
    super::bf16::available().then_some(Bf16(Engine::Vectors))
}

/// `u16` values [`pack_activations`] writes for `n` rows of `k`.
pub(super) fn packed_len(n: usize, k: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK * k.div_ceil(TK) * TK
}

/// f32 to bf16, rounding to nearest even (the conversion `vcvtneps2bf16` does; NaN payloads are
/// not kept, which no weight or activation has).
#[inline(always)]
fn bf16(v: f32) -> u16 {
    let b = v.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The `n` rows of `x` as bf16 tiles in the VNNI layout `tdpbf16ps` wants for its second
/// operand: strips of 16 rows, each a run of tiles along `k` where tile row `p` holds `k = 2p`
/// and `2p + 1` of each of the 16 rows side by side; zero past row `n` and column `k`. Done once
/// per product, so its transposition costs `n` rows where the weights' would cost `m`.
pub(super) fn pack_activations(x: &[f32], n: usize, k: usize, xb: &mut [u16]) {
    let kt = k.div_ceil(TK);
    xb[..packed_len(n, k)]
        .par_chunks_mut(kt * TILE)
        .enumerate()
        .for_each(|(s, strip)| {
            let live = TR.min(n.saturating_sub(s * TR));
            if live < TR {
                strip.fill(0);
            }
            SCRATCH.with(|sc| {
                let row = &mut sc.borrow_mut().0;
                grow(row, kt * TK);
                let row = &mut row[..kt * TK];
                row[k..].fill(0.0);
                for c in 0..live {
                    let i = s * TR + c;
                    row[..k].copy_from_slice(&x[i * k..(i + 1) * k]);
                    os::pack_column(row, strip, c);
                }
            });
        });
}

/// Column `c` (of 16) of a VNNI strip from one row of 32-value chunks along `k`: in tile `kc`,
/// tile row `p` gets `src[32 kc + 2p]` and `src[32 kc + 2p + 1]` at `2c` and `2c + 1`. The scalar
/// form of `os::pack_column`.
fn pack_column_scalar(src: &[f32], strip: &mut [u16], c: usize) {
    for (tile, src) in strip.chunks_exact_mut(TILE).zip(src.chunks_exact(TK)) {
        for (q, &v) in src.iter().enumerate() {
            tile[q / 2 * TK + 2 * c + q % 2] = bf16(v);
        }
    }
}

/// `dst[i] = bf16(src[i])`: the scalar form of `os::to_bf16`.
fn to_bf16_scalar(src: &[f32], dst: &mut [u16]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = bf16(v);
    }
}

thread_local! {
    /// A worker's decoded row and its packed panel, reused so a product allocates nothing once
    /// warm.
    static SCRATCH: RefCell<(Vec<f32>, Vec<u16>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `t` as one `n x pr` block per panel of `pr` weight rows (the last may be narrower), the layout
/// of `gemm::gemm_panels` that `gemm::scatter` puts in activation-row order:
/// `t[j0 * n + i * rows + r] = w_{j0 + r} · x_i`, from activations packed by [`pack_activations`]
/// and weight row `j` decoded into a `k`-slice by `decode(j, dst)`. Returns `pr`.
pub(super) fn gemm_panels<E: Send>(
    engine: Bf16,
    m: usize,
    k: usize,
    n: usize,
    xb: &[u16],
    t: &mut [f32],
    decode: impl Fn(usize, &mut [f32]) -> Result<(), E> + Sync,
) -> Result<usize, E> {
    let kt = k.div_ceil(TK);
    let pr = panel_rows(m);
    let xb = &xb[..packed_len(n, k)];
    for_each_panel(t, m, n, pr, |j0, rows, out| {
        let groups = rows.div_ceil(BLOCK);
        SCRATCH.with(|s| {
            let (dec, packed) = &mut *s.borrow_mut();
            grow(dec, kt * TK);
            let need = groups * BLOCK * kt * TK + TILE;
            grow(packed, need);
            // Tiles start on a cache line.
            let off = packed.as_ptr().align_offset(64).min(TILE);
            let packed = &mut packed[off..off + groups * BLOCK * kt * TK];
            pack_panel(j0, rows, k, dec, packed, &decode)?;
            let mut acc = [[0f32; BLOCK]; BLOCK];
            for g in 0..groups {
                let w = &packed[g * 2 * kt * TILE..(g + 1) * 2 * kt * TILE];
                let cols = (rows - g * BLOCK).min(BLOCK);
                for (ab, x) in xb.chunks_exact(2 * kt * TILE).enumerate() {
                    match engine.0 {
                        // SAFETY: only `available()` makes this token, after `enable()`
                        // returned true.
                        Engine::Tiles => unsafe { os::kernel(w, x, kt, &mut acc) },
                        // SAFETY: only `avx512_bf16()` makes this token, after
                        // `bf16::available()` returned true.
                        #[cfg(target_arch = "x86_64")]
                        Engine::Vectors => unsafe { super::bf16::kernel(w, x, kt, &mut acc) },
                        #[cfg(not(target_arch = "x86_64"))]
                        Engine::Vectors => unreachable!("bf16::available() is false here"),
                    }
                    // `acc` is weight-row major; the panel block is activation-row major.
                    let i0 = ab * BLOCK;
                    for ii in 0..BLOCK.min(n - i0) {
                        let o = (i0 + ii) * rows + g * BLOCK;
                        for (d, a) in out[o..o + cols].iter_mut().zip(&acc) {
                            *d = a[ii];
                        }
                    }
                }
            }
            Ok(())
        })
    })?;
    Ok(pr)
}

/// Weight rows `j0..j0 + rows` decoded and packed as strips of 16 rows, each a run of tiles along
/// `k` (a tile row is 32 consecutive bf16 of one weight row); rows past `rows`, up to the end of
/// `packed`, are zero.
#[inline(never)]
fn pack_panel<E>(
    j0: usize,
    rows: usize,
    k: usize,
    dec: &mut [f32],
    packed: &mut [u16],
    decode: &impl Fn(usize, &mut [f32]) -> Result<(), E>,
) -> Result<(), E> {
    let kt = k.div_ceil(TK);
    let dec = &mut dec[..kt * TK];
    for (s, strip) in packed.chunks_exact_mut(kt * TILE).enumerate() {
        for rr in 0..TR {
            let r = s * TR + rr;
            if r < rows {
                decode(j0 + r, &mut dec[..k])?;
                dec[k..].fill(0.0);
            } else {
                dec.fill(0.0);
            }
            for (tile, src) in strip.chunks_exact_mut(TILE).zip(dec.chunks_exact(TK)) {
                os::to_bf16(src, &mut tile[rr * TK..(rr + 1) * TK]);
            }
        }
    }
    Ok(())
}

/// Weight rows per task: a multiple of 32, small enough that every worker gets several tasks.
fn panel_rows(m: usize) -> usize {
    let tasks = rayon::current_num_threads() * 4;
    (m.div_ceil(tasks).div_ceil(BLOCK) * BLOCK).clamp(BLOCK, 4 * BLOCK)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod os {
    use std::arch::asm;
    use std::arch::x86_64::*;

    use super::{BLOCK, TILE, TK, TR};

    /// `arch_prctl` request for permission to use an extended state component.
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    /// The AMX tile data state component.
    const XFEATURE_XTILEDATA: i64 = 18;
    const SYS_ARCH_PRCTL: i64 = 158;

    /// CPUID says AMX-TILE and AMX-BF16, and Linux grants this process the tile data state
    /// (which it withholds until asked, because it adds 8 KiB to every signal frame).
    // `__cpuid_count` is a safe function from Rust 1.87 on and unsafe before (rust-version 1.85).
    #[allow(unused_unsafe)]
    pub(super) fn enable() -> bool {
        // SAFETY: CPUID is always present on x86_64; leaf 0 gives the highest leaf there is.
        let max = unsafe { __cpuid_count(0, 0) }.eax;
        if max < 7 {
            return false;
        }
        // SAFETY: leaf 7 exists (checked above).
        let edx = unsafe { __cpuid_count(7, 0) }.edx;
        let (bf16, tile) = (edx >> 22 & 1 == 1, edx >> 24 & 1 == 1);
        if !(bf16 && tile) {
            return false;
        }
        let ret: i64;
        // SAFETY: the arch_prctl system call with two integer arguments; it reads and writes no
        // memory of ours, and the kernel clobbers only rcx and r11 (declared).
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack)
            );
        }
        ret == 0
    }

    /// Column `c` of a VNNI strip from one row (see `pack_column_scalar`).
    pub(super) fn pack_column(src: &[f32], strip: &mut [u16], c: usize) {
        assert!(
            src.len() == strip.len() / TILE * TK
                && strip.len() / TILE * TILE == strip.len()
                && c < TR
        );
        if is_x86_feature_detected!("avx512bw") {
            // SAFETY: AVX-512F/BW detected (every CPU with BW has F); lengths asserted above.
            unsafe { pack_column_512(src, strip, c) };
        } else {
            super::pack_column_scalar(src, strip, c);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pack_column_512(src: &[f32], strip: &mut [u16], c: usize) {
        // u16 lane 2j + 1 of (r0, r1) is the bf16 of value j: u32 lane p then holds 2p, 2p+1.
        let idx = _mm512_set_epi16(
            63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21,
            19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
        );
        let rows = _mm512_set_epi32(
            240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64, 48, 32, 16, 0,
        );
        for (tile, src) in strip.chunks_exact_mut(TILE).zip(src.chunks_exact(TK)) {
            // SAFETY: two 16-value loads inside the 32 values of `src`; the scatter writes the
            // 16 u32 pairs at `tile[32p + 2c..32p + 2c + 2]`, p < 16, inside the 512-value tile.
            unsafe {
                let r0 = round(_mm512_castps_si512(_mm512_loadu_ps(src.as_ptr())));
                let r1 = round(_mm512_castps_si512(_mm512_loadu_ps(src.as_ptr().add(16))));
                let pairs = _mm512_permutex2var_epi16(r0, idx, r1);
                _mm512_i32scatter_epi32::<4>(tile.as_mut_ptr().add(2 * c) as *mut i32, rows, pairs);
            }
        }
    }

    /// `bits + 0x7fff + (bits >> 16 & 1)`: the bf16 rounded to nearest even in the high half.
    #[target_feature(enable = "avx512f")]
    fn round(b: __m512i) -> __m512i {
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), odd)
    }

    /// `dst[i] = bf16(src[i])` (see `to_bf16_scalar`).
    pub(super) fn to_bf16(src: &[f32], dst: &mut [u16]) {
        assert!(src.len() == dst.len());
        if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") {
            // SAFETY: AVX-512F/BW detected; equal lengths asserted.
            unsafe { to_bf16_512(src, dst) };
        } else {
            super::to_bf16_scalar(src, dst);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn to_bf16_512(src: &[f32], dst: &mut [u16]) {
        let n = src.len();
        let mut i = 0;
        while i < n {
            let live = (n - i).min(16);
            let m = if live == 16 {
                u16::MAX
            } else {
                (1u16 << live) - 1
            };
            // SAFETY: masked to the `live` values at `i` of both slices (equal lengths).
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, src.as_ptr().add(i));
                let h = _mm512_srli_epi32::<16>(round(_mm512_castps_si512(v)));
                _mm256_mask_storeu_epi16(
                    dst.as_mut_ptr().add(i) as *mut i16,
                    m,
                    _mm512_cvtepi32_epi16(h),
                );
            }
            i += 16;
        }
    }

    /// Palette 1 with all eight tiles at 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    static CONFIG: TileConfig = {
        let mut colsb = [0u16; 16];
        let mut rows = [0u8; 16];
        let mut t = 0;
        while t < 8 {
            colsb[t] = 64;
            rows[t] = 16;
            t += 1;
        }
        TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb,
            rows,
        }
    };

    /// `acc[r][i] = Σ_p a_r[p] · b_i[p]` for a 32-row weight block `a` (two strips of `kt`
    /// tiles) and a 32-row activation block `b` (two VNNI strips of `kt` tiles).
    ///
    /// On the machine this was measured on, a tile load takes about as long as a `tdpbf16ps`
    /// and the two do not overlap, so the 2x2 block (one load per product, the fewest eight
    /// tiles allow) sets the rate; the accumulators stay in tiles for the whole of `k`.
    ///
    /// # Safety
    /// [`enable`] must have returned true in this process.
    #[inline(never)]
    pub(super) unsafe fn kernel(a: &[u16], b: &[u16], kt: usize, acc: &mut [[f32; BLOCK]; BLOCK]) {
        assert!(kt > 0 && a.len() == 2 * kt * TILE && b.len() == 2 * kt * TILE);
        let (a0, b0) = (a.as_ptr(), b.as_ptr());
        // SAFETY: `enable()` returned true (the caller's contract): CPUID has AMX-TILE and
        // AMX-BF16 and the kernel granted the tile state. Every load reads a 1 KiB tile inside
        // `a` or `b`: strip 1 starts `kt` tiles after strip 0 and the loop runs `kt` times
        // (asserted above). The stores write the four 16x16 f32 quarters of `acc` (32 rows of
        // 128 bytes). The tiles are configured at the start and released at the end, so no tile
        // state outlives the block.
        unsafe {
            asm!(
                "ldtilecfg [{cfg}]",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a0}, 1024",
                "add {a1}, 1024",
                "add {b0}, 1024",
                "add {b1}, 1024",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c} + {cs}*1], tmm0",
                "tilestored [{c} + {cs}*1 + 64], tmm1",
                "tilestored [{c2} + {cs}*1], tmm2",
                "tilestored [{c2} + {cs}*1 + 64], tmm3",
                "tilerelease",
                cfg = in(reg) &CONFIG as *const TileConfig,
                a0 = inout(reg) a0 => _,
                a1 = inout(reg) a0.add(kt * TILE) => _,
                b0 = inout(reg) b0 => _,
                b1 = inout(reg) b0.add(kt * TILE) => _,
                n = inout(reg) kt => _,
                s = in(reg) 64usize,
                c = in(reg) acc.as_mut_ptr(),
                c2 = in(reg) acc.as_mut_ptr().add(BLOCK / 2),
                cs = in(reg) BLOCK * 4,
                options(nostack)
            );
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod os {
    pub(super) fn enable() -> bool {
        false
    }

    pub(super) fn pack_column(src: &[f32], strip: &mut [u16], c: usize) {
        super::pack_column_scalar(src, strip, c)
    }

    pub(super) fn to_bf16(src: &[f32], dst: &mut [u16]) {
        super::to_bf16_scalar(src, dst)
    }

    /// # Safety
    /// Never callable: [`enable`] is false here.
    pub(super) unsafe fn kernel(
        _: &[u16],
        _: &[u16],
        _: usize,
        _: &mut [[f32; super::BLOCK]; super::BLOCK],
    ) {
        unreachable!("the AMX path is only taken when `available()`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tile product against an f64 product of the same bf16-rounded inputs, on shapes with
    /// every edge: rows and `k` not multiples of 16 or 32, one partial panel, several blocks.
    /// Fails (rather than passing vacuously) on a CPU with AMX where the path did not come on.
    #[test]
    fn matches_the_rounded_product_on_every_edge() {
        let has_amx = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.contains(" amx_bf16") && s.contains(" amx_tile"))
            .unwrap_or(false);
        if std::env::var("ANATOMY_AMX").is_err() {
            assert_eq!(
                available().is_some(),
                has_amx && cfg!(target_arch = "x86_64")
            );
        }
        let Some(amx) = available() else {
            eprintln!("no AMX on this CPU: the tile kernel is not exercised here");
            return;
        };
        matches_the_rounded_product(amx);
    }

    /// The same check for the AVX-512 BF16 vectors (`super::bf16`) over the same packing.
    #[test]
    fn vectors_match_the_rounded_product_on_every_edge() {
        let has = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.contains(" avx512_bf16"))
            .unwrap_or(false);
        if std::env::var("ANATOMY_BF16").is_err() {
            let pays = super::super::bf16::pays();
            assert_eq!(avx512_bf16().is_some(), has && pays);
        }
        // The kernel is checked wherever the CPU has it, used by default or not.
        let Some(vectors) = avx512_bf16_kernel() else {
            eprintln!("no AVX-512 BF16 on this CPU: the vector kernel is not exercised here");
            return;
        };
        matches_the_rounded_product(vectors);
    }

    fn matches_the_rounded_product(engine: Bf16) {
        for &(m, n, k) in &[
            (4, 4, 16),
            (7, 5, 19),
            (13, 33, 80),
            (64, 40, 1280),
            (200, 25, 64),
            (33, 70, 1176),
        ] {
            let w: Vec<f32> = (0..m * k)
                .map(|v| ((v * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let x: Vec<f32> = (0..n * k)
                .map(|v| ((v * 53 % 97) as f32 - 48.0) / 48.0 + 1e-3)
                .collect();
            let r = |v: f32| f32::from_bits((bf16(v) as u32) << 16) as f64;
            let mut xb = vec![u16::MAX; packed_len(n, k)];
            pack_activations(&x, n, k, &mut xb);
            let mut t = vec![f32::NAN; m * n];
            let pr = gemm_panels::<()>(engine, m, k, n, &xb, &mut t, |j, dst| {
                dst.copy_from_slice(&w[j * k..(j + 1) * k]);
                Ok(())
            })
            .unwrap();
            let mut got = vec![f32::NAN; m * n];
            super::super::gemm::scatter(&t, m, n, pr, &mut got);
            for i in 0..n {
                for j in 0..m {
                    let e: f64 = (0..k).map(|p| r(w[j * k + p]) * r(x[i * k + p])).sum();
                    let g = got[i * m + j] as f64;
                    assert!(
                        (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "{m}x{n}x{k} [{i},{j}]: {g} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        // Halfway between 0x3f80 and 0x3f81 goes to the even one; just above goes up.
        assert_eq!(bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bf16(-2.5), 0xc020);
    }
}
