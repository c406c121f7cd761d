//! What every record-writing stage (revise, label, sample) shares: the manifest next to the
//! output, refusing to resume under another configuration (naming what differs) or into a
//! file cai did not write, and the ids already written.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::constitution::Loaded;
use crate::jsonl::{self, Appender};
use crate::llm::Backend;
use crate::manifest::{manifest_path, now_unix, ConstitutionRef, Manifest, Prior};

/// What shapes a stage's records, hashed: the manifest keeps the hash, and the config fields
/// left out of it (`ignore`) are not named when a refusal says what differs.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    pub hash: String,
    ignore: Vec<String>,
}

/// An output file opened for appending, with its manifest.
///
/// A run that ends without writing a record into an output it created (an error in its first
/// batch) removes the file and its manifest again, so they never block a corrected re-run.
pub struct StageOutput {
    pub manifest: Manifest,
    pub appender: Appender,
    /// `id` of every complete record already in the file.
    pub done: HashSet<String>,
    path: PathBuf,
    /// This run created the output file (it was absent or empty).
    created: bool,
    finished: bool,
}

impl StageOutput {
    /// Opens `out` (creating or resuming it) after checking that it is ours and that the
    /// fingerprint matches; nothing in the file is changed before every line is checked.
    pub fn open<C: Serialize>(
        command: &str,
        out: &Path,
        config: &C,
        constitution: Option<&Loaded>,
        backend: &dyn Backend,
        fingerprint: Fingerprint,
    ) -> Result<Self> {
        let manifest = Manifest {
            cai_version: env!("CARGO_PKG_VERSION").into(),
            command: command.into(),
            fingerprint: fingerprint.hash.clone(),
            config: serde_json::to_value(config)?,
            constitution: constitution.map(|l| ConstitutionRef {
                path: l.path.clone(),
                name: l.constitution.name.clone(),
                version: l.constitution.version.clone(),
                sha256: l.sha256.clone(),
            }),
            model: backend.info().clone(),
            started_unix: now_unix(),
            finished_unix: None,
            stats: Value::Null,
        };
        let mut done = HashSet::new();
        let created = match crate::manifest::prior(out, "--out")? {
            Prior::Fresh => true,
            Prior::Ours(old) => {
                let (records, complete) = jsonl::read_complete::<Value>(out)?;
                // Only records can be mixed: an output with none resumes under any config.
                if !records.is_empty() {
                    old.check_resume(out, &manifest, &fingerprint.ignore)?;
                }
                for (i, r) in records.iter().enumerate() {
                    let id = r["id"].as_str().with_context(|| {
                        format!("{}:{}: record without an `id`", out.display(), i + 1)
                    })?;
                    done.insert(id.to_string());
                }
                jsonl::cut_partial(out, complete)?;
                records.is_empty()
            }
        };
        // A default `--out` (runs/labels.jsonl) in a fresh folder: create its parent folders,
        // as the trainers and compare do, before the manifest is written beside it.
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create folder {} for --out", dir.display()))?;
        }
        manifest.write(out)?;
        Ok(Self {
            manifest,
            appender: Appender::open(out)?,
            done,
            path: out.to_path_buf(),
            created,
            finished: false,
        })
    }

    /// The items whose record is not in the file yet, in input order.
    pub fn pending<T: Clone>(&self, items: &[T], id: impl Fn(&T) -> &str) -> Vec<T> {
        items
            .iter()
            .filter(|i| !self.done.contains(id(i)))
            .cloned()
            .collect()
    }

    /// Rewrites the manifest with the current counters.
    /// The backend's own counters (retries, cache hits) go under `stats.backend`.
    pub fn update<S: Serialize>(
        &mut self,
        stats: &S,
        backend: &dyn Backend,
        finished: bool,
    ) -> Result<()> {
        self.manifest.stats = serde_json::to_value(stats)?;
        if let Some(b) = backend.stats() {
            self.manifest.stats["backend"] = b;
        }
        if finished {
            self.manifest.finished_unix = Some(now_unix());
            self.finished = true;
        }
        self.manifest.write(&self.path)
    }
}

impl Drop for StageOutput {
    fn drop(&mut self) {
        if self.created && !self.finished && self.appender.is_empty() {
            // Best effort: what is left is an empty file, which a re-run accepts anyway.
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_file(manifest_path(&self.path));
        }
    }
}

/// Fingerprint of everything that shapes a stage's records: the config minus the fields in
/// `ignore` (output paths, batch sizes…), the model's identity and `extra` (hashes of the
/// constitution, template sources).
pub fn records_fingerprint<C: Serialize>(
    config: &C,
    ignore: &[&str],
    backend: &dyn Backend,
    extra: &[Value],
) -> Result<Fingerprint> {
    let mut shaping = serde_json::to_value(config)?;
    if let Some(o) = shaping.as_object_mut() {
        // Where and how fast a server is asked (`openai`) never changes the records.
        for k in ignore.iter().chain(&["openai"]) {
            o.remove(*k);
        }
    }
    let info = backend.info();
    // A model file is identified by its hash; only hash-less models (servers, mock) by name.
    let name = if info.sha256.is_some() {
        None
    } else {
        Some(&info.name)
    };
    let model = serde_json::json!({"backend": info.backend, "sha256": info.sha256, "name": name});
    let mut parts = vec![&shaping, &model];
    parts.extend(extra);
    Ok(Fingerprint {
        hash: crate::hash::sha256_json(&parts),
        ignore: ignore
            .iter()
            .chain(&["openai"])
            .map(|s| s.to_string())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::mock::MockBackend;
    use serde_json::json;

    /// Opens `out` as `cai label` would with `config`, ignoring `out` and `batch_size`.
    fn open(out: &Path, config: &Value) -> Result<StageOutput> {
        let backend = MockBackend::new();
        let fp = records_fingerprint(config, &["out", "batch_size"], &backend, &[])?;
        StageOutput::open("label", out, config, None, &backend, fp)
    }

    #[test]
    fn label_rerun_names_the_differing_setting() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("labels.jsonl");
        let first =
            json!({"temperature": 0.7, "sampling": {"top_p": 1.0}, "out": "a", "batch_size": 8});
        let mut o = open(&out, &first).unwrap();
        o.appender.append(&json!({"id": "p1"})).unwrap();
        drop(o);
        // Ignored fields may change: the run resumes with p1 done.
        let same =
            json!({"temperature": 0.7, "sampling": {"top_p": 1.0}, "out": "b", "batch_size": 1});
        assert!(open(&out, &same).unwrap().done.contains("p1"));
        let other =
            json!({"temperature": 1.0, "sampling": {"top_p": 0.9}, "out": "a", "batch_size": 8});
        let e = format!("{:#}", open(&out, &other).err().unwrap());
        assert!(
            e.contains("config field `sampling.top_p` differs: 1.0 → 0.9; config field `temperature` differs: 0.7 → 1.0"),
            "{e}"
        );
        assert!(!e.contains("batch_size") && !e.contains("`out`"), "{e}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"p1\"}\n");
    }

    #[test]
    fn failed_run_leaves_nothing_that_blocks_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("labels.jsonl");
        // A run that fails before its first record: neither file is left.
        drop(open(&out, &json!({"temperature": 0.7})).unwrap());
        assert!(!out.exists() && !manifest_path(&out).exists());
        // An empty output beside a manifest of another config (left by a kill -9 before the
        // first record) resumes under the corrected config.
        std::fs::write(&out, "").unwrap();
        std::mem::forget(open(&out, &json!({"temperature": 0.7})).unwrap());
        assert!(manifest_path(&out).exists());
        let mut o = open(&out, &json!({"temperature": 1.0})).unwrap();
        o.appender.append(&json!({"id": "p1"})).unwrap();
        o.update(&json!({}), &MockBackend::new(), true).unwrap();
        drop(o);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"p1\"}\n");
    }

    #[test]
    fn default_out_creates_parent_folders() {
        // `cai label` with its default --out runs/labels.jsonl in a fresh folder failed with
        // "cannot create runs/.labels.jsonl.manifest.json…tmp: No such file or directory".
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("runs/deep/labels.jsonl");
        let mut o = open(&out, &json!({})).unwrap();
        o.appender.append(&json!({"id": "p1"})).unwrap();
        o.update(&json!({}), &MockBackend::new(), true).unwrap();
        drop(o);
        assert!(manifest_path(&out).exists());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"p1\"}\n");
    }

    #[test]
    fn unmanifested_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("notes.txt");
        std::fs::write(&out, "my notes, no newline").unwrap();
        let e = format!("{:#}", open(&out, &json!({})).err().unwrap());
        assert!(
            e.contains("notes.txt already exists (20 bytes) and is not an output of cai")
                && e.contains("notes.cai.jsonl"),
            "{e}"
        );
        assert_eq!(std::fs::read(&out).unwrap(), b"my notes, no newline");
        assert!(!manifest_path(&out).exists());
    }

    #[test]
    fn manifest_redacts_url_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.jsonl");
        let config = json!({"openai": {"base_urls": ["http://user:sk-secret@host:8/v1"]}});
        let o = open(&out, &config).unwrap();
        let text = std::fs::read_to_string(manifest_path(&out)).unwrap();
        assert!(
            text.contains("http://***@host:8/v1") && !text.contains("sk-secret"),
            "{text}"
        );
        // The run's own copy keeps the URL it was given.
        assert_eq!(o.manifest.config, config);
    }
}
