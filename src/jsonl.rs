//! JSONL files: line-numbered reading, crash-safe appending and whole-file replacement.
//!
//! Every error names `file:line`. Appends are whole lines followed by a flush, and a reader of a
//! file that was cut short by a crash (kill -9 mid-write) drops the unfinished last line, so an
//! output file is always a valid prefix of the records a run would write.
//!
//! Outputs are written only into files cai creates: never through a symbolic link, never over
//! a file that is not JSONL, and a temporary file is always a fresh name (created with
//! `create_new`), so no file of the user's is cut, replaced or clobbered ([`check_output`]).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::inputs::{self, DATA_CAP};

/// One parsed line of a JSONL file.
#[derive(Debug, Clone)]
pub struct Line<T> {
    /// 1-based line number in the file.
    pub number: usize,
    pub value: T,
}

/// Reads every non-blank line of `path` as JSON of type `T`; errors carry `file:line`.
///
/// `path` must be a regular file of at most [`DATA_CAP`] bytes.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Vec<Line<T>>> {
    let file = inputs::open(path, DATA_CAP, "input file")?;
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

/// What an output path holds before a run writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Missing,
    Empty,
    /// A regular file with this many bytes.
    Bytes(u64),
}

/// Checks that `path` can be written by cai: absent, or a regular file (not a symbolic link,
/// folder or device). `flag` names where the path came from in the error (`--out`).
pub fn check_output(path: &Path, flag: &str) -> Result<Existing> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Missing),
        Err(e) => {
            return Err(e).with_context(|| format!("{flag} {}: cannot inspect", path.display()))
        }
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| format!(" to {}", t.display()))
            .unwrap_or_default();
        bail!(
            "{flag} {} is a symbolic link{target}; cai writes only files it creates, never \
             through a link: give another path",
            path.display()
        );
    }
    if !meta.is_file() {
        bail!(
            "{flag} {} exists and is not a regular file; give another path",
            path.display()
        );
    }
    Ok(match meta.len() {
        0 => Existing::Empty,
        n => Existing::Bytes(n),
    })
}

/// The complete records of an output file, parsed, and the length of its complete lines.
///
/// Reads only: a last line without its newline is left in the file (see [`cut_partial`]).
pub fn read_complete<T: DeserializeOwned>(path: &Path) -> Result<(Vec<T>, u64)> {
    if !path.exists() {
        return Ok((Vec::new(), 0));
    }
    let bytes = inputs::read_bytes(path, DATA_CAP, "output file")?;
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    let tail = &bytes[complete..];
    // A crash cuts a record of ours after its first bytes, `{"`; other text is not ours.
    if !tail.is_empty() && !tail.trim_ascii_start().starts_with(b"{") {
        bail!(
            "{}:{}: the last line is not a JSON record cut short by a crash; this file was \
             not written by cai: choose another path",
            path.display(),
            bytes[..complete].iter().filter(|&&b| b == b'\n').count() + 1
        );
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
    Ok((out, complete as u64))
}

/// Cuts `path` back to its first `complete` bytes (dropping a line a crash left unfinished).
pub fn cut_partial(path: &Path, complete: u64) -> Result<()> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot open {} to drop a partial line", path.display()))
        }
    };
    let len = file
        .metadata()
        .with_context(|| format!("cannot read the size of {}", path.display()))?
        .len();
    if complete < len {
        file.set_len(complete)
            .with_context(|| format!("cannot truncate {}", path.display()))?;
    }
    Ok(())
}

/// Reads the complete records of an output file that may have been cut short by a crash.
///
/// Every complete line is checked first; only then is a last line without its terminating
/// newline (an interrupted write) removed from the file, so appends continue on a clean line.
/// A malformed line is an error and leaves the file as it was: that file was not written by
/// us or was edited by hand.
pub fn read_resumable<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let (records, complete) = read_complete(path)?;
    cut_partial(path, complete)?;
    Ok(records)
}

/// Appends records to a JSONL file, one flushed line per record.
pub struct Appender {
    path: PathBuf,
    file: File,
    /// Bytes in the file after the last complete record.
    len: u64,
}

impl Appender {
    /// Opens (or creates) `path` for appending; a symbolic link is refused, not followed.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create folder {}", dir.display()))?;
        }
        check_output(path, "output")?;
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        no_follow(&mut options);
        let file = options
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

    /// Bytes of complete records in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the file holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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

/// Opening a symbolic link fails instead of following it (unix; elsewhere the
/// [`check_output`] before opening is the guard).
fn no_follow(options: &mut OpenOptions) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    #[cfg(not(unix))]
    let _ = options;
}

/// A new, empty file beside `path` that no other file had the name of (`create_new`), for
/// writing `path`'s next content before a rename; with mode 0600 where `private`.
pub fn temp_beside(path: &Path, private: bool) -> Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        match options.open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", tmp.display()));
            }
        }
    }
    bail!(
        "cannot find a free temporary name beside {}",
        path.display()
    )
}

/// Replaces `path` atomically with what `write` writes: a fresh temporary file beside it, then
/// a rename (which replaces a symbolic link itself, never its target).
/// The temporary file is removed when anything fails.
pub fn replace_file(
    path: &Path,
    private: bool,
    write: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    let (tmp, mut f) = temp_beside(path, private)?;
    let done = write(&mut f)
        .and_then(|()| f.flush().map_err(Into::into))
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
        });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Writes `records` to `path` atomically (fresh temporary file + rename).
///
/// An existing `path` is replaced only when it is a regular file holding JSONL (an earlier
/// output); anything else (notes, a symbolic link, a folder) is refused and left as it was.
pub fn write_all<T: Serialize>(path: &Path, records: impl IntoIterator<Item = T>) -> Result<()> {
    if let Existing::Bytes(_) = check_output(path, "output")? {
        ensure_jsonl(path)?;
    }
    replace_file(path, false, |f| {
        let mut w = std::io::BufWriter::new(f);
        for r in records {
            serde_json::to_writer(&mut w, &r)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        Ok(())
    })
}

/// Refuses to replace `path` unless every line is JSON: a file that is not is the user's.
fn ensure_jsonl(path: &Path) -> Result<()> {
    let file = inputs::open(path, DATA_CAP, "existing output")?;
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim_ascii().is_empty() {
            continue;
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(&line).is_err() {
            bail!(
                "{} exists and is not a JSONL output (line {} is not JSON); cai replaces only \
                 files it wrote: choose another path or remove it",
                path.display(),
                i + 1
            );
        }
    }
    Ok(())
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

    #[test]
    fn resumable_read_checks_every_line_before_cutting() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        // A malformed complete line: an error, and the partial tail is still there.
        let text = "{\"a\":1}\nnot json\n{\"a\":";
        std::fs::write(&p, text).unwrap();
        let e = format!("{:#}", read_resumable::<serde_json::Value>(&p).unwrap_err());
        assert!(e.contains("out.jsonl:2: malformed record"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        // Text without a newline that is no record cut short: refused, not cut.
        let notes = dir.path().join("notes.txt");
        std::fs::write(&notes, "my notes, no newline").unwrap();
        let e = format!(
            "{:#}",
            read_resumable::<serde_json::Value>(&notes).unwrap_err()
        );
        assert!(
            e.contains("notes.txt:1: the last line is not a JSON record"),
            "{e}"
        );
        assert_eq!(std::fs::read(&notes).unwrap(), b"my notes, no newline");
    }

    #[test]
    fn write_all_keeps_a_users_tmp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The names the temporary file used to have beside `out.jsonl` and `x.txt`.
        let mine = dir.path().join("out.jsonl.tmp");
        std::fs::write(&mine, "mine").unwrap();
        let mine2 = dir.path().join("x.jsonl.tmp");
        std::fs::write(&mine2, "mine too").unwrap();
        write_all(&dir.path().join("out.jsonl"), [serde_json::json!({"a": 1})]).unwrap();
        write_all(&dir.path().join("x.txt"), [serde_json::json!({"b": 2})]).unwrap();
        assert_eq!(std::fs::read_to_string(&mine).unwrap(), "mine");
        assert_eq!(std::fs::read_to_string(&mine2).unwrap(), "mine too");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap(),
            "{\"a\":1}\n"
        );
        // Four files: the two outputs and the user's two; no temporary file is left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
    }

    #[test]
    fn write_all_replaces_only_jsonl_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.jsonl");
        std::fs::write(&out, "{\"old\":1}\n").unwrap();
        write_all(&out, [serde_json::json!({"new": 1})]).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"new\":1}\n");
        let notes = dir.path().join("notes.txt");
        std::fs::write(&notes, "dear diary\n").unwrap();
        let e = format!("{:#}", write_all(&notes, [1]).unwrap_err());
        assert!(
            e.contains("notes.txt exists and is not a JSONL output"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), "dear diary\n");
        #[cfg(unix)]
        {
            let link = dir.path().join("link.jsonl");
            std::os::unix::fs::symlink(&out, &link).unwrap();
            let e = format!("{:#}", write_all(&link, [2]).unwrap_err());
            assert!(e.contains("link.jsonl is a symbolic link"), "{e}");
            let e = format!("{:#}", Appender::open(&link).err().unwrap());
            assert!(e.contains("link.jsonl is a symbolic link"), "{e}");
            assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"new\":1}\n");
            assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        }
    }
}
