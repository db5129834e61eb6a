//! Handing the weight rows of a one-row product to the pool's workers in shrinking pieces.
//!
//! A decode step is some 180 parallel passes over weight rows. Split by rayon's adaptive
//! splitter, each worker's first share becomes a leaf that nobody can split any more, so a pass
//! ends when the slowest leaf does: profiles of the 3B Q4_K_M decode with two threads showed each
//! worker idle for 4-5% of its time. Here the workers take pieces from one cursor under a lock,
//! each piece a share of the rows left (half of them over the worker count: guided
//! self-scheduling), down to [`MIN_PIECE_BYTES`] of weights, so the last pieces are small and a
//! pass takes a few dozen locks.

use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;

/// The smallest piece, in weight bytes: a few microseconds of one core's reading, against a lock
/// that costs well under one.
const MIN_PIECE_BYTES: usize = 64 << 10;

/// The rows not yet handed out of up to `N` matrices, whose outputs are `outs[t]` (one per row)
/// and whose rows take `row_bytes[t]` bytes.
pub(super) struct Pieces<'o, const N: usize> {
    outs: [&'o mut [f32]; N],
    row_bytes: [usize; N],
    /// The matrix handed out now, and its first row not handed out.
    t: usize,
    j: usize,
    left: usize,
    workers: usize,
}

impl<'o, const N: usize> Pieces<'o, N> {
    pub(super) fn new(outs: [&'o mut [f32]; N], row_bytes: [usize; N], workers: usize) -> Self {
        let left = outs.iter().map(|o| o.len()).sum();
        Self {
            outs,
            row_bytes,
            t: 0,
            j: 0,
            left,
            workers: workers.max(1),
        }
    }

    /// The next piece: its matrix, its first row and its outputs; `None` when all are out.
    fn next_piece(&mut self) -> Option<(usize, usize, &'o mut [f32])> {
        while self.outs.get(self.t)?.is_empty() {
            self.t += 1;
            self.j = 0;
        }
        let t = self.t;
        let min = MIN_PIECE_BYTES.div_ceil(self.row_bytes[t].max(1));
        let rest = std::mem::take(&mut self.outs[t]);
        let take = (self.left / (2 * self.workers)).max(min).min(rest.len());
        let (piece, rest) = rest.split_at_mut(take);
        self.outs[t] = rest;
        let j = self.j;
        self.j += take;
        self.left -= take;
        Some((t, j, piece))
    }

    /// Calls `f(t, j, out)` for every piece (matrix `t`, rows from `j`, their outputs `out`) on
    /// as many of the pool's workers as [`Pieces::new`] was given; the first error comes back.
    pub(super) fn run<E: Send>(
        self,
        f: impl Fn(usize, usize, &mut [f32]) -> Result<(), E> + Sync,
    ) -> Result<(), E> {
        let workers = self.workers;
        let cursor = Mutex::new(self);
        let work = || loop {
            // Nothing panics while the cursor is held, so a poisoned lock still holds sound state.
            let piece = cursor
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .next_piece();
            let Some((t, j, out)) = piece else {
                return Ok(());
            };
            f(t, j, out)?;
        };
        (0..workers)
            .into_par_iter()
            .with_max_len(1)
            .try_for_each(|_| work())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of every matrix is handed out once, in order within its matrix, pieces never
    /// cross matrices, they shrink as the rows run out, and none is below the minimum except a
    /// matrix's last.
    #[test]
    fn pieces_cover_every_row_once() {
        let (mut a, mut b, mut c) = (vec![0f32; 5000], vec![0f32; 0], vec![0f32; 300]);
        let row_bytes = [1152, 1152, 6192];
        let mut p = Pieces::new([&mut a[..], &mut b[..], &mut c[..]], row_bytes, 2);
        let mut seen = [0usize; 3];
        let mut sizes = Vec::new();
        while let Some((t, j, out)) = p.next_piece() {
            assert_eq!(j, seen[t], "matrix {t} handed out in order");
            seen[t] += out.len();
            let min = MIN_PIECE_BYTES.div_ceil(row_bytes[t]);
            let last = seen[t] == [5000, 0, 300][t];
            assert!(out.len() >= min || last, "piece of {} rows", out.len());
            out.fill(1.0 + t as f32);
            sizes.push(out.len());
        }
        assert_eq!(seen, [5000, 0, 300]);
        assert!(a.iter().all(|&v| v == 1.0) && c.iter().all(|&v| v == 3.0));
        // The first piece is a quarter of all rows with two workers; later ones are smaller.
        assert_eq!(sizes[0], 5300 / 4);
        assert!(sizes.windows(2).take(5).all(|w| w[1] <= w[0]), "{sizes:?}");
    }

    /// On a pool of two, both workers' pieces fill every output, and an error comes back.
    #[test]
    fn run_fills_every_output_and_returns_errors() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut a = vec![0f32; 20_000];
        pool.install(|| {
            Pieces::new([&mut a[..]], [256], 2)
                .run(|_, j, out| {
                    for (r, o) in out.iter_mut().enumerate() {
                        *o = (j + r) as f32;
                    }
                    Ok::<(), ()>(())
                })
                .unwrap()
        });
        assert!(a.iter().enumerate().all(|(i, &v)| v == i as f32));
        let failed = pool.install(|| {
            Pieces::new([&mut a[..]], [256], 2).run(|_, j, _| if j > 0 { Err(j) } else { Ok(()) })
        });
        assert!(matches!(failed, Err(j) if j > 0));
    }
}
