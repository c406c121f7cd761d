//! Opening a GGUF file safely: our own validating pass over its header before candle's reader
//! sees it.
//!
//! candle's `gguf_file::Content::read` allocates whatever a length or count in the file asks
//! for before reading it, so a crafted header (a string of 2^62 bytes, an array of 2^40
//! elements, 2^32 − 1 dimensions) aborts the process ("memory allocation failed"), and a
//! tensor whose offset wraps around u64 or whose size overflows reads header bytes as weights.
//! After llama.cpp's `ggml/src/gguf.cpp`, every length and count here is bounded by the bytes
//! left in the file before anything is read or allocated, and every tensor info is checked
//! (at most 4 dimensions, each > 0, element count without overflow, a type cai reads, whole
//! blocks per row, an aligned offset, data inside the file). Only then does candle parse it.
//! [`open`] is the one way every part of cai opens a GGUF file.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::quantized::gguf_file::Content;

/// `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// `GGML_MAX_NAME`: a tensor name has fewer bytes than this.
const MAX_NAME: u64 = 64;
/// Array elements in all the metadata together. candle holds each as a 32-byte value, so this
/// bounds the parsed metadata near 512 MiB; the largest real vocabularies (Gemma's 262 144
/// tokens, each with a score and a type) need under a million.
const MAX_METADATA_VALUES: u64 = 1 << 24;
/// The alignment of tensor data when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// Opens the GGUF file at `path`: checks that it is a regular file with a valid header, then
/// parses it with candle. Returns the open file (for reading tensors) and the parsed header.
/// Every error is one line naming the file.
pub fn open(path: &Path) -> Result<(File, Content)> {
    let fail = || format!("{}: not a readable GGUF file", path.display());
    // Checked before opening: opening a FIFO would wait for a writer.
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read model file {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{}: a model file must be a regular file, not a device, pipe or folder",
            path.display()
        );
    }
    let file =
        File::open(path).with_context(|| format!("cannot open model file {}", path.display()))?;
    let mut reader = BufReader::new(file);
    check_header(&mut reader, meta.len()).with_context(fail)?;
    reader.seek(SeekFrom::Start(0)).with_context(fail)?;
    let content = Content::read(&mut reader).with_context(fail)?;
    Ok((reader.into_inner(), content))
}

/// Bytes of one value of a fixed-size metadata type (`None` for strings and arrays).
fn value_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

const STRING: u32 = 8;
const ARRAY: u32 = 9;

/// Values per block and bytes per block of the ggml types candle reads (`ggml.h` numbering).
fn block_of(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        30 => (1, 2),     // BF16
        _ => return None,
    })
}

/// A reader that knows how many bytes are left and refuses any read past them.
struct Bounded<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Bounded<R> {
    fn left(&self) -> u64 {
        self.len - self.pos
    }

    /// Claims `n` bytes, failing if fewer are left.
    fn claim(&mut self, n: u64, what: &str) -> Result<()> {
        ensure!(
            n <= self.left(),
            "{what} at byte {} needs {n} bytes but the file has {} left",
            self.pos,
            self.left()
        );
        self.pos += n;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        self.claim(N as u64, what)?;
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .with_context(|| format!("reading {what}"))?;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Skips `n` bytes (bounded first).
    fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        self.claim(n, what)?;
        let n = i64::try_from(n).context("skip too long")?;
        self.inner
            .seek(SeekFrom::Current(n))
            .with_context(|| format!("skipping {what}"))?;
        Ok(())
    }

    /// A string's bytes (length bounded by the bytes left before allocating).
    fn string(&mut self, what: &str) -> Result<Vec<u8>> {
        let len = self.u64(what)?;
        self.claim(len, what)?;
        let mut v = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut v)
            .with_context(|| format!("reading {what}"))?;
        Ok(v)
    }

    /// Skips a string value.
    fn skip_string(&mut self, what: &str) -> Result<()> {
        let len = self.u64(what)?;
        self.skip(len, what)
    }
}

/// Validates a GGUF header read from `reader` (a file of `len` bytes), allocating nothing
/// that the file's own bytes do not bound.
pub fn check_header<R: Read + Seek>(reader: R, len: u64) -> Result<()> {
    let mut r = Bounded {
        inner: reader,
        pos: 0,
        len,
    };
    let magic = r.array::<4>("the magic number")?;
    ensure!(
        &magic == b"GGUF",
        "bad magic number {magic:02x?} (a GGUF file starts with \"GGUF\")"
    );
    let version = r.u32("the version")?;
    ensure!(
        version == 2 || version == 3,
        "GGUF version {version} is not supported (2 and 3 are)"
    );
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    // A tensor info takes at least 24 bytes (name length, dims count, type, offset), a
    // key-value pair at least 13 (key length, type, a one-byte value).
    ensure!(
        tensor_count <= r.left() / 24,
        "it declares {tensor_count} tensors, more than its {} bytes can hold",
        r.len
    );
    ensure!(
        kv_count <= r.left() / 13,
        "it declares {kv_count} metadata entries, more than its {} bytes can hold",
        r.len
    );
    let mut alignment = DEFAULT_ALIGNMENT;
    let mut keys = HashSet::new();
    let mut values = 0u64;
    for i in 0..kv_count {
        let key = r.string(&format!("metadata key {i}"))?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let what = format!("metadata `{key}`");
        let kind = r.u32(&what)?;
        if key == "general.alignment" {
            ensure!(kind == 4, "{what} must be a u32 (type 4), not type {kind}");
            let a = r.u32(&what)?;
            ensure!(
                a > 0 && a.is_power_of_two(),
                "{what} is {a}, not a power of two"
            );
            alignment = u64::from(a);
        } else {
            match kind {
                STRING => r.skip_string(&what)?,
                ARRAY => {
                    let elem = r.u32(&what)?;
                    let count = r.u64(&what)?;
                    values = values.saturating_add(count);
                    ensure!(
                        values <= MAX_METADATA_VALUES,
                        "{what}: more than {MAX_METADATA_VALUES} array values in the metadata"
                    );
                    match (elem, value_size(elem)) {
                        (_, Some(size)) => {
                            let bytes = count.checked_mul(size).with_context(|| {
                                format!("{what}: array of {count} values overflows")
                            })?;
                            r.skip(bytes, &what)?;
                        }
                        (STRING, None) => {
                            ensure!(
                                count <= r.left() / 8,
                                "{what}: {count} strings cannot fit in the {} bytes left",
                                r.left()
                            );
                            for _ in 0..count {
                                r.skip_string(&what)?;
                            }
                        }
                        (ARRAY, None) => bail!("{what}: arrays of arrays are not supported"),
                        (other, None) => bail!("{what}: unknown array element type {other}"),
                    }
                }
                other => match value_size(other) {
                    Some(size) => r.skip(size, &what)?,
                    None => bail!("{what} has unknown type {other}"),
                },
            }
        }
        ensure!(keys.insert(key), "duplicate {what}");
    }
    let mut names = HashSet::new();
    let mut extents = Vec::new();
    for i in 0..tensor_count {
        let name = r.string(&format!("the name of tensor {i}"))?;
        let name = String::from_utf8_lossy(&name).into_owned();
        ensure!(
            (name.len() as u64) < MAX_NAME,
            "tensor {i}: its name of {} bytes is longer than {} bytes",
            name.len(),
            MAX_NAME - 1
        );
        let what = format!("tensor `{name}`");
        let n_dims = r.u32(&what)?;
        ensure!(
            (1..=MAX_DIMS).contains(&n_dims),
            "{what} has {n_dims} dimensions (1 to {MAX_DIMS} are allowed)"
        );
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&what)?);
        }
        let mut elems = 1u64;
        for &d in &dims {
            ensure!(d > 0, "{what} has a dimension of 0 ({dims:?})");
            elems = elems
                .checked_mul(d)
                .filter(|&e| e <= i64::MAX as u64)
                .with_context(|| format!("{what}: dimensions {dims:?} overflow"))?;
        }
        let ggml_type = r.u32(&what)?;
        let (block, block_bytes) = block_of(ggml_type)
            .with_context(|| format!("{what} has ggml type {ggml_type}, which cai cannot read"))?;
        ensure!(
            dims[0] % block == 0,
            "{what}: rows of {} values are not whole blocks of {block}",
            dims[0]
        );
        let bytes = (elems / block)
            .checked_mul(block_bytes)
            .with_context(|| format!("{what}: size overflows"))?;
        let offset = r.u64(&what)?;
        ensure!(
            offset % alignment == 0,
            "{what}: offset {offset} is not a multiple of the alignment {alignment}"
        );
        ensure!(names.insert(name.clone()), "duplicate {what}");
        extents.push((name, offset, bytes));
    }
    let data_start = r
        .pos
        .checked_next_multiple_of(alignment)
        .context("tensor data start overflows")?;
    for (name, offset, bytes) in extents {
        let end = data_start
            .checked_add(offset)
            .and_then(|s| s.checked_add(bytes));
        ensure!(
            end.is_some_and(|end| end <= len),
            "tensor `{name}`: {bytes} bytes at offset {offset} lie outside the file ({len} \
             bytes, data from byte {data_start})"
        );
    }
    Ok(())
}

#[cfg(test)]
#[path = "gguf_check_tests.rs"]
mod tests;
