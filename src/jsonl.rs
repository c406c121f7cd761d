//! JSONL files: line-numbered reading and crash-safe appending.
//!
//! Every error names `file:line`. Appends are whole lines followed by a flush, and a reader of a
//! file that was cut short by a crash (kill -9 mid-write) drops the unfinished last line, so an
//! output file is always a valid prefix of the records a run would write.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// One parsed line of a JSONL file.
#[derive(Debug, Clone)]
pub struct Line<T> {
    /// 1-based line number in the file.
    pub number: usize,
    pub value: T,
}

/// Reads every non-blank line of `path` as JSON of type `T`; errors carry `file:line`.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Vec<Line<T>>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let number = i + 1;
        let line =
            line.with_context(|| format!("{}:{number}: cannot read line", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{number}: malformed JSON record", path.display()))?;
        out.push(Line { number, value });
    }
    Ok(out)
}

/// Reads the complete records of an output file that may have been cut short by a crash.
///
/// A last line without its terminating newline is an interrupted write: it is removed from the
/// file (so appends continue on a clean line) and not returned. A malformed line elsewhere is an
/// error: that file was not written by us or was edited by hand.
pub fn read_resumable<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if complete < bytes.len() {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {} to drop a partial line", path.display()))?;
        file.set_len(complete as u64)
            .with_context(|| format!("cannot truncate {}", path.display()))?;
    }
    let text = std::str::from_utf8(&bytes[..complete])
        .with_context(|| format!("{}: not UTF-8", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: malformed record in an existing output file; move the file away or fix the line",
                path.display(),
                i + 1
            )
        })?;
        out.push(value);
    }
    Ok(out)
}

/// Appends records to a JSONL file, one flushed line per record.
pub struct Appender {
    path: PathBuf,
    file: File,
    /// Bytes in the file after the last complete record.
    len: u64,
}

impl Appender {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create folder {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot read the size of {}", path.display()))?
            .len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// Writes one record as a single `write` call so a crash leaves at most one partial line.
    ///
    /// A write that fails part-way (disk full, file-size limit) is undone: the file is cut
    /// back to its last complete record, so it stays a valid prefix of the run's output.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record)?;
        if line.contains(&b'\n') {
            bail!("internal error: serialized record contains a newline");
        }
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line).and_then(|_| self.file.flush()) {
            let kept = match self.file.set_len(self.len) {
                Ok(()) => "every complete record before it is kept".to_string(),
                Err(t) => format!("and cutting off the partial record failed too: {t}"),
            };
            return Err(e).with_context(|| {
                format!("cannot write a record to {} ({kept})", self.path.display())
            });
        }
        self.len += line.len() as u64;
        Ok(())
    }
}

/// Writes `records` to `path` atomically (temp file + rename).
pub fn write_all<T: Serialize>(path: &Path, records: impl IntoIterator<Item = T>) -> Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        for r in records {
            serde_json::to_writer(&mut f, &r)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, "{\"a\":1}\n\n{oops\n").unwrap();
        let err = read::<serde_json::Value>(&p).unwrap_err();
        assert!(
            format!("{err:#}").contains("x.jsonl:3: malformed JSON"),
            "{err:#}"
        );
    }

    #[test]
    fn resumable_read_drops_partial_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        std::fs::write(&p, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let v: Vec<serde_json::Value> = read_resumable(&p).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        let mut app = Appender::open(&p).unwrap();
        app.append(&serde_json::json!({"a": 3})).unwrap();
        let v: Vec<serde_json::Value> = read_resumable(&p).unwrap();
        assert_eq!(v.len(), 3);
    }
}
