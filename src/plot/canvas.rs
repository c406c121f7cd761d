//! Low-level SVG drawing shared by the charts: the plot frame with axes and ticks, the
//! document header, legends and XML escaping.

use std::fmt::Write as _;

pub(super) const WIDTH: f64 = 720.0;
pub(super) const HEIGHT: f64 = 440.0;
pub(super) const PALETTE: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// Escapes text for XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The plot area inside the SVG and the data ranges it maps.
pub(super) struct Frame {
    pub(super) left: f64,
    pub(super) top: f64,
    pub(super) width: f64,
    pub(super) height: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    pub(super) fn new(left: f64, x: (f64, f64), y: (f64, f64)) -> Self {
        Self::with_height(left, x, y, HEIGHT)
    }

    pub(super) fn with_height(left: f64, x: (f64, f64), y: (f64, f64), svg_height: f64) -> Self {
        let safe = |(lo, hi): (f64, f64)| {
            if lo.is_finite() && hi.is_finite() && hi > lo {
                (lo, hi)
            } else {
                (0.0, 1.0)
            }
        };
        Self {
            left,
            top: 45.0,
            width: WIDTH - left - 150.0,
            height: svg_height - 45.0 - 55.0,
            x: safe(x),
            y: safe(y),
        }
    }

    pub(super) fn bottom(&self) -> f64 {
        self.top + self.height
    }
    pub(super) fn sx(&self, x: f64) -> f64 {
        self.left + (x - self.x.0) / (self.x.1 - self.x.0) * self.width
    }
    pub(super) fn sy(&self, y: f64) -> f64 {
        self.bottom() - (y - self.y.0) / (self.y.1 - self.y.0) * self.height
    }

    /// The x axis with ticks, grid lines and its label.
    pub(super) fn x_axis(&self, svg: &mut String, label: &str) {
        let (b, r) = (self.bottom(), self.left + self.width);
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
            self.left, self.top, self.width, self.height
        );
        for (t, text) in ticks(self.x.0, self.x.1) {
            let x = self.sx(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
                self.top, b
            );
            let _ = writeln!(
                svg,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{text}</text>"#,
                b + 16.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (self.left + r) / 2.0,
            b + 38.0,
            escape(label)
        );
    }

    /// Both axes with ticks, grid lines and labels.
    pub(super) fn axes(&self, svg: &mut String, x_label: &str, y_label: &str) {
        self.x_axis(svg, x_label);
        for (t, text) in ticks(self.y.0, self.y.1) {
            let y = self.sy(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
                self.left,
                self.left + self.width
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{y:.1}" text-anchor="end" dominant-baseline="middle">{text}</text>"#,
                self.left - 6.0
            );
        }
        let (x, y) = (self.left - 52.0, self.top + self.height / 2.0);
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" transform="rotate(-90 {x:.1} {y:.1})">{}</text>"#,
            escape(y_label)
        );
    }

    pub(super) fn no_data(&self, svg: &mut String) {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888">no data</text>"##,
            self.left + self.width / 2.0,
            self.top + self.height / 2.0
        );
    }
}

/// The SVG header, background and title.
pub(super) fn open(title: &str, height: f64) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="26" text-anchor="middle" font-size="16">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    svg
}

pub(super) fn close(mut svg: String) -> String {
    svg.push_str("</svg>\n");
    svg
}

/// A legend to the right of the plot area listing the non-empty series names.
pub(super) fn legend<'a>(svg: &mut String, frame: &Frame, names: impl Iterator<Item = &'a str>) {
    let x = frame.left + frame.width + 12.0;
    for (k, name) in names.enumerate().filter(|(_, n)| !n.is_empty()) {
        let y = frame.top + 8.0 + 18.0 * k as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/>"#,
            y - 6.0,
            PALETTE[k % PALETTE.len()]
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{y:.1}" dominant-baseline="middle">{}</text>"#,
            x + 17.0,
            escape(&truncate(name, 18))
        );
    }
}

/// The range spanned by the finite values, padded when it is a single point; (0, 1) if none.
pub(super) fn fit_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    } else {
        (lo, hi)
    }
}

/// `range` widened by 5% on each side, so lines do not run along the frame.
pub(super) fn pad((lo, hi): (f64, f64)) -> (f64, f64) {
    let margin = 0.05 * (hi - lo);
    (lo - margin, hi + margin)
}

/// About five round tick values (steps of 1, 2 or 5 times a power of ten) within [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let span = hi - lo;
    if !span.is_finite() || span <= 0.0 {
        return Vec::new();
    }
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = magnitude
        * match raw / magnitude {
            n if n < 1.5 => 1.0,
            n if n < 3.0 => 2.0,
            n if n < 7.0 => 5.0,
            _ => 10.0,
        };
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last)
        .map(|i| {
            let t = i as f64 * step;
            (
                t,
                format!(
                    "{:.*}",
                    decimals,
                    if t.abs() < step * 1e-9 { 0.0 } else { t }
                ),
            )
        })
        .collect()
}

pub(super) fn format_value(v: f64) -> String {
    if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

pub(super) fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        text.chars().take(max_chars - 1).chain(['…']).collect()
    }
}

#[cfg(test)]
/// Test helper: checks the document frame and that every element opened is closed in order.
pub(crate) fn assert_well_formed(svg: &str) {
    assert!(
        svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let end = start + rest[start..].find('>').expect("unterminated tag");
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(name), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap_or(""));
        }
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
    for bad in ["NaN", "=\"inf", "=\"-inf", "inf,"] {
        assert!(!svg.contains(bad), "non-finite coordinate in {svg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        let t: Vec<String> = ticks(0.0, 1.0).into_iter().map(|t| t.1).collect();
        assert_eq!(t, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let t: Vec<String> = ticks(-3.0, 37.0).into_iter().map(|t| t.1).collect();
        assert_eq!(t, ["0", "10", "20", "30"]);
        assert!(ticks(1.0, 1.0).is_empty());
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
    }
}
