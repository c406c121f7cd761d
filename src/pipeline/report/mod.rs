//! `<run>/report.md`: the constitution and its hash, stage timings, and one section per stage
//! (revise examples, SFT and reward-model curves, label agreement with human labels). Every
//! number is read from a file in the run folder and cites it; links are relative to the run
//! folder, so the report opens with its plots from there.

mod rl;
mod sections;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use super::state::{self, Done, StageStatus};
use super::{PipelineConfig, RunDir, Stage};
use crate::constitution::Loaded;

/// Writes `report.md` from what the run folder holds now.
pub fn write(cfg: &PipelineConfig, run: &RunDir, statuses: &[(Stage, StageStatus)]) -> Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "# Constitutional AI run: `{}`\n", run.root.display());
    let _ = writeln!(
        md,
        "Resolved config: [pipeline.yaml](pipeline.yaml) · cai {} · written {}.\n\n\
         Every number below names the file of this folder it comes from.\n",
        env!("CARGO_PKG_VERSION"),
        utc(crate::manifest::now_unix())
    );
    stages_table(&mut md, cfg, run, statuses);
    constitution(&mut md, cfg, run);
    // One section per stage of this config, in run order.
    for stage in cfg.enabled() {
        match stage {
            Stage::Revise => sections::revise(&mut md, run),
            Stage::Sft => sections::sft(&mut md, run),
            Stage::Sample => sections::sample(&mut md, run),
            Stage::Label => sections::label(&mut md, run),
            Stage::Rm => sections::rm(&mut md, run),
            Stage::Dpo => rl::dpo(&mut md, run),
            Stage::Ppo | Stage::Grpo => rl::rl(&mut md, run, stage),
            Stage::Eval => rl::eval(&mut md, run),
        }
    }
    let path = run.report();
    std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))
}

fn stages_table(
    md: &mut String,
    cfg: &PipelineConfig,
    run: &RunDir,
    statuses: &[(Stage, StageStatus)],
) {
    md.push_str(
        "## Stages\n\n| stage | state | this invocation | seconds | finished (UTC) | source |\n\
         |---|---|---|---:|---|---|\n",
    );
    let mut total = 0.0;
    for stage in Stage::ALL {
        let now = statuses.iter().find(|(s, _)| *s == stage).map(|(_, st)| st);
        let invocation = match now {
            Some(StageStatus::UpToDate) => "up to date, skipped".to_string(),
            Some(StageStatus::Ran { resumed: true, .. }) => "ran (resumed)".into(),
            Some(StageStatus::Ran { .. }) => "ran".into(),
            Some(StageStatus::NotSelected) => "not selected".into(),
            Some(StageStatus::Failed) => "**failed**".into(),
            None if cfg.has(stage) => "not reached".into(),
            None => "not enabled".into(),
        };
        let done: Option<Done> = state::read(&run.done_file(stage));
        let file = format!("stages/{stage}.done.json");
        match (&done, cfg.has(stage)) {
            (Some(d), _) => {
                total += d.seconds;
                let _ = writeln!(
                    md,
                    "| {stage} | done{} | {invocation} | {:.1} | {} | [{file}]({file}) |",
                    if d.resumed { " (resumed)" } else { "" },
                    d.seconds,
                    utc(d.finished_unix)
                );
            }
            (None, true) => {
                let _ = writeln!(md, "| {stage} | not done | {invocation} | | | |");
            }
            (None, false) => {
                let _ = writeln!(md, "| {stage} | – | {invocation} | | | |");
            }
        }
    }
    let _ = writeln!(
        md,
        "\nTotal of the stages' last runs: {total:.1} s (sum of `seconds` in `stages/*.done.json`).\n"
    );
}

fn constitution(md: &mut String, cfg: &PipelineConfig, run: &RunDir) {
    md.push_str("## Constitution\n\n");
    let copy = run.constitution();
    let Ok(loaded) = Loaded::read(&copy) else {
        md.push_str("No constitution in the run folder (neither revise nor label is enabled).\n\n");
        return;
    };
    let c = &loaded.constitution;
    let _ = writeln!(
        md,
        "`{}` — {} v{}, sha256 `{}` (copy: [constitution.yaml](constitution.yaml)); {} \
         critique/revision principles, {} comparison principles.\n",
        cfg.constitution.display(),
        c.name,
        c.version,
        loaded.sha256,
        c.principles.len(),
        c.comparison_principles.len()
    );
    md.push_str("| principle | weight | critique request |\n|---|---:|---|\n");
    for p in &c.principles {
        let _ = writeln!(
            md,
            "| `{}` | {} | {} |",
            p.id,
            p.weight.unwrap_or(1.0),
            cell(&short(&p.critique, 160))
        );
    }
    md.push('\n');
}

/// A JSON file of the run folder, `None` when absent or malformed.
pub(super) fn json_file(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// A number at a JSON pointer, formatted with `digits` decimals, or `–`.
pub(super) fn num(v: &Value, pointer: &str, digits: usize) -> String {
    match v.pointer(pointer) {
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        Some(Value::Number(n)) => format!("{:.digits$}", n.as_f64().unwrap_or(f64::NAN)),
        _ => "–".into(),
    }
}

/// Text cut to `max` characters, with an ellipsis.
pub(super) fn short(text: &str, max: usize) -> String {
    let t = text.trim();
    match t.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

/// Text safe inside a table cell.
pub(super) fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// Text as a Markdown block quote.
pub(super) fn quote(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        return "> *(empty)*\n".into();
    }
    t.lines().map(|l| format!("> {l}\n")).collect()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a unix time.
pub(super) fn utc(unix: u64) -> String {
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn helpers() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_709_210_096), "2024-02-29 12:34:56");
        assert_eq!(short("abcdef", 3), "abc…");
        assert_eq!(short(" ab ", 3), "ab");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
        assert_eq!(quote("x\ny"), "> x\n> y\n");
        let v = json!({"a": {"b": 0.123456, "n": 7}});
        assert_eq!(num(&v, "/a/b", 3), "0.123");
        assert_eq!(num(&v, "/a/n", 3), "7");
        assert_eq!(num(&v, "/a/c", 3), "–");
    }
}
