//! Next-token choice from a logits row: greedy at temperature 0, otherwise temperature (and top-p)
//! sampling from a seeded generator, so the same seed gives the same text.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 (or below) means greedy.
    pub temperature: f32,
    /// Nucleus mass kept; 1.0 keeps every token.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Reused between calls so a generation loop does not allocate per token.
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            scratch: Vec::new(),
        }
    }

    /// Picks the next token. Ties under greedy go to the lowest id, as `argmax` does in torch.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let t = self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.scratch.clear();
        self.scratch.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (((l - max) / t).exp(), i as u32)),
        );
        if self.params.top_p < 1.0 {
            self.scratch
                .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let total: f32 = self.scratch.iter().map(|p| p.0).sum();
            let mut acc = 0.0;
            let mut keep = self.scratch.len();
            for (i, p) in self.scratch.iter().enumerate() {
                acc += p.0 / total;
                if acc >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.scratch.truncate(keep);
        }
        let total: f32 = self.scratch.iter().map(|p| p.0).sum();
        let mut u = self.rng.random::<f32>() * total;
        for &(p, id) in &self.scratch {
            if u < p {
                return id;
            }
            u -= p;
        }
        // Rounding can leave a sliver of mass past the last candidate.
        self.scratch.last().map_or(0, |p| p.1)
    }
}

/// Index of the largest value (first on ties); NaNs are never chosen over numbers.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_first_on_ties() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn same_seed_same_draws_and_distribution_follows_temperature() {
        let logits = [0.0f32, 1.0, 2.0];
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                seed,
            });
            (0..4000).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        // softmax([0,1,2]) = [0.090, 0.245, 0.665]
        let share = a.iter().filter(|&&t| t == 2).count() as f32 / a.len() as f32;
        assert!((share - 0.665).abs() < 0.03, "{share}");
    }

    #[test]
    fn top_p_cuts_the_tail() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: 1,
        });
        // The top token alone holds 0.665 >= 0.5 of the mass.
        assert!((0..200).all(|_| s.sample(&[0.0, 1.0, 2.0]) == 2));
    }
}
