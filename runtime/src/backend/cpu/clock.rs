//! The core-speed probe reported beside the memory-read probe: how many dependent integer adds
//! each of `threads` threads retires per second, which is the core clock on the x86-64 and ARM64
//! cores we target (a register add has one cycle of latency there).
//!
//! A decoded token is bound by memory only while the dot kernels keep up with it, and they need a
//! good part of a core to: on the 2-vCPU Xeon VM a Q4_K row kernel reads 26 GB/s with its rows in
//! L2, where each of two cores gets about 16 GB/s from memory. A shared host can slow the cores
//! without touching the memory's speed (this probe read 1.4-3.0 GHz there within minutes), so
//! `anatomy bench` takes it wherever it takes the bandwidth probe: a decode that misses the bound
//! can then be told apart as held back by its cores or not. On that VM it was not: runs decoded at
//! 86-89% of the bound with the probe's median at 2.2 GHz, and the ones far below it had their
//! weights partly off huge pages (`lm_huge_page_bytes`).

/// Dependent adds per timed run: some ten milliseconds at the clocks we target, long enough that a
/// core the host takes away for part of it reads slower.
const ADDS: u64 = 1 << 25;

/// `n` rounded down to a multiple of four, as that many adds of 1, each depending on the last:
/// returns their sum (the count), which tells a caller the chain really ran.
pub fn add_chain(n: u64) -> u64 {
    let mut x = 0u64;
    for _ in 0..n / 4 {
        x = add4(x);
    }
    x
}

/// One add of the second operand into the first, in this architecture's assembly.
#[cfg(target_arch = "x86_64")]
macro_rules! add_one {
    () => {
        "add {0}, {1}"
    };
}
#[cfg(target_arch = "aarch64")]
macro_rules! add_one {
    () => {
        "add {0}, {0}, {1}"
    };
}

/// Four dependent adds of 1 to `x`, in assembly where we know it, so that the compiler can neither
/// fold them into one nor break the chain. The 1 is a register, not an immediate: the renamer of
/// recent Intel cores folds chains of immediate adds, and on the Xeon VM such a chain read 11.9
/// "GHz".
#[inline(always)]
fn add4(x: u64) -> u64 {
    let mut x = x;
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    // SAFETY: four register adds; no memory, stack or other register is touched.
    unsafe {
        std::arch::asm!(
            add_one!(), add_one!(), add_one!(), add_one!(),
            inout(reg) x,
            in(reg) 1u64,
            options(nomem, nostack)
        );
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    for _ in 0..4 {
        x = std::hint::black_box(x + 1);
    }
    x
}

/// The probe: `threads` threads, each timing its own chain at once with the others.
pub struct ClockProbe {
    threads: usize,
}

impl ClockProbe {
    pub fn new(threads: usize) -> Self {
        Self {
            threads: threads.max(1),
        }
    }

    /// Adds per second of the slowest thread (a parallel pass ends with its slowest worker), one
    /// pass, so that time the host took away shows (the memory probe's best of several passes is
    /// there to find the ceiling; this one is there to find the dips); `None` where this build
    /// cannot hold the chain to one add per cycle (it would measure the compiler's loop, not the
    /// core).
    pub fn rate(&self) -> Option<f64> {
        if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            return None;
        }
        Some(std::thread::scope(|s| {
            let hs: Vec<_> = (0..self.threads)
                .map(|_| {
                    s.spawn(|| {
                        let t = std::time::Instant::now();
                        let n = add_chain(ADDS);
                        n as f64 / t.elapsed().as_secs_f64()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0.0))
                .fold(f64::INFINITY, f64::min)
        }))
    }
}

#[cfg(test)]
mod tests {
    /// The chain runs every add it is asked for (four to a step), so a rate is adds, not loops.
    #[test]
    fn the_chain_counts_its_adds() {
        for n in [0u64, 3, 4, 5, 1000, 1 << 16] {
            assert_eq!(super::add_chain(n), n / 4 * 4, "n = {n}");
        }
    }

    /// Where the probe is built it gives a positive rate for one thread and for two.
    #[test]
    fn the_probe_gives_a_rate_where_it_is_built() {
        for threads in [1, 2] {
            let r = super::ClockProbe::new(threads).rate();
            if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
                assert!(r.is_some_and(|r| r.is_finite() && r > 0.0), "{r:?}");
            } else {
                assert_eq!(r, None);
            }
        }
    }
}
