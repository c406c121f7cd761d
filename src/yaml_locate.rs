//! Finds the `line:column` of a node in block-style YAML text, for error messages.
//!
//! serde_yaml reports positions of syntax errors but not of values that fail our own checks
//! (a duplicate id, a negative weight). This walks the indentation structure of the source to
//! find the line of `principles[3].weight`. For flow-style YAML it falls back to the nearest
//! enclosing node it can find.

/// One step of a path into the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

struct SrcLine<'a> {
    indent: usize,
    text: &'a str,
}

/// 1-based (line, column) of the node at `path`; (1, 1) if not even the first step is found.
pub fn locate(source: &str, path: &[Seg]) -> (usize, usize) {
    let lines: Vec<SrcLine> = source
        .lines()
        .map(|l| {
            let text = l.trim_start();
            SrcLine {
                indent: l.len() - text.len(),
                text,
            }
        })
        .collect();
    let content = |i: usize| {
        let t = lines[i].text;
        !t.is_empty() && !t.starts_with('#')
    };
    // The block currently searched: lines (start..end) deeper than `parent_indent`.
    let (mut start, mut end) = (0, lines.len());
    let mut found = (1, 1);
    for seg in path {
        let mut hit = None;
        match *seg {
            Seg::Key(key) => {
                let want = format!("{key}:");
                let mut level = None;
                for (i, line) in lines.iter().enumerate().take(end).skip(start) {
                    if !content(i) {
                        continue;
                    }
                    // A key may follow the dash of a list item: "- id: x".
                    let (indent, text) = match line.text.strip_prefix("- ") {
                        Some(rest) => (line.indent + 2, rest.trim_start()),
                        None => (line.indent, line.text),
                    };
                    let lvl = *level.get_or_insert(indent);
                    if indent == lvl && text.starts_with(&want) {
                        hit = Some((i, indent));
                        break;
                    }
                }
            }
            Seg::Index(n) => {
                let mut count = 0;
                let mut level = None;
                for (i, line) in lines.iter().enumerate().take(end).skip(start) {
                    if !content(i) || !line.text.starts_with('-') {
                        continue;
                    }
                    let lvl = *level.get_or_insert(line.indent);
                    if line.indent == lvl {
                        if count == n {
                            hit = Some((i, line.indent + 2));
                            break;
                        }
                        count += 1;
                    }
                }
            }
        }
        let Some((i, indent)) = hit else { break };
        found = (i + 1, indent + 1);
        // The node's block: following lines indented deeper than the node itself.
        let node_indent = match seg {
            Seg::Index(_) => lines[i].indent,
            Seg::Key(_) => indent,
        };
        let mut j = i + 1;
        while j < end && (!content(j) || lines[j].indent > node_indent) {
            j += 1;
        }
        start = if matches!(seg, Seg::Index(_)) {
            i
        } else {
            i + 1
        };
        end = j;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name: x\nprinciples:\n  - id: a\n    critique: c\n\n  - id: b\n    weight: -1\nexamples:\n  revision:\n    - prompt: p\n      principle: zz\n";

    #[test]
    fn finds_nested_nodes() {
        assert_eq!(locate(DOC, &[Seg::Key("name")]), (1, 1));
        assert_eq!(
            locate(
                DOC,
                &[Seg::Key("principles"), Seg::Index(1), Seg::Key("weight")]
            ),
            (7, 5)
        );
        assert_eq!(
            locate(
                DOC,
                &[Seg::Key("principles"), Seg::Index(1), Seg::Key("id")]
            ),
            (6, 5)
        );
        assert_eq!(
            locate(
                DOC,
                &[Seg::Key("principles"), Seg::Index(0), Seg::Key("critique")]
            ),
            (4, 5)
        );
        let p = [
            Seg::Key("examples"),
            Seg::Key("revision"),
            Seg::Index(0),
            Seg::Key("principle"),
        ];
        assert_eq!(locate(DOC, &p), (11, 7));
    }

    #[test]
    fn missing_field_falls_back_to_parent() {
        assert_eq!(
            locate(
                DOC,
                &[Seg::Key("principles"), Seg::Index(0), Seg::Key("weight")]
            ),
            (3, 5)
        );
    }
}
