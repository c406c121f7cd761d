//! Pre-tokenization for byte-level BPE vocabularies: text -> words, chosen by the GGUF key
//! `tokenizer.ggml.pre`, as llama.cpp's `unicode_regex_split` does it.
//!
//! llama.cpp runs each of a pre-tokenizer's regexes in turn over the fragments the previous one
//! left, a match and the text between matches each becoming a fragment. Its three common
//! regexes (GPT-2, Llama 3, Qwen 2) are hand-written scanners rather than regex engines; they are
//! ported here line for line, with llama.cpp's own Unicode tables ([`super::unicode_flags`]),
//! so that words (and hence tokens) come out identical.

use super::unicode_flags::{RANGES, WHITESPACE};

/// Category bits of one code point (see [`RANGES`]); `whitespace` is llama.cpp's `\s`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(super) struct Flags {
    bits: u8,
    whitespace: bool,
}

impl Flags {
    const NUMBER: u8 = 0x02;
    const LETTER: u8 = 0x04;
    const PUNCTUATION: u8 = 0x20;

    pub(super) fn of(c: char) -> Self {
        let cp = c as u32;
        let i = RANGES.partition_point(|&(start, _)| start <= cp) - 1;
        Self {
            bits: RANGES[i].1,
            whitespace: WHITESPACE.binary_search(&cp).is_ok(),
        }
    }
    fn letter(self) -> bool {
        self.bits & Self::LETTER != 0
    }
    fn number(self) -> bool {
        self.bits & Self::NUMBER != 0
    }
    fn punctuation(self) -> bool {
        self.bits & Self::PUNCTUATION != 0
    }
    /// Inside the fragment at all (llama.cpp's `flags.as_uint() != 0`): every code point has
    /// a category bit, positions past the fragment's end have none.
    fn present(self) -> bool {
        self.bits != 0 || self.whitespace
    }
}

/// The pre-tokenizer families llama.cpp knows, by the split they make.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PreKind {
    /// No or `default` pre-tokenizer: punctuation runs, the GPT-2 regex, digit runs, then
    /// ASCII digits in threes.
    Default,
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// Llama 3: case-insensitive contractions, letters with one leading non-letter,
    /// `\p{N}{1,3}`, newline-aware whitespace.
    Llama3,
    /// Qwen 2: as Llama 3 but digits one by one.
    Qwen2,
    /// StarCoder / SmolLM: every digit alone, then the GPT-2 regex.
    Smollm,
    /// DeepSeek LLM: newlines alone, then runs of Latin/Greek/Cyrillic/... letters, of ASCII and
    /// fullwidth punctuation (each with one leading whitespace), trailing whitespace, CJK and
    /// Hangul runs, number runs.
    DeepseekLlm,
}

/// What a `tokenizer.ggml.pre` name implies, as llama.cpp's `llama_vocab::impl::load` sets it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PreConfig {
    pub kind: PreKind,
    /// A word that is itself a token is emitted whole, without merging (Llama 3).
    pub ignore_merges: bool,
    /// Decoding removes the space before `?!.,` and some apostrophes.
    pub clean_spaces: bool,
    /// BOS is added when `tokenizer.ggml.add_bos_token` is absent.
    pub add_bos: bool,
}

impl PreConfig {
    /// The configuration for `name`, or `None` for a pre-tokenizer this crate does not know.
    pub fn from_name(name: &str) -> Option<Self> {
        let cfg = |kind, ignore_merges, clean_spaces, add_bos| Self {
            kind,
            ignore_merges,
            clean_spaces,
            add_bos,
        };
        use PreKind::*;
        Some(match name {
            "" | "default" => cfg(Default, false, true, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => cfg(Llama3, true, true, true),
            "dbrx" | "smaug-bpe" => cfg(Llama3, false, true, false),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais"
            | "exaone4" => cfg(Gpt2, false, true, false),
            "trillion" | "granite-docling" => cfg(Gpt2, false, false, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "grok-2" => {
                cfg(Qwen2, false, false, false)
            }
            "stablelm2" | "megrez" => cfg(Qwen2, false, true, false),
            "smollm" | "command-r" => cfg(Smollm, false, false, false),
            "deepseek-llm" => cfg(DeepseekLlm, false, false, false),
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => {
                cfg(Smollm, false, true, false)
            }
            _ => return None,
        })
    }
}

/// Splits `text` into the words BPE merges within.
pub fn split(kind: PreKind, text: &str) -> Vec<&str> {
    let cpts: Vec<char> = text.chars().collect();
    let mut frags = vec![cpts.len()];
    match kind {
        PreKind::Default => {
            frags = split_runs(&cpts, &frags, |c| {
                Flags::of(c).punctuation() || "$+<=>^~|".contains(c)
            });
            frags = split_gpt2(&cpts, &frags);
            frags = split_runs(&cpts, &frags, |c| Flags::of(c).number());
            frags = split_ascii_digit_triples(&cpts, &frags);
        }
        PreKind::Gpt2 => frags = split_gpt2(&cpts, &frags),
        PreKind::Llama3 => frags = split_llama3(&cpts, &frags, true),
        PreKind::Qwen2 => frags = split_llama3(&cpts, &frags, false),
        PreKind::Smollm => {
            frags = split_each(&cpts, &frags, |c| Flags::of(c).number());
            frags = split_gpt2(&cpts, &frags);
        }
        PreKind::DeepseekLlm => {
            frags = split_each(&cpts, &frags, |c| c == '\r' || c == '\n');
            let letters = char_class(DEEPSEEK_LETTERS);
            let punct = char_class(DEEPSEEK_PUNCT);
            frags = split_space_run(&cpts, &frags, |c| in_class(&letters, c));
            frags = split_space_run(&cpts, &frags, |c| in_class(&punct, c));
            frags = split_trailing_space(&cpts, &frags);
            let cjk = char_class(DEEPSEEK_CJK);
            frags = split_runs(&cpts, &frags, |c| in_class(&cjk, wide(c)));
            frags = split_runs(&cpts, &frags, |c| Flags::of(c).number());
        }
    }
    // Fragment lengths (in code points) back to string slices.
    let starts: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let mut pos = 0;
    frags
        .into_iter()
        .map(|len| {
            let word = &text[starts[pos]..starts[pos + len]];
            pos += len;
            word
        })
        .collect()
}

/// The bracket classes of llama.cpp's DeepSeek LLM regexes (`\s?[...]+`, `[...]+`), escaped
/// so that no editor normalizes them (the letters hold U+2126 OHM and U+212A KELVIN signs).
pub(super) const DEEPSEEK_LETTERS: &str =
    "A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}";
pub(super) const DEEPSEEK_PUNCT: &str =
    "!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}";
pub(super) const DEEPSEEK_CJK: &str = "\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}";

/// A bracket class (`a-z` ranges and single characters) as inclusive ranges.
fn char_class(class: &str) -> Vec<(char, char)> {
    let chars: Vec<char> = class.chars().collect();
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if i + 2 < chars.len() && chars[i + 1] == '-' {
            ranges.push((chars[i], chars[i + 2]));
            i += 3;
        } else {
            ranges.push((chars[i], chars[i]));
            i += 1;
        }
    }
    ranges
}

fn in_class(ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi)
}

/// The code point llama.cpp's `std::wregex` sees: non-ASCII whitespace becomes `\v`.
fn wide(c: char) -> char {
    if !c.is_ascii() && Flags::of(c).whitespace {
        '\x0B'
    } else {
        c
    }
}

/// ECMAScript `\s` (on [`wide`] code points).
fn ecma_space(c: char) -> bool {
    matches!(wide(c), ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

/// `\s?[class]+` as a splitting regex, matched as `std::wregex` does on [`wide`] text.
fn split_space_run(cpts: &[char], offsets: &[usize], class: impl Fn(char) -> bool) -> Vec<usize> {
    let class = |c: char| class(wide(c));
    per_fragment(cpts, offsets, |f, out| {
        let (mut pos, mut last) = (f.ini, f.ini);
        while pos < f.end {
            // `\s?` takes a whitespace only if the class follows it.
            let body = if ecma_space(cpts[pos]) { pos + 1 } else { pos };
            let body = if body < f.end && class(cpts[body]) {
                body
            } else if class(cpts[pos]) {
                pos
            } else {
                pos += 1;
                continue;
            };
            let mut end = body;
            while end < f.end && class(cpts[end]) {
                end += 1;
            }
            if pos > last {
                out.push(pos - last);
            }
            out.push(end - pos);
            pos = end;
            last = end;
        }
        if f.end > last {
            out.push(f.end - last);
        }
    })
}

/// `\s+$`: the whitespace ending a fragment.
fn split_trailing_space(cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    per_fragment(cpts, offsets, |f, out| {
        let mut start = f.end;
        while start > f.ini && ecma_space(cpts[start - 1]) {
            start -= 1;
        }
        if start > f.ini {
            out.push(start - f.ini);
        }
        if f.end > start {
            out.push(f.end - start);
        }
    })
}

/// Reads code points and flags inside one fragment; outside it, nothing.
struct Frag<'a> {
    cpts: &'a [char],
    ini: usize,
    end: usize,
}

impl Frag<'_> {
    fn cpt(&self, pos: usize) -> Option<char> {
        (self.ini <= pos && pos < self.end).then(|| self.cpts[pos])
    }
    fn flags(&self, pos: usize) -> Flags {
        self.cpt(pos).map(Flags::of).unwrap_or_default()
    }
}

/// Runs `scan` over each fragment; `scan` pushes the lengths of the pieces it cuts.
fn per_fragment(
    cpts: &[char],
    offsets: &[usize],
    mut scan: impl FnMut(&Frag, &mut Vec<usize>),
) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let frag = Frag {
            cpts,
            ini: start,
            end: start + len,
        };
        scan(&frag, &mut out);
        start += len;
    }
    out
}

/// `[class]+` as a splitting regex: runs of `class` and the text between become fragments.
fn split_runs(cpts: &[char], offsets: &[usize], class: impl Fn(char) -> bool) -> Vec<usize> {
    per_fragment(cpts, offsets, |f, out| {
        let mut pos = f.ini;
        while pos < f.end {
            let first = class(cpts[pos]);
            let start = pos;
            while pos < f.end && class(cpts[pos]) == first {
                pos += 1;
            }
            out.push(pos - start);
        }
    })
}

/// `[class]` as a splitting regex: each code point of `class` alone.
fn split_each(cpts: &[char], offsets: &[usize], class: impl Fn(char) -> bool) -> Vec<usize> {
    per_fragment(cpts, offsets, |f, out| {
        let mut gap = 0;
        for &c in &cpts[f.ini..f.end] {
            if class(c) {
                if gap > 0 {
                    out.push(gap);
                    gap = 0;
                }
                out.push(1);
            } else {
                gap += 1;
            }
        }
        if gap > 0 {
            out.push(gap);
        }
    })
}

/// `[0-9][0-9][0-9]`: ASCII digits in non-overlapping triples from the left.
fn split_ascii_digit_triples(cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    per_fragment(cpts, offsets, |f, out| {
        let (mut pos, mut last) = (f.ini, f.ini);
        while pos + 3 <= f.end {
            if cpts[pos..pos + 3].iter().all(char::is_ascii_digit) {
                if pos > last {
                    out.push(pos - last);
                }
                out.push(3);
                pos += 3;
                last = pos;
            } else {
                pos += 1;
            }
        }
        if f.end > last {
            out.push(f.end - last);
        }
    })
}

/// Cuts a piece ending at `end` (if non-empty) and returns its length.
fn cut(out: &mut Vec<usize>, prev_end: &mut usize, end: usize) -> usize {
    let len = end - *prev_end;
    if len > 0 {
        out.push(len);
    }
    *prev_end = end;
    len
}

/// llama.cpp's `unicode_regex_split_custom_gpt2`.
fn split_gpt2(cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    per_fragment(cpts, offsets, |f, out| {
        let mut prev_end = f.ini;
        let mut pos = f.ini;
        while pos < f.end {
            let cpt = f.cpt(pos);
            let flags = f.flags(pos);
            // 's|'t|'re|'ve|'m|'ll|'d
            if cpt == Some('\'') && pos + 1 < f.end {
                let next = f.cpt(pos + 1);
                if matches!(next, Some('s' | 't' | 'm' | 'd')) {
                    pos += cut(out, &mut prev_end, pos + 2);
                    continue;
                }
                if pos + 2 < f.end {
                    let pair = (next, f.cpt(pos + 2));
                    if matches!(
                        pair,
                        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
                    ) {
                        pos += cut(out, &mut prev_end, pos + 3);
                        continue;
                    }
                }
            }
            let space = cpt == Some(' ');
            let mut flags2 = if space { f.flags(pos + 1) } else { flags };
            //  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+
            let classes: [fn(Flags) -> bool; 3] = [Flags::letter, Flags::number, |fl| {
                !(fl.whitespace || fl.letter() || fl.number()) && fl.present()
            }];
            if let Some(class) = classes.into_iter().find(|class| class(flags2)) {
                pos += usize::from(space);
                while class(flags2) {
                    pos += 1;
                    flags2 = f.flags(pos);
                }
                cut(out, &mut prev_end, pos);
                continue;
            }
            let mut n_ws = 0;
            while f.flags(pos + n_ws).whitespace {
                n_ws += 1;
            }
            // \s+(?!\S)
            if n_ws > 1 && f.cpt(pos + n_ws).is_some() {
                pos += n_ws - 1;
                cut(out, &mut prev_end, pos);
                continue;
            }
            // \s+
            if n_ws > 0 {
                pos += n_ws;
                cut(out, &mut prev_end, pos);
                continue;
            }
            pos += 1;
            cut(out, &mut prev_end, pos);
        }
    })
}

/// llama.cpp's `unicode_regex_split_custom_llama3` (`digits_in_threes`) and
/// `unicode_regex_split_custom_qwen2` (digits one by one), which differ only there.
fn split_llama3(cpts: &[char], offsets: &[usize], digits_in_threes: bool) -> Vec<usize> {
    per_fragment(cpts, offsets, |f, out| {
        let mut prev_end = f.ini;
        let mut pos = f.ini;
        while pos < f.end {
            let cpt = f.cpt(pos);
            let flags = f.flags(pos);
            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if cpt == Some('\'') && pos + 1 < f.end {
                let lower = |p| f.cpt(p).map(|c: char| c.to_ascii_lowercase());
                let next = lower(pos + 1);
                if matches!(next, Some('s' | 't' | 'm' | 'd')) {
                    pos += cut(out, &mut prev_end, pos + 2);
                    continue;
                }
                if pos + 2 < f.end {
                    let pair = (next, lower(pos + 2));
                    if matches!(
                        pair,
                        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
                    ) {
                        pos += cut(out, &mut prev_end, pos + 3);
                        continue;
                    }
                }
            }
            let newline = |c: Option<char>| matches!(c, Some('\r' | '\n'));
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(newline(cpt) || flags.number()) && (flags.letter() || f.flags(pos + 1).letter()) {
                pos += 1;
                while f.flags(pos).letter() {
                    pos += 1;
                }
                cut(out, &mut prev_end, pos);
                continue;
            }
            // \p{N}{1,3} (Llama 3) or \p{N} (Qwen 2)
            if flags.number() {
                if digits_in_threes {
                    let mut ini = pos;
                    while f.flags(pos).number() {
                        pos += 1;
                        if pos - ini >= 3 {
                            cut(out, &mut prev_end, pos);
                            ini = pos;
                        }
                    }
                } else {
                    pos += 1;
                }
                cut(out, &mut prev_end, pos);
                continue;
            }
            //  ?[^\s\p{L}\p{N}]+[\r\n]*
            let other = |fl: Flags| !(fl.whitespace || fl.letter() || fl.number()) && fl.present();
            let mut flags2 = if cpt == Some(' ') {
                f.flags(pos + 1)
            } else {
                flags
            };
            if !(flags2.whitespace || flags2.letter() || flags2.number()) && flags.present() {
                pos += usize::from(cpt == Some(' '));
                while other(flags2) {
                    pos += 1;
                    flags2 = f.flags(pos);
                }
                while newline(f.cpt(pos)) {
                    pos += 1;
                }
                cut(out, &mut prev_end, pos);
                continue;
            }
            let mut n_ws = 0;
            let mut last_newline_end = 0;
            while f.flags(pos + n_ws).whitespace {
                if newline(f.cpt(pos + n_ws)) {
                    last_newline_end = pos + n_ws + 1;
                }
                n_ws += 1;
            }
            // \s*[\r\n]+
            if last_newline_end > 0 {
                pos = last_newline_end;
                cut(out, &mut prev_end, pos);
                continue;
            }
            // \s+(?!\S)
            if n_ws > 1 && f.cpt(pos + n_ws).is_some() {
                pos += n_ws - 1;
                cut(out, &mut prev_end, pos);
                continue;
            }
            // \s+
            if n_ws > 0 {
                pos += n_ws;
                cut(out, &mut prev_end, pos);
                continue;
            }
            pos += 1;
            cut(out, &mut prev_end, pos);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_llama_cpp_tables() {
        assert!(Flags::of('a').letter() && Flags::of('é').letter() && Flags::of('中').letter());
        assert!(Flags::of('7').number() && Flags::of('٣').number());
        assert!(Flags::of(' ').whitespace && Flags::of('\u{3000}').whitespace);
        assert!(Flags::of('!').punctuation() && !Flags::of('$').punctuation());
        assert!(Flags::of('\u{10FFFF}').present());
    }

    // Expected words worked out by hand from the regexes in the comments above.
    #[test]
    fn gpt2_words() {
        assert_eq!(
            split(PreKind::Gpt2, "Hello world's  end\n\n  x 123!!"),
            ["Hello", " world", "'s", " ", " end", "\n\n ", " x", " 123", "!!"]
        );
    }

    #[test]
    fn smollm_splits_digits_first() {
        assert_eq!(
            split(PreKind::Smollm, "ab 2024"),
            ["ab", " ", "2", "0", "2", "4"]
        );
    }

    #[test]
    fn llama3_and_qwen2_words() {
        assert_eq!(
            split(PreKind::Llama3, "I'LL pay 12345 $ now.\n\n  ok"),
            ["I", "'LL", " pay", " ", "123", "45", " $", " now", ".\n\n", " ", " ok"]
        );
        assert_eq!(split(PreKind::Qwen2, "x 123"), ["x", " ", "1", "2", "3"]);
    }

    #[test]
    fn deepseek_llm_words() {
        assert_eq!(
            split(PreKind::DeepseekLlm, "Hi, 你好 there 42\n  "),
            ["Hi", ",", " ", "你好", " there", " ", "42", "\n", "  "]
        );
    }

    #[test]
    fn default_words() {
        assert_eq!(
            split(PreKind::Default, "a+b 12345"),
            ["a", "+", "b", " ", "123", "45"]
        );
    }
}
