//! Next-token choice: repetition penalty, then greedy at temperature 0, otherwise temperature,
//! top-k, top-p and min-p filtering and a draw from a seeded generator (same seed, same text).
//! All scratch lives in the sampler, so a generation loop does not allocate per token.

/// Sampling settings; the defaults are greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below) is greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set whose mass reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// CTRL-style penalty on tokens already in the context (> 1 discourages repeats); 1 is off.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// splitmix64: tiny, seedable, and good enough for drawing one uniform per token.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// (probability, id) candidates; reused between calls.
    scratch: Vec<(f32, u32)>,
    seen: Vec<bool>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self {
            rng: Rng(params.seed),
            params,
            scratch: Vec::new(),
            seen: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (modified in place by the repetition penalty), given
    /// the tokens of the context `history`. Greedy ties go to the lowest id.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let rp = self.params.repetition_penalty;
        if rp != 1.0 && rp > 0.0 {
            // Once per distinct token, as llama.cpp and HF do; `seen` is cleared again after.
            self.seen.resize(logits.len(), false);
            for &t in history {
                let t = t as usize;
                if t < logits.len() && !self.seen[t] {
                    self.seen[t] = true;
                    let l = &mut logits[t];
                    *l = if *l > 0.0 { *l / rp } else { *l * rp };
                }
            }
            for &t in history {
                if let Some(s) = self.seen.get_mut(t as usize) {
                    *s = false;
                }
            }
        }
        let p = &self.params;
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.scratch.clear();
        self.scratch.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (((l - max) / p.temperature).exp(), i as u32)),
        );
        let sorted = p.top_k > 0 || p.top_p < 1.0;
        if sorted {
            self.scratch
                .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        }
        if p.top_k > 0 {
            self.scratch.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            let total: f32 = self.scratch.iter().map(|x| x.0).sum();
            let mut acc = 0.0;
            let mut keep = self.scratch.len();
            for (i, x) in self.scratch.iter().enumerate() {
                acc += x.0;
                if acc >= p.top_p * total {
                    keep = i + 1;
                    break;
                }
            }
            self.scratch.truncate(keep);
        }
        if p.min_p > 0.0 {
            // The largest kept weight is exp(0) = 1 (the max logit survives every filter).
            let floor = p.min_p * self.scratch.iter().map(|x| x.0).fold(0.0, f32::max);
            self.scratch.retain(|x| x.0 >= floor);
        }
        let total: f32 = self.scratch.iter().map(|x| x.0).sum();
        let mut r = self.rng.next_f32() * total;
        for &(w, id) in &self.scratch {
            if r < w {
                return id;
            }
            r -= w;
        }
        self.scratch.last().map_or_else(|| argmax(logits), |x| x.1)
    }
}

/// Index of the largest value, lowest index on ties.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_and_seeded_draws() {
        let logits = vec![0.1, 2.0, 1.9, -1.0];
        let mut s = Sampler::new(params(0.0));
        assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..params(1.0)
            });
            (0..32)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(7).contains(&2) && draw(7).contains(&1));
    }

    #[test]
    fn filters_restrict_the_support() {
        let logits = vec![3.0, 2.9, 0.0, -5.0];
        for p in [
            SamplingParams {
                top_k: 2,
                ..params(5.0)
            },
            SamplingParams {
                top_p: 0.6,
                ..params(5.0)
            },
            SamplingParams {
                min_p: 0.6,
                ..params(5.0)
            },
        ] {
            let mut s = Sampler::new(p.clone());
            for _ in 0..200 {
                let t = s.sample(&mut logits.clone(), &[]);
                assert!(t < 2, "{p:?} drew {t}");
            }
        }
    }

    #[test]
    fn repetition_penalty_moves_greedy_off_a_seen_token() {
        let mut l = vec![2.0, 1.8, 0.0];
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 1.5,
            ..params(0.0)
        });
        assert_eq!(s.sample(&mut l, &[0, 0]), 1);
        assert!((l[0] - 2.0 / 1.5).abs() < 1e-6);
    }
}
