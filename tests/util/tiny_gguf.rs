//! A tiny valid GGUF model written byte by byte (llama, 1 layer, hidden 8, a 259-token
//! SentencePiece vocabulary of byte-fallback tokens, a ChatML template), so that tests can
//! write it with any field made hostile: a length, a count, a dimension, an offset.
#![allow(dead_code)]

/// A metadata value as written: its GGUF type and its bytes.
#[derive(Clone, Debug)]
pub struct Md {
    pub kind: u32,
    pub bytes: Vec<u8>,
}

fn str_bytes(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

impl Md {
    pub fn u32(v: u32) -> Self {
        Self {
            kind: 4,
            bytes: v.to_le_bytes().to_vec(),
        }
    }
    pub fn f32(v: f32) -> Self {
        Self {
            kind: 6,
            bytes: v.to_le_bytes().to_vec(),
        }
    }
    pub fn bool(v: bool) -> Self {
        Self {
            kind: 7,
            bytes: vec![v as u8],
        }
    }
    pub fn str(s: &str) -> Self {
        Self {
            kind: 8,
            bytes: str_bytes(s),
        }
    }
    /// An array of `count` elements of type `elem` whose bytes are `body`.
    pub fn array(elem: u32, count: u64, body: Vec<u8>) -> Self {
        let mut bytes = elem.to_le_bytes().to_vec();
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend(body);
        Self { kind: 9, bytes }
    }
    pub fn strs(v: &[String]) -> Self {
        Self::array(
            8,
            v.len() as u64,
            v.iter().flat_map(|s| str_bytes(s)).collect(),
        )
    }
    pub fn i32s(v: &[i32]) -> Self {
        Self::array(
            5,
            v.len() as u64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }
    pub fn f32s(v: &[f32]) -> Self {
        Self::array(
            6,
            v.len() as u64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }
}

/// A tensor info and its f32 data. `dims` are rows first (candle's order); the file stores
/// them reversed, as GGUF does.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
    /// Written instead of the computed offset.
    pub offset: Option<u64>,
    /// Written instead of `dims.len()`.
    pub n_dims: Option<u32>,
}

/// A whole file before it is written: metadata and tensors, in order.
#[derive(Clone, Debug)]
pub struct Gguf {
    pub md: Vec<(String, Md)>,
    pub tensors: Vec<TensorEntry>,
}

pub const HIDDEN: usize = 8;
pub const FF: usize = 16;
pub const VOCAB: usize = 259;
pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\
                          <|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>\
                          assistant\n{% endif %}";

fn values(n: usize, seed: usize, scale: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (((i * 7 + seed * 13) as f32 * 0.61).sin() * scale).to_le_bytes())
        .collect()
}

impl Gguf {
    /// The valid tiny model.
    pub fn tiny() -> Self {
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let mut types = vec![2, 3, 3];
        types.extend([6; 256]);
        let md = vec![
            ("general.architecture".into(), Md::str("llama")),
            ("general.name".into(), Md::str("tiny hostile-test model")),
            ("llama.context_length".into(), Md::u32(64)),
            ("llama.embedding_length".into(), Md::u32(HIDDEN as u32)),
            ("llama.block_count".into(), Md::u32(1)),
            ("llama.feed_forward_length".into(), Md::u32(FF as u32)),
            ("llama.attention.head_count".into(), Md::u32(2)),
            ("llama.attention.head_count_kv".into(), Md::u32(1)),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Md::f32(1e-5),
            ),
            ("tokenizer.ggml.model".into(), Md::str("llama")),
            ("tokenizer.ggml.tokens".into(), Md::strs(&tokens)),
            ("tokenizer.ggml.scores".into(), Md::f32s(&[0.0; VOCAB])),
            ("tokenizer.ggml.token_type".into(), Md::i32s(&types)),
            ("tokenizer.ggml.bos_token_id".into(), Md::u32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Md::u32(2)),
            ("tokenizer.ggml.add_bos_token".into(), Md::bool(true)),
            ("tokenizer.chat_template".into(), Md::str(CHATML)),
        ];
        let t = |name: &str, dims: &[usize], seed: usize, scale: f32| TensorEntry {
            name: name.into(),
            dims: dims.iter().map(|&d| d as u64).collect(),
            ggml_type: 0,
            data: values(dims.iter().product(), seed, scale),
            offset: None,
            n_dims: None,
        };
        let norm = |name: &str| TensorEntry {
            data: [1f32; HIDDEN]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            ..t(name, &[HIDDEN], 0, 1.0)
        };
        let tensors = vec![
            t("token_embd.weight", &[VOCAB, HIDDEN], 1, 1.0),
            norm("output_norm.weight"),
            norm("blk.0.attn_norm.weight"),
            norm("blk.0.ffn_norm.weight"),
            t("blk.0.attn_q.weight", &[HIDDEN, HIDDEN], 2, 0.3),
            t("blk.0.attn_k.weight", &[4, HIDDEN], 3, 0.3),
            t("blk.0.attn_v.weight", &[4, HIDDEN], 4, 0.3),
            t("blk.0.attn_output.weight", &[HIDDEN, HIDDEN], 5, 0.3),
            t("blk.0.ffn_gate.weight", &[FF, HIDDEN], 6, 0.3),
            t("blk.0.ffn_up.weight", &[FF, HIDDEN], 7, 0.3),
            t("blk.0.ffn_down.weight", &[HIDDEN, FF], 8, 0.3),
        ];
        Self { md, tensors }
    }

    /// The metadata value of `key`, to replace.
    pub fn md_mut(&mut self, key: &str) -> &mut Md {
        &mut self
            .md
            .iter_mut()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no {key}"))
            .1
    }

    pub fn tensor_mut(&mut self, name: &str) -> &mut TensorEntry {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    /// The file's bytes (version 3, 32-byte alignment).
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.md.len() as u64).to_le_bytes());
        for (k, v) in &self.md {
            b.extend(str_bytes(k));
            b.extend(v.kind.to_le_bytes());
            b.extend(&v.bytes);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            b.extend(str_bytes(&t.name));
            b.extend(t.n_dims.unwrap_or(t.dims.len() as u32).to_le_bytes());
            for d in t.dims.iter().rev() {
                b.extend(d.to_le_bytes());
            }
            b.extend(t.ggml_type.to_le_bytes());
            b.extend(t.offset.unwrap_or(offset).to_le_bytes());
            offset += (t.data.len() as u64).next_multiple_of(32);
        }
        for t in &self.tensors {
            while !b.len().is_multiple_of(32) {
                b.push(0);
            }
            b.extend(&t.data);
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b
    }
}
