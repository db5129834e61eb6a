//! Append-only key/value cache, one entry per decoder layer.
//!
//! Appending concatenates rather than writing into a preallocated buffer: `cat` has a backward
//! pass, so a forward that goes through the cache stays differentiable, and prefill followed by
//! single-token decoding runs exactly the same attention code.

use candle_core::{Result, Tensor};

#[derive(Debug, Clone)]
pub struct Cache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl Cache {
    /// An empty cache for a model with `num_layers` decoder layers.
    pub fn new(num_layers: usize) -> Self {
        Cache {
            layers: vec![None; num_layers],
            len: 0,
        }
    }

    /// Tokens already processed (the sequence index the next token will have).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }

    /// Keys of one layer, `[b, kv_heads, len, head_dim]`, if any token was processed.
    pub fn keys(&self, layer: usize) -> Option<&Tensor> {
        self.layers.get(layer)?.as_ref().map(|(k, _)| k)
    }

    /// Appends `[b, kv_heads, n, head_dim]` keys and values along the sequence axis and returns
    /// everything cached for the layer.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let Some(slot) = self.layers.get_mut(layer) else {
            candle_core::bail!(
                "cache has {} layers, layer {layer} requested",
                self.layers.len()
            );
        };
        let (k, v) = match slot.take() {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[&pk, k], 2)?, Tensor::cat(&[&pv, v], 2)?),
        };
        *slot = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Records that `n` more tokens went through every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn appends_along_sequence() {
        let dev = Device::Cpu;
        let mut c = Cache::new(2);
        let a = Tensor::zeros((1, 2, 3, 4), DType::F32, &dev).unwrap();
        let b = Tensor::ones((1, 2, 1, 4), DType::F32, &dev).unwrap();
        c.append(0, &a, &a).unwrap();
        c.advance(3);
        let (k, _) = c.append(0, &b, &b).unwrap();
        c.advance(1);
        assert_eq!(k.dims(), &[1, 2, 4, 4]);
        assert_eq!(c.len(), 4);
        assert!(c.append(5, &b, &b).is_err());
        c.clear();
        assert!(c.is_empty() && c.keys(0).is_none());
    }
}
