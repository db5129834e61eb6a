//! Byte-level BPE: GPT-2's byte <-> printable-character map and merging by rank.

use std::collections::HashMap;

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other 68 bytes to
/// code points from U+0100 up, so every byte sequence is a string of visible characters.
pub fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in out.iter_mut().enumerate() {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        let cp = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(cp).unwrap_or('\u{fffd}');
    }
    out
}

/// The merge table: a pair of adjacent token ids -> (rank, id of the merged token).
#[derive(Debug, Default)]
pub struct Merges {
    table: HashMap<(u32, u32), (u32, u32)>,
}

impl Merges {
    pub fn insert(&mut self, left: u32, right: u32, rank: u32, merged: u32) {
        // A repeated pair keeps its first (best) rank, as HF's loader does.
        self.table.entry((left, right)).or_insert((rank, merged));
    }

    /// Merges `symbols` in place: repeatedly the lowest-ranked adjacent pair, leftmost first,
    /// which is the order HF's heap-based `merge_all` applies them in.
    pub fn apply(&self, symbols: &mut Vec<u32>) {
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for (i, w) in symbols.windows(2).enumerate() {
                if let Some(&(rank, merged)) = self.table.get(&(w[0], w[1])) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, merged));
                    }
                }
            }
            let Some((_, i, merged)) = best else {
                return;
            };
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_with_gpt2_landmarks() {
        let m = byte_chars();
        assert_eq!(m[b'a' as usize], 'a');
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
        let set: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(set.len(), 256);
    }

    #[test]
    fn merges_apply_by_rank() {
        // ids: a=0 b=1 c=2 ab=3 bc=4 abc=5
        let mut m = Merges::default();
        m.insert(1, 2, 0, 4); // b c first
        m.insert(0, 1, 1, 3);
        m.insert(0, 4, 2, 5);
        let mut s = vec![0, 1, 2];
        m.apply(&mut s);
        assert_eq!(s, vec![5]);
        let mut s = vec![0, 1, 0, 1];
        m.apply(&mut s);
        assert_eq!(s, vec![3, 3]);
    }
}
