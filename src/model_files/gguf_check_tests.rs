//! Hand-built GGUF headers: each hostile length or count is refused before anything is
//! allocated (on the original code candle's reader aborted the process on the first three).

use super::*;
use candle_core::quantized::GgmlDType;
use std::io::{Cursor, Write};

/// A GGUF v3 header in bytes, built field by field.
#[derive(Default)]
struct Header(Vec<u8>);

impl Header {
    fn new(tensors: u64, kvs: u64) -> Self {
        let mut h = Self::default();
        h.0.extend_from_slice(b"GGUF");
        h.u32(3).u64(tensors).u64(kvs);
        h
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.write_all(s.as_bytes()).unwrap();
        self
    }
    /// A tensor info: name, dims (GGUF order), type, offset.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 bytes and appends `n` data bytes.
    fn data(&mut self, n: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0u8, n));
        self
    }
    fn check(&self) -> Result<()> {
        check_header(Cursor::new(&self.0), self.0.len() as u64)
    }
    fn err(&self) -> String {
        format!("{:#}", self.check().unwrap_err())
    }
}

#[test]
fn gguf_header_accepts_a_valid_file() {
    // One f32 tensor of 2 x 4 values: 32 data bytes after the 32-byte aligned header.
    let mut h = Header::new(1, 1);
    h.str("general.architecture").u32(8).str("llama");
    h.tensor("w", &[4, 2], 0, 0).data(32);
    h.check().unwrap();
}

#[test]
fn gguf_string_length_2_62_is_refused_before_allocating() {
    let mut h = Header::new(0, 1);
    h.str("general.name").u32(8).u64(1 << 62);
    let e = h.err();
    assert!(e.contains("needs 4611686018427387904 bytes"), "{e}");
}

#[test]
fn gguf_array_of_2_40_elements_is_refused_before_allocating() {
    let mut h = Header::new(0, 1);
    // An array of 2^40 u32 values (type 4) in a file of a few dozen bytes.
    h.str("tokenizer.ggml.scores").u32(9).u32(4).u64(1 << 40);
    let e = h.err();
    assert!(e.contains("array values"), "{e}");
    // Under the metadata cap, the bytes left still bound the count.
    let mut h = Header::new(0, 1);
    h.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(1000);
    let e = h.err();
    assert!(e.contains("1000 strings cannot fit"), "{e}");
}

#[test]
fn gguf_n_dims_2_32_minus_1_is_refused() {
    let mut h = Header::new(1, 0);
    h.str("w").u32(u32::MAX).data(64);
    let e = h.err();
    assert!(e.contains("4294967295 dimensions"), "{e}");
}

#[test]
fn gguf_overflowing_dims_are_refused() {
    // token_embd of 2^32 x 2^32 values: 2^64 overflows.
    let mut h = Header::new(1, 0);
    h.tensor("token_embd.weight", &[1 << 32, 1 << 32], 0, 0)
        .data(64);
    let e = h.err();
    assert!(e.contains("overflow"), "{e}");
}

#[test]
fn gguf_wrapping_tensor_offset_is_refused() {
    // Offset 2^64 - 32 is aligned; data start + offset wraps around u64 to before the data.
    let mut h = Header::new(1, 0);
    h.tensor("w", &[8], 0, u64::MAX - 31).data(32);
    let e = h.err();
    assert!(e.contains("lie outside the file"), "{e}");
    // An offset inside the file whose tensor runs past its end.
    let mut h = Header::new(1, 0);
    h.tensor("w", &[16], 0, 0).data(32);
    let e = h.err();
    assert!(e.contains("64 bytes at offset 0 lie outside"), "{e}");
}

#[test]
fn gguf_bad_alignment_type_and_duplicates_are_refused() {
    let mut h = Header::new(0, 1);
    h.str("general.alignment").u32(4).u32(0);
    assert!(h.err().contains("not a power of two"));
    let mut h = Header::new(0, 2);
    h.str("a").u32(4).u32(1).str("a").u32(4).u32(1);
    assert!(h.err().contains("duplicate metadata `a`"));
    let mut h = Header::new(0, 1);
    h.str("a").u32(9).u32(9).u64(1);
    assert!(h.err().contains("arrays of arrays"));
    let mut h = Header::new(1, 0);
    h.tensor("w", &[32], 16, 0).data(32);
    assert!(h.err().contains("ggml type 16"));
}

#[test]
fn gguf_block_table_matches_candle() {
    for (id, dt) in [
        (0, GgmlDType::F32),
        (1, GgmlDType::F16),
        (2, GgmlDType::Q4_0),
        (3, GgmlDType::Q4_1),
        (6, GgmlDType::Q5_0),
        (7, GgmlDType::Q5_1),
        (8, GgmlDType::Q8_0),
        (9, GgmlDType::Q8_1),
        (10, GgmlDType::Q2K),
        (11, GgmlDType::Q3K),
        (12, GgmlDType::Q4K),
        (13, GgmlDType::Q5K),
        (14, GgmlDType::Q6K),
        (15, GgmlDType::Q8K),
        (30, GgmlDType::BF16),
    ] {
        let (block, bytes) = block_of(id).unwrap();
        assert_eq!(
            (block as usize, bytes as usize),
            (dt.block_size(), dt.type_size()),
            "{dt:?}"
        );
    }
}

#[test]
fn gguf_open_names_the_file_and_refuses_devices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    let mut h = Header::new(0, 1);
    h.str("general.name").u32(8).u64(1 << 62);
    std::fs::write(&path, &h.0).unwrap();
    let e = format!("{:#}", open(&path).unwrap_err());
    assert!(e.starts_with(&format!("{}: not a readable GGUF file", path.display())));
    assert!(!e.contains('\n'));
    #[cfg(unix)]
    {
        let e = format!("{:#}", open(Path::new("/dev/zero")).unwrap_err());
        assert!(
            e.contains("/dev/zero: a model file must be a regular file"),
            "{e}"
        );
        // A FIFO is refused before it is opened (opening one waits for a writer).
        let fifo = dir.path().join("fifo.gguf");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = format!("{:#}", open(&fifo).unwrap_err());
        assert!(e.contains("a model file must be a regular file"), "{e}");
    }
}
