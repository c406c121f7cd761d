//! Small hand-written SVG charts: line charts, horizontal bar charts and histograms.
//!
//! Each chart function returns a complete SVG document as a string; [`write_svg`] saves one.
//! Non-finite values are skipped and empty data draws empty axes with a "no data" note, so no
//! input makes these functions panic. All text is XML-escaped.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

mod canvas;

#[cfg(test)]
pub(crate) use canvas::assert_well_formed;
pub use canvas::escape;
use canvas::{close, fit_range, format_value, legend, open, pad, truncate, Frame, HEIGHT, PALETTE};

/// One named line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct LineSeries {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw a dot at each point with area proportional to its weight (e.g. a bin's count).
    pub marker_weights: Option<Vec<f64>>,
}

impl LineSeries {
    /// A plain line through `points`.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            marker_weights: None,
        }
    }

    /// Adds a dot per point, sized by `weights` (one per point).
    pub fn with_marker_weights(mut self, weights: Vec<f64>) -> Self {
        self.marker_weights = Some(weights);
        self
    }
}

/// A line chart with optional fixed axis ranges and a y = x reference line.
#[derive(Debug, Clone)]
pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [LineSeries],
    /// Axis ranges; `None` fits the data.
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    /// Draw the dashed diagonal y = x (for reliability diagrams).
    pub diagonal: bool,
}

impl<'a> LineChart<'a> {
    /// A chart whose axes fit the data, without a diagonal.
    pub fn new(
        title: &'a str,
        x_label: &'a str,
        y_label: &'a str,
        series: &'a [LineSeries],
    ) -> Self {
        Self {
            title,
            x_label,
            y_label,
            series,
            x_range: None,
            y_range: None,
            diagonal: false,
        }
    }

    /// Renders the chart as an SVG document.
    pub fn render(&self) -> String {
        let finite = |s: &LineSeries| {
            s.points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect::<Vec<_>>()
        };
        let all: Vec<(f64, f64)> = self.series.iter().flat_map(finite).collect();
        let x_range = self
            .x_range
            .unwrap_or_else(|| fit_range(all.iter().map(|p| p.0)));
        let y_range = self
            .y_range
            .unwrap_or_else(|| pad(fit_range(all.iter().map(|p| p.1))));
        let frame = Frame::new(70.0, x_range, y_range);
        let mut svg = open(self.title, HEIGHT);
        frame.axes(&mut svg, self.x_label, self.y_label);
        if all.is_empty() {
            frame.no_data(&mut svg);
        }
        if self.diagonal {
            let (lo, hi) = (x_range.0.max(y_range.0), x_range.1.min(y_range.1));
            if lo < hi {
                let _ = writeln!(
                    svg,
                    r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="5,4"/>"##,
                    frame.sx(lo),
                    frame.sy(lo),
                    frame.sx(hi),
                    frame.sy(hi)
                );
            }
        }
        let max_weight = self
            .series
            .iter()
            .flat_map(|s| s.marker_weights.iter().flatten())
            .copied()
            .filter(|w| w.is_finite())
            .fold(0.0, f64::max);
        for (k, s) in self.series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let pts: Vec<String> = finite(s)
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", frame.sx(x), frame.sy(y)))
                .collect();
            if pts.len() > 1 {
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                    pts.join(" ")
                );
            }
            if let Some(weights) = &s.marker_weights {
                for (&(x, y), &w) in s.points.iter().zip(weights) {
                    if !(x.is_finite() && y.is_finite() && w.is_finite()) || max_weight <= 0.0 {
                        continue;
                    }
                    let r = 3.0 + 9.0 * (w.max(0.0) / max_weight).sqrt();
                    let _ = writeln!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="{r:.1}" fill="{color}" fill-opacity="0.6"/>"#,
                        frame.sx(x),
                        frame.sy(y)
                    );
                }
            }
        }
        legend(
            &mut svg,
            &frame,
            self.series.iter().map(|s| s.name.as_str()),
        );
        close(svg)
    }
}

/// A line chart whose axes fit the data (e.g. training loss against step).
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[LineSeries]) -> String {
    LineChart::new(title, x_label, y_label, series).render()
}

/// One named set of bar values, one per category.
#[derive(Debug, Clone, PartialEq)]
pub struct BarSeries {
    pub name: String,
    pub values: Vec<f64>,
}

/// Horizontal bars: one row per category, one bar per series within a row.
///
/// `value_range` fixes the value axis (`None` spans 0 and the data); `reference` draws a dashed
/// vertical line at that value (e.g. 50% agreement).
pub fn bar_chart(
    title: &str,
    value_label: &str,
    categories: &[String],
    series: &[BarSeries],
    value_range: Option<(f64, f64)>,
    reference: Option<f64>,
) -> String {
    let values = || {
        series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .filter(|v| v.is_finite())
    };
    let range = value_range.unwrap_or_else(|| fit_range(values().chain([0.0])));
    let band = 10.0 + 16.0 * series.len().max(1) as f64;
    let height = 100.0 + band * categories.len().max(1) as f64;
    let label_chars = categories
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0)
        .min(40);
    let frame = Frame::with_height(
        20.0 + 7.0 * label_chars as f64,
        range,
        (0.0, categories.len().max(1) as f64),
        height,
    );
    let mut svg = open(title, height);
    frame.x_axis(&mut svg, value_label);
    if categories.is_empty() || values().next().is_none() {
        frame.no_data(&mut svg);
    }
    let bar_h = (band - 10.0) / series.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let top = frame.top + band * c as f64 + 5.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" dominant-baseline="middle">{}</text>"#,
            frame.left - 6.0,
            top + (band - 10.0) / 2.0,
            escape(&truncate(category, 40))
        );
        for (k, s) in series.iter().enumerate() {
            let Some(&v) = s.values.get(c).filter(|v| v.is_finite()) else {
                continue;
            };
            let (x0, x1) = (frame.sx(range.0.max(0.0).min(range.1)), frame.sx(v));
            let y = top + bar_h * k as f64;
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                x0.min(x1),
                (x1 - x0).abs(),
                (bar_h - 1.0).max(1.0),
                PALETTE[k % PALETTE.len()]
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" dominant-baseline="middle" font-size="10">{}</text>"#,
                x0.max(x1) + 3.0,
                y + bar_h / 2.0,
                format_value(v)
            );
        }
    }
    if let Some(r) = reference.filter(|r| r.is_finite() && *r >= range.0 && *r <= range.1) {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#555" stroke-dasharray="5,4"/>"##,
            frame.sx(r),
            frame.top,
            frame.bottom()
        );
    }
    legend(&mut svg, &frame, series.iter().map(|s| s.name.as_str()));
    close(svg)
}

/// Named samples for a [`histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSeries {
    pub name: String,
    pub values: Vec<f64>,
}

/// Counts of finite `values` in `bins` equal-width bins over `[lo, hi]` (the last bin includes
/// `hi`); values outside the range are not counted.
pub fn bin_counts(values: &[f64], bins: usize, lo: f64, hi: f64) -> Vec<usize> {
    let mut counts = vec![0; bins];
    if bins == 0 || lo.is_nan() || hi.is_nan() || hi <= lo {
        return counts;
    }
    for &v in values
        .iter()
        .filter(|v| v.is_finite() && **v >= lo && **v <= hi)
    {
        counts[(((v - lo) / (hi - lo) * bins as f64) as usize).min(bins - 1)] += 1;
    }
    counts
}

/// Overlaid histograms of each series over `range` (`None` fits the data), `bins` bins.
pub fn histogram(
    title: &str,
    x_label: &str,
    series: &[HistogramSeries],
    bins: usize,
    range: Option<(f64, f64)>,
) -> String {
    let bins = bins.max(1);
    let (lo, hi) = range.unwrap_or_else(|| {
        fit_range(
            series
                .iter()
                .flat_map(|s| s.values.iter().copied())
                .filter(|v| v.is_finite()),
        )
    });
    let counts: Vec<Vec<usize>> = series
        .iter()
        .map(|s| bin_counts(&s.values, bins, lo, hi))
        .collect();
    let max = counts.iter().flatten().copied().max().unwrap_or(0);
    let frame = Frame::new(70.0, (lo, hi), (0.0, 1.05 * max.max(1) as f64));
    let mut svg = open(title, HEIGHT);
    frame.axes(&mut svg, x_label, "count");
    if max == 0 {
        frame.no_data(&mut svg);
    }
    let width = (hi - lo) / bins as f64;
    for (k, c) in counts.iter().enumerate() {
        for (b, &n) in c.iter().enumerate().filter(|(_, &n)| n > 0) {
            let (x0, x1) = (
                frame.sx(lo + width * b as f64),
                frame.sx(lo + width * (b + 1) as f64),
            );
            let y = frame.sy(n as f64);
            let _ = writeln!(
                svg,
                r#"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="0.55"/>"#,
                (x1 - x0 - 1.0).max(0.5),
                frame.bottom() - y,
                PALETTE[k % PALETTE.len()]
            );
        }
    }
    legend(&mut svg, &frame, series.iter().map(|s| s.name.as_str()));
    close(svg)
}

/// Writes an SVG document to `path`.
pub fn write_svg(path: &Path, svg: &str) -> Result<()> {
    std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_chart_has_labels_series_and_diagonal() {
        let series = [
            LineSeries::new(
                "train <loss>",
                vec![(0.0, 2.0), (1.0, 1.5), (2.0, f64::NAN), (3.0, 1.1)],
            ),
            LineSeries::new("eval", vec![(0.0, 2.1), (3.0, 1.3)])
                .with_marker_weights(vec![1.0, 4.0]),
        ];
        let svg = line_chart("Loss & more", "step", "loss", &series);
        assert_well_formed(&svg);
        for needle in [
            "Loss &amp; more",
            ">step<",
            ">loss<",
            "train &lt;loss&gt;",
            ">eval<",
            "<polyline",
            "<circle",
        ] {
            assert!(svg.contains(needle), "missing {needle}");
        }
        let mut chart = LineChart::new("R", "x", "y", &series);
        chart.diagonal = true;
        chart.x_range = Some((0.0, 1.0));
        chart.y_range = Some((0.0, 1.0));
        let svg = chart.render();
        assert_well_formed(&svg);
        assert!(svg.contains("stroke-dasharray"));
    }

    #[test]
    fn bar_chart_and_histogram() {
        let cats = vec!["harmless".to_string(), "honest".to_string()];
        let series = [
            BarSeries {
                name: "L1".into(),
                values: vec![72.5, f64::NAN],
            },
            BarSeries {
                name: "L2".into(),
                values: vec![40.0, 55.0],
            },
        ];
        let svg = bar_chart(
            "Agreement",
            "agreement (%)",
            &cats,
            &series,
            Some((0.0, 100.0)),
            Some(50.0),
        );
        assert_well_formed(&svg);
        for needle in [
            ">harmless<",
            ">honest<",
            ">72.5<",
            ">agreement (%)<",
            ">L2<",
            "stroke-dasharray",
        ] {
            assert!(svg.contains(needle), "missing {needle}");
        }
        assert_eq!(
            svg.matches("<rect").count(),
            2 + 3 + 2,
            "background+frame, 3 finite bars, 2 legend keys"
        );

        // Bins of width 0.25: [0, .25) gets 0.1, 0.2; [.25, .5) gets 0.3; [.75, 1] gets 0.9, 1.0.
        assert_eq!(
            bin_counts(&[0.1, 0.2, 0.3, 0.9, 1.0, f64::NAN, 1.5], 4, 0.0, 1.0),
            [2, 1, 0, 2]
        );
        let h = [HistogramSeries {
            name: "p_a".into(),
            values: vec![0.1, 0.2, 0.9],
        }];
        let svg = histogram("P(A)", "p_a", &h, 20, Some((0.0, 1.0)));
        assert_well_formed(&svg);
        assert!(svg.contains(">P(A)<") && svg.contains(">count<"));
    }

    #[test]
    fn empty_and_degenerate_data_do_not_panic() {
        let empty = line_chart("empty", "x", "y", &[]);
        assert_well_formed(&empty);
        assert!(empty.contains("no data"));
        assert_well_formed(&line_chart(
            "nan",
            "x",
            "y",
            &[LineSeries::new("s", vec![(f64::NAN, 1.0)])],
        ));
        assert_well_formed(&line_chart(
            "point",
            "x",
            "y",
            &[LineSeries::new("s", vec![(1.0, 1.0)])],
        ));
        assert_well_formed(&bar_chart("none", "v", &[], &[], None, Some(0.5)));
        assert_well_formed(&histogram("none", "v", &[], 10, None));
        assert_well_formed(&histogram(
            "nan",
            "v",
            &[HistogramSeries {
                name: "s".into(),
                values: vec![f64::NAN],
            }],
            0,
            Some((1.0, 1.0)),
        ));
    }
}
