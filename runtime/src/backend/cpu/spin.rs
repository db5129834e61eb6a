//! Keeping the pool's other workers awake for the length of a forward pass.
//!
//! A decoded token is some 200 parallel loops with short serial stretches between them (a norm,
//! SwiGLU over one row, a bias). rayon parks a worker that finds no work for a few dozen yields,
//! and waking it costs a futex call and, in a VM, the wake-up of a halted vCPU: the next loop runs
//! on one thread until the other is back. llama.cpp's workers spin between operations for that
//! reason; here the other workers each run a spinner job for the length of the pass, which steals
//! the loops' halves as they appear (`rayon::yield_now`) and parks nothing.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on the current worker while `helpers` other workers spin, stealing its parallel work.
/// Nothing is allocated: the spinners are halves of nested `rayon::join`s.
pub(super) fn with_spinners<R: Send>(helpers: usize, f: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    let home = rayon::current_thread_index();
    let (r, ()) = rayon::join(
        || {
            // Set on return and on unwind, so no spinner outlives the pass.
            let _stop = Stop(&done);
            f()
        },
        || spinners(helpers, &done, home),
    );
    r
}

/// `n` spinners: one here, the rest in the other half of a join, so idle workers steal them.
fn spinners(n: usize, done: &AtomicBool, home: Option<usize>) {
    match n {
        0 => {}
        1 => spin(done, home),
        _ => {
            rayon::join(|| spin(done, home), || spinners(n - 1, done, home));
        }
    }
}

/// Polls for work a spinner makes before it yields its core on each further poll.
const IDLE_POLLS: u32 = 256;

fn spin(done: &AtomicBool, home: Option<usize>) {
    // The pass's own worker can pop a spinner nobody stole while it waits inside the pass; spinning
    // there would wait on itself, so it returns at once.
    if rayon::current_thread_index() == home {
        return;
    }
    let mut idle = 0u32;
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            None => return,
            Some(rayon::Yield::Executed) => idle = 0,
            Some(rayon::Yield::Idle) => {
                idle = idle.saturating_add(1);
                // A long serial stretch, or a machine with more runnable threads than cores: give
                // the core away between polls (a cheap system call when nothing else wants it).
                if idle > IDLE_POLLS {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    /// Parallel loops inside a pass give their results, nested and concurrent passes finish, and
    /// a panic inside a pass reaches the caller instead of leaving a spinner waiting on it.
    #[test]
    fn passes_finish_and_panics_propagate() {
        let b = CpuBackend::new(Some(3)).unwrap();
        let sum = |n: u64| (0..n).into_par_iter().map(|i| i * i).sum::<u64>();
        let want = sum(10_000);
        assert_eq!(b.scope(|| sum(10_000)), want);
        assert_eq!(b.scope(|| b.scope(|| sum(10_000)) + sum(10_000)), 2 * want);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..20).map(|_| b.scope(|| sum(10_000))).sum::<u64>()))
                .collect();
            for h in hs {
                assert_eq!(h.join().unwrap(), 20 * want);
            }
        });
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.scope(|| {
                sum(1000);
                panic!("inside the pass")
            })
        }));
        assert!(r.is_err());
        // The pool is still usable afterwards.
        assert_eq!(b.scope(|| sum(10_000)), want);
    }
}
