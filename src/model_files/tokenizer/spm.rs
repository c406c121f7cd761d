//! SentencePiece (`tokenizer.ggml.model = llama`: Llama 2, Mistral, Gemma) as llama.cpp's
//! `llm_tokenizer_spm_session` runs it: start from single UTF-8 characters, repeatedly merge
//! the adjacent pair whose concatenation is the vocabulary entry with the highest score
//! (leftmost first on ties), then spell any piece that is not a token as `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use anyhow::{bail, Result};

use super::lookup::TokenLookup;

/// One piece of the text being merged, linked to its neighbours; `n == 0` once merged away.
#[derive(Clone, Copy)]
struct Symbol {
    prev: Option<usize>,
    next: Option<usize>,
    start: usize,
    n: usize,
}

/// A candidate merge of symbols `left` and `right` into a token of `score`; `size` is the
/// byte length it had when queued, so stale candidates can be recognised.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl Ord for Bigram {
    /// Higher score first, then the leftmost (llama.cpp's `llm_bigram_spm::comparator`).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}

/// Appends the tokens of `text` (spaces already escaped as `▁`) to `out`.
pub(super) fn tokenize(vocab: &impl TokenLookup, text: &str, out: &mut Vec<u32>) -> Result<()> {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        symbols.push(Symbol {
            prev: i.checked_sub(1),
            next: Some(i + 1),
            start,
            n: c.len_utf8(),
        });
    }
    let Some(last) = symbols.last_mut() else {
        return Ok(());
    };
    last.next = None;

    let mut queue = BinaryHeap::new();
    let try_add = |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left, right| {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let (l, r): (&Symbol, &Symbol) = (&symbols[left], &symbols[right]);
        let piece = &text[l.start..l.start + l.n + r.n];
        if let Some(id) = vocab.id(piece) {
            queue.push(Bigram {
                left,
                right,
                score: vocab.score(id),
                size: piece.len(),
            });
        }
    };
    for i in 1..symbols.len() {
        try_add(&mut queue, &symbols, Some(i - 1), Some(i));
    }
    while let Some(bigram) = queue.pop() {
        let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
        if l.n == 0 || r.n == 0 || l.n + r.n != bigram.size {
            continue;
        }
        // Merge the right symbol into the left one and unlink it.
        symbols[bigram.left].n += r.n;
        symbols[bigram.right].n = 0;
        symbols[bigram.left].next = r.next;
        if let Some(next) = r.next {
            symbols[next].prev = Some(bigram.left);
        }
        try_add(&mut queue, &symbols, l.prev, Some(bigram.left));
        try_add(&mut queue, &symbols, Some(bigram.left), r.next);
    }

    let mut at = Some(0);
    while let Some(i) = at {
        let s = symbols[i];
        let piece = &text[s.start..s.start + s.n];
        // A merged piece is always a token; a single character may not be.
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    out.push(byte_token(vocab, b)?);
                }
            }
        }
        at = s.next;
    }
    Ok(())
}

/// The `<0xXX>` token of a byte, else the byte itself as a token (llama.cpp's `byte_to_token`).
pub(super) fn byte_token(vocab: &impl TokenLookup, b: u8) -> Result<u32> {
    if let Some(id) = vocab.id(&format!("<0x{b:02X}>")) {
        return Ok(id);
    }
    if b.is_ascii() {
        if let Some(id) = vocab.id(std::str::from_utf8(&[b]).unwrap_or_default()) {
            return Ok(id);
        }
    }
    bail!("the vocabulary has no token for byte 0x{b:02X} (no `<0x{b:02X}>` byte-fallback token)")
}
