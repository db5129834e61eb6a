//! Prompt-lookup drafting: the tokens that followed the most recent earlier occurrence of the
//! context's last few tokens, as guesses of what comes next. An answer about a frame repeats
//! the option names and phrases of its prompt and of its own reasoning, and checking several
//! guessed tokens in one forward pass reads the weights once for all of them
//! (`Session::advance`), where decoding them one at a time reads them once each.

/// Longest n-gram looked up; shorter ones are tried when it has no earlier occurrence.
pub const MAX_NGRAM: usize = 3;

/// Up to `max` tokens drafted to follow `history`: for n from [`MAX_NGRAM`] down to 1, the
/// tokens after the most recent earlier occurrence of `history`'s last n tokens; empty when
/// none of them occurred before.
pub fn draft(history: &[u32], max: usize) -> &[u32] {
    let len = history.len();
    if max == 0 {
        return &[];
    }
    for n in (1..=MAX_NGRAM.min(len.saturating_sub(1))).rev() {
        let tail = &history[len - n..];
        // Occurrences ending before the tail itself does, latest first.
        let found = (0..len - n).rev().find(|&i| &history[i..i + n] == tail);
        if let Some(i) = found {
            let from = i + n;
            return &history[from..(from + max).min(len)];
        }
    }
    &[]
}

#[cfg(test)]
mod tests {
    use super::draft;

    #[test]
    fn drafts_follow_the_latest_longest_match() {
        // "1 2 3" occurs at 0 and 4; the latest (4) is followed by 7 8 ...
        let h = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3];
        assert_eq!(draft(&h, 2), &[7, 8]);
        assert_eq!(draft(&h, 10), &[7, 8, 5, 1, 2, 3]);
        // Only a shorter n-gram matches: "4 2" never occurred, "2" did (latest at 1).
        assert_eq!(draft(&[5, 2, 6, 4, 2], 3), &[6, 4, 2]);
        // A longer match wins over a later shorter one.
        assert_eq!(draft(&[8, 9, 1, 7, 9, 3, 8, 9], 1), &[1]);
    }

    #[test]
    fn no_match_or_no_room_drafts_nothing() {
        assert!(draft(&[1, 2, 3], 4).is_empty());
        assert!(draft(&[1, 2, 1], 0).is_empty());
        assert!(draft(&[], 4).is_empty());
        assert!(draft(&[7], 4).is_empty());
        assert_eq!(draft(&[7, 7], 4), &[7]);
    }
}
