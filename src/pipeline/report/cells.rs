//! Formatting helpers of `report.md` (JSON values, table cells, quotes, dates), shared by the
//! report's sections.

use std::path::Path;

use serde_json::Value;

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
