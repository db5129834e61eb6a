//! DAPO's dynamic sampling: groups whose rewards all agree carry no gradient, so they are dropped
//! and fresh prompts drawn in their place, up to a number of resampling rounds. If the rounds run
//! out, the batch is topped up with the dropped groups (ms-swift's fallback) so that a step always
//! has its size.

use crate::gdqa::metrics::has_zero_variance;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DynamicSampling {
    /// Extra rounds of drawing after the first.
    pub max_resamples: usize,
    /// Reward spread under which a group counts as zero-variance.
    pub tolerance: f32,
}

/// The groups a step trains on, and what it took to get them.
#[derive(Debug)]
pub struct Filled<G> {
    pub groups: Vec<G>,
    /// Rounds drawn after the first.
    pub resamples: usize,
    /// Zero-variance groups put back because the rounds ran out.
    pub padded: usize,
    /// Zero-variance groups seen over all rounds (for the invalid-gradient ratio before filtering).
    pub dropped: usize,
}

impl DynamicSampling {
    /// Calls `draw(round, n)` for `n` new groups until `want` groups with reward spread are
    /// collected or `max_resamples` extra rounds were drawn; `rewards` reads a group's rewards.
    pub fn fill<G, E>(
        &self,
        want: usize,
        mut draw: impl FnMut(usize, usize) -> Result<Vec<G>, E>,
        rewards: impl Fn(&G) -> &[f32],
    ) -> Result<Filled<G>, E> {
        let mut kept = Vec::with_capacity(want);
        let mut spare = Vec::new();
        let mut round = 0;
        loop {
            let need = want - kept.len();
            for g in draw(round, need)? {
                if has_zero_variance(rewards(&g), self.tolerance) {
                    spare.push(g);
                } else if kept.len() < want {
                    kept.push(g);
                }
            }
            if kept.len() >= want || round >= self.max_resamples {
                break;
            }
            round += 1;
        }
        let dropped = spare.len();
        let padded = (want - kept.len()).min(spare.len());
        kept.extend(spare.into_iter().take(padded));
        Ok(Filled {
            groups: kept,
            resamples: round,
            padded,
            dropped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_resamples: usize) -> DynamicSampling {
        DynamicSampling {
            max_resamples,
            tolerance: 1e-6,
        }
    }

    #[test]
    fn replaces_zero_variance_groups_until_full() {
        // Round 0 gives one valid and one flat group; round 1 gives a valid one.
        let rounds = [vec![vec![1.0, 0.0], vec![1.0, 1.0]], vec![vec![0.0, 0.5]]];
        let mut asked = Vec::new();
        let f = policy(3)
            .fill(
                2,
                |r, n| {
                    asked.push(n);
                    Ok::<_, ()>(rounds[r].clone())
                },
                |g: &Vec<f32>| g,
            )
            .unwrap();
        assert_eq!(f.groups, vec![vec![1.0, 0.0], vec![0.0, 0.5]]);
        assert_eq!((f.resamples, f.padded, f.dropped), (1, 0, 1));
        assert_eq!(asked, vec![2, 1]);
    }

    #[test]
    fn falls_back_to_flat_groups_when_rounds_run_out() {
        let f = policy(1)
            .fill(
                2,
                |_, _| Ok::<_, ()>(vec![vec![0.0, 0.0]]),
                |g: &Vec<f32>| g,
            )
            .unwrap();
        assert_eq!(f.groups.len(), 2);
        assert_eq!((f.resamples, f.padded, f.dropped), (1, 2, 2));
    }
}
