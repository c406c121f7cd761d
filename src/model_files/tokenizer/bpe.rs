//! Byte-level BPE (`tokenizer.ggml.model = gpt2`: GPT-2, Llama 3, Qwen 2, SmolLM) as
//! llama.cpp's `llm_tokenizer_bpe_session` runs it: each pre-tokenized word is spelled in
//! GPT-2's printable byte alphabet, then the adjacent pair with the lowest merge rank is merged
//! (leftmost first on ties) until no listed merge applies.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::bpe_pre::{self, PreConfig};
use super::lookup::TokenLookup;

/// GPT-2's byte -> printable character table (`bytes_to_unicode`): printable Latin-1 bytes
/// stand for themselves, the other 68 are moved to U+0100 and up, in order.
pub(super) fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            b as u32
        } else {
            extra += 1;
            255 + extra
        };
        *slot = char::from_u32(cp).unwrap_or('\0');
    }
    table
}

/// A symbol of a word being merged: byte start, byte length (0 once merged away), previous
/// and next symbol.
type Sym = (usize, usize, Option<usize>, Option<usize>);
/// Merge candidates `(rank, left, right, left length, right length)`, lowest rank first.
type Queue = BinaryHeap<Reverse<(u32, usize, usize, usize, usize)>>;

/// The merge list of a byte-level BPE vocabulary.
pub(super) struct Merges {
    /// `"left right"` (as stored in `tokenizer.ggml.merges`) -> rank.
    ranks: HashMap<String, u32>,
    byte_chars: [char; 256],
}

impl Merges {
    /// From the `tokenizer.ggml.merges` strings; a line is split at its first space after
    /// the first character, as llama.cpp does.
    pub(super) fn new(lines: Vec<String>) -> Self {
        let mut ranks = HashMap::with_capacity(lines.len());
        for (rank, line) in lines.into_iter().enumerate() {
            ranks.entry(line).or_insert(rank as u32);
        }
        Self {
            ranks,
            byte_chars: byte_chars(),
        }
    }

    /// The merges in rank order, as `(left, right)`.
    pub(super) fn pairs(&self) -> Vec<(String, String)> {
        let mut lines: Vec<(&String, &u32)> = self.ranks.iter().collect();
        lines.sort_by_key(|(_, &r)| r);
        lines
            .into_iter()
            .map(
                |(line, _)| match line.char_indices().skip(1).find(|&(_, c)| c == ' ') {
                    Some((i, _)) => (line[..i].to_string(), line[i + 1..].to_string()),
                    None => (String::new(), String::new()),
                },
            )
            .collect()
    }

    fn rank(&self, key: &mut String, left: &str, right: &str) -> Option<u32> {
        key.clear();
        key.push_str(left);
        key.push(' ');
        key.push_str(right);
        self.ranks.get(key.as_str()).copied()
    }

    /// Appends the tokens of one raw-text fragment (no special tokens in it) to `out`.
    pub(super) fn tokenize(
        &self,
        vocab: &impl TokenLookup,
        pre: PreConfig,
        text: &str,
        out: &mut Vec<u32>,
    ) {
        let mut key = String::new();
        for word in bpe_pre::split(pre.kind, text) {
            let encoded: String = word.bytes().map(|b| self.byte_chars[b as usize]).collect();
            if pre.ignore_merges {
                if let Some(id) = vocab.id(&encoded) {
                    out.push(id);
                    continue;
                }
            }
            self.merge_word(vocab, &encoded, &mut key, out);
        }
    }

    fn merge_word(
        &self,
        vocab: &impl TokenLookup,
        word: &str,
        key: &mut String,
        out: &mut Vec<u32>,
    ) {
        // (start, len, prev, next) per symbol, one per character to begin with.
        let mut syms: Vec<Sym> = word
            .char_indices()
            .enumerate()
            .map(|(i, (start, c))| (start, c.len_utf8(), i.checked_sub(1), Some(i + 1)))
            .collect();
        if let Some(last) = syms.last_mut() {
            last.3 = None;
        }
        // Min-heap on (rank, left); the lengths tell stale entries apart.
        let mut queue: Queue = BinaryHeap::new();
        let add = |queue: &mut Queue,
                   syms: &[Sym],
                   key: &mut String,
                   l: Option<usize>,
                   r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let (ls, ln, ..) = syms[l];
            let (rs, rn, ..) = syms[r];
            if let Some(rank) = self.rank(key, &word[ls..ls + ln], &word[rs..rs + rn]) {
                queue.push(Reverse((rank, l, r, ln, rn)));
            }
        };
        for i in 1..syms.len() {
            add(&mut queue, &syms, key, Some(i - 1), Some(i));
        }
        while let Some(Reverse((_, l, r, ln, rn))) = queue.pop() {
            if syms[l].1 != ln || syms[r].1 != rn || ln == 0 || rn == 0 {
                continue;
            }
            let next = syms[r].3;
            syms[l].1 += rn;
            syms[r].1 = 0;
            syms[l].3 = next;
            if let Some(n) = next {
                syms[n].2 = Some(l);
            }
            add(&mut queue, &syms, key, syms[l].2, Some(l));
            add(&mut queue, &syms, key, Some(l), next);
        }
        let mut at = (!syms.is_empty()).then_some(0);
        while let Some(i) = at {
            let (start, len, _, next) = syms[i];
            let piece = &word[start..start + len];
            match vocab.id(piece) {
                Some(id) => out.push(id),
                // llama.cpp then tries each byte of the piece as a token: only ASCII ones
                // can be, the rest are dropped.
                None => out.extend(
                    piece
                        .chars()
                        .filter(char::is_ascii)
                        .filter_map(|c| vocab.id(c.encode_utf8(&mut [0; 4]))),
                ),
            }
            at = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let t = byte_chars();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ'); // U+0120
        assert_eq!(t[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(t[0xAD], 'Ń'); // U+0143, the last moved byte
    }
}
