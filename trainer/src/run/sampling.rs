//! Which questions a step trains on: the ASCL curriculum's batches, or shuffled passes over the
//! data. Both are deterministic in the seed and the sequence of draws, so a resume rebuilds the
//! state by replaying the recorded draw sizes and step rewards instead of serialising it.

use crate::ascl::curriculum::Curriculum;
use crate::rng::SplitMix64;

pub enum QuestionSampler {
    Curriculum(Box<Curriculum>),
    Epochs {
        rng: SplitMix64,
        order: Vec<usize>,
        pos: usize,
    },
}

impl QuestionSampler {
    pub fn epochs(n: usize, seed: u64) -> Self {
        QuestionSampler::Epochs {
            rng: SplitMix64::new(seed),
            order: (0..n).collect(),
            pos: n,
        }
    }

    pub fn draw(&mut self, n: usize) -> Vec<usize> {
        match self {
            QuestionSampler::Curriculum(c) => c.next_batch(n),
            QuestionSampler::Epochs { rng, order, pos } => (0..n)
                .map(|_| {
                    if *pos >= order.len() {
                        rng.shuffle(order);
                        *pos = 0;
                    }
                    *pos += 1;
                    order[*pos - 1]
                })
                .collect(),
        }
    }

    /// Ends a step with its mean reward (reward pacing of the curriculum).
    pub fn record(&mut self, mean_reward: f32) {
        if let QuestionSampler::Curriculum(c) = self {
            c.record(mean_reward);
        }
    }

    pub fn stage(&self) -> usize {
        match self {
            QuestionSampler::Curriculum(c) => c.stage(),
            QuestionSampler::Epochs { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_every_question_before_repeating() {
        let mut s = QuestionSampler::epochs(5, 1);
        let mut first: Vec<usize> = s.draw(5);
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
        let mut again = QuestionSampler::epochs(5, 1);
        again.draw(5);
        assert_eq!(s.draw(3), again.draw(3));
    }
}
