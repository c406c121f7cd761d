//! Input files: every file cai reads as data or settings is opened here, refused unless it is
//! a regular file, and read under a size cap that the error names (so `--pairs /dev/zero` or a
//! FIFO is a one-line error, never an endless read or a 4 GiB allocation). Also the red-team
//! prompt sets: JSONL (`prompt`, `messages`/`conversation`, HH-RLHF `chosen`), or plain text
//! with one prompt per line. Each prompt becomes a conversation with a stable id.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::chat::{parse_hh_transcript, ChatMessage, Role};
use crate::hash::fnv1a;

/// One prompt to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptItem {
    /// Stable id: a hash of the conversation (with a suffix for repeats).
    pub id: String,
    /// Conversation ending with the user turn to answer.
    pub conversation: Vec<ChatMessage>,
    /// 1-based line in the input file.
    pub line: usize,
}

impl PromptItem {
    /// The last user message.
    pub fn text(&self) -> &str {
        self.conversation
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str())
    }
}

/// Largest data file read (pairs, prompts, label and human-label files, stage outputs): 4 GiB.
pub const DATA_CAP: u64 = 4 << 30;
/// Largest settings file read (constitutions, prompt templates, YAML configs): 8 MiB.
pub const TEXT_CAP: u64 = 8 << 20;

/// `n` bytes as a short size ("4 GiB", "8 MiB", "512 bytes").
fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n => format!("{n} bytes"),
    }
}

/// Opens `path` for reading after checking it is a regular file (symlinks to one are followed)
/// of at most `cap` bytes; `what` names the input in errors ("pairs file", "template").
///
/// The reader fails with an error naming the file once more than `cap` bytes come out of it,
/// so a file that grows while it is read is bounded too.
pub fn open(path: &Path, cap: u64, what: &str) -> Result<impl Read> {
    // Checked before opening: opening a FIFO would block until a writer comes.
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    check_regular(path, &meta, cap, what)?;
    let file =
        File::open(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read the size of {what} {}", path.display()))?;
    check_regular(path, &meta, cap, what)?;
    Ok(Capped {
        inner: file,
        left: cap,
        cap,
        path: path.display().to_string(),
        what: what.to_string(),
    })
}

fn check_regular(path: &Path, meta: &std::fs::Metadata, cap: u64, what: &str) -> Result<()> {
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a folder"
        } else {
            "a device, FIFO or socket"
        };
        bail!(
            "{what} {} is {kind}, not a regular file; give the path of a file",
            path.display()
        );
    }
    if meta.len() > cap {
        bail!(
            "{what} {} is {} bytes, over the {} limit for it",
            path.display(),
            meta.len(),
            size(cap)
        );
    }
    Ok(())
}

/// Reads all of `path` (see [`open`]).
pub fn read_bytes(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    open(path, cap, what)?
        .read_to_end(&mut out)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    Ok(out)
}

/// Reads all of `path` as UTF-8 text (see [`open`]).
pub fn read_text(path: &Path, cap: u64, what: &str) -> Result<String> {
    String::from_utf8(read_bytes(path, cap, what)?)
        .map_err(|e| anyhow::anyhow!("{what} {} is not UTF-8 text: {e}", path.display()))
}

/// A file that yields at most `left` more bytes, then an error naming it.
struct Capped {
    inner: File,
    left: u64,
    cap: u64,
    path: String,
    what: String,
}

impl Read for Capped {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One byte past the cap tells a file of exactly `cap` bytes from a longer one.
        let want = buf
            .len()
            .min(usize::try_from(self.left + 1).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "{} {} grew past the {} limit for it",
                self.what,
                self.path,
                size(self.cap)
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads a prompt file; errors name `file:line`.
pub fn read_prompts(path: &Path) -> Result<Vec<PromptItem>> {
    let text = read_text(path, DATA_CAP, "prompt file")?;
    let first = text.lines().find(|l| !l.trim().is_empty());
    let Some(first) = first else {
        bail!("{}: no prompts (the file is empty)", path.display());
    };
    let jsonl = first.trim_start().starts_with('{');
    let mut items = Vec::new();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let conversation = if jsonl {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{number}: malformed JSON", path.display()))?;
            conversation_of(&v).with_context(|| format!("{}:{number}", path.display()))?
        } else {
            vec![ChatMessage::user(line.trim())]
        };
        if conversation
            .last()
            .is_none_or(|m| m.role != Role::User || m.content.trim().is_empty())
        {
            bail!(
                "{}:{number}: empty prompt (the conversation must end with a non-empty user turn)",
                path.display()
            );
        }
        let mut bytes = Vec::new();
        for m in &conversation {
            bytes.extend_from_slice(m.role.as_str().as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(m.content.as_bytes());
            bytes.push(0);
        }
        let h = fnv1a(&[&bytes]);
        let n = seen.entry(h).or_insert(0);
        let id = if *n == 0 {
            format!("{h:016x}")
        } else {
            format!("{h:016x}-{n}")
        };
        *n += 1;
        items.push(PromptItem {
            id,
            conversation,
            line: number,
        });
    }
    Ok(items)
}

fn conversation_of(v: &Value) -> Result<Vec<ChatMessage>> {
    if let Some(p) = v.get("prompt") {
        return match p {
            Value::String(s) => Ok(vec![ChatMessage::user(s.trim())]),
            Value::Array(_) => messages_of(p),
            _ => bail!("`prompt` must be a string or a list of messages"),
        };
    }
    for key in ["messages", "conversation"] {
        if let Some(m) = v.get(key) {
            let mut msgs = messages_of(m)?;
            // A conversation that ends with an answer is answered anew from its last user turn.
            while msgs.last().is_some_and(|m| m.role == Role::Assistant) {
                msgs.pop();
            }
            return Ok(msgs);
        }
    }
    if let Some(Value::String(t)) = v.get("chosen") {
        // HH-RLHF row: the red-team prompt is the first human turn.
        let first = parse_hh_transcript(t)
            .into_iter()
            .find(|m| m.role == Role::User);
        return first
            .map(|m| vec![m])
            .context("`chosen` transcript has no `Human:` turn");
    }
    bail!("no prompt: expected a `prompt`, `messages`, `conversation` or HH-RLHF `chosen` field")
}

/// Parses `[{"role": ..., "content": ...}, ...]`.
pub fn messages_of(v: &Value) -> Result<Vec<ChatMessage>> {
    serde_json::from_value(v.clone()).context(
        "expected a list of {\"role\", \"content\"} messages with role system, user or assistant",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(content: &str, name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        (dir, p)
    }

    #[test]
    fn reads_every_format() {
        let (_d, p) = write(
            concat!(
                "{\"prompt\": \"a\"}\n",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"b\"}, {\"role\": \"assistant\", \"content\": \"x\"}]}\n",
                "{\"chosen\": \"\\n\\nHuman: c\\n\\nAssistant: y\", \"rejected\": \"\"}\n",
                "\n",
                "{\"prompt\": \"a\"}\n",
            ),
            "p.jsonl",
        );
        let items = read_prompts(&p).unwrap();
        let texts: Vec<&str> = items.iter().map(|i| i.text()).collect();
        assert_eq!(texts, ["a", "b", "c", "a"]);
        assert_eq!(items[1].conversation.len(), 1);
        assert_eq!(items[3].line, 5);
        assert_eq!(items[3].id, format!("{}-1", items[0].id));
        // Existing runs resume by these ids: pinned (FNV-1a 64 of "user\0a\0\xff", computed
        // independently in Python).
        assert_eq!(items[0].id, "291581819d166230");
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_refused_by_name() {
        let e = format!(
            "{:#}",
            read_bytes(Path::new("/dev/zero"), DATA_CAP, "pairs file").unwrap_err()
        );
        assert!(
            e.contains("pairs file /dev/zero is a device, FIFO or socket, not a regular file"),
            "{e}"
        );
        let e = format!("{:#}", read_prompts(Path::new("/dev/zero")).unwrap_err());
        assert!(e.contains("prompt file /dev/zero"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            read_text(dir.path(), TEXT_CAP, "template").unwrap_err()
        );
        assert!(e.contains("is a folder, not a regular file"), "{e}");
        // A FIFO with no writer: refused before opening it, which would block.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = format!("{:#}", read_text(&fifo, TEXT_CAP, "config").unwrap_err());
        assert!(
            e.contains("config") && e.contains("fifo") && e.contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn inputs_over_the_cap_are_refused_by_name() {
        let (_d, p) = write("0123456789", "ten.txt");
        assert_eq!(read_text(&p, 10, "template").unwrap(), "0123456789");
        let e = format!("{:#}", read_text(&p, 9, "template").unwrap_err());
        assert!(
            e.contains("ten.txt is 10 bytes, over the 9 bytes limit"),
            "{e}"
        );
        assert_eq!(size(DATA_CAP), "4 GiB");
        assert_eq!(size(TEXT_CAP), "8 MiB");
        // A file that grows past the cap after the size check is cut off by the reader.
        let mut r = open(&p, 10, "template").unwrap();
        std::fs::write(&p, "0123456789abc").unwrap();
        let mut buf = Vec::new();
        let e = r.read_to_end(&mut buf).unwrap_err().to_string();
        assert!(e.contains("ten.txt grew past the 10 bytes limit"), "{e}");
    }

    #[test]
    fn plain_text_lines() {
        let (_d, p) = write("how do I pick a lock?\n\nwhat is 2+2\n", "p.txt");
        let items = read_prompts(&p).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].text(), "what is 2+2");
    }

    #[test]
    fn errors_name_file_and_line() {
        let (_d, p) = write("{\"prompt\": \"a\"}\n{\"nope\": 1}\n", "p.jsonl");
        let e = format!("{:#}", read_prompts(&p).unwrap_err());
        assert!(e.contains("p.jsonl:2") && e.contains("no prompt"), "{e}");
        let (_d, p) = write("{\"prompt\": \"  \"}\n", "q.jsonl");
        let e = format!("{:#}", read_prompts(&p).unwrap_err());
        assert!(e.contains("q.jsonl:1: empty prompt"), "{e}");
        let (_d, p) = write("\n\n", "e.jsonl");
        let e = format!("{:#}", read_prompts(&p).unwrap_err());
        assert!(e.contains("no prompts"), "{e}");
    }
}
