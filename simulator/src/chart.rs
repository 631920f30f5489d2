//! SVG charts for every report the project writes (the simulator's, and xtask's `soak` and
//! `bench`): line charts of a few series over a shared x axis and bar charts of a
//! distribution, each with ticks and gridlines on round steps, axis units and a legend.
//! Self-contained SVG, so a report opens in any browser and a chart committed under `docs/`
//! renders where the repository is read. Every text is escaped.

use std::fmt::Write;

/// One line on a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub colour: &'static str,
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed: an aim or a limit rather than a measurement.
    pub dashed: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, colour: &'static str, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            colour,
            points,
            dashed: false,
        }
    }

    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// A line chart; [`Chart::svg`] draws it.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_unit: String,
    pub y_unit: String,
    log_y: bool,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 300.0;
const PAD: f64 = 50.0;
/// Room on the right for the legend.
const LEGEND: f64 = 130.0;
/// About how many steps a linear axis is cut into.
const STEPS: u32 = 5;

/// Text for SVG and HTML: every label is escaped, whoever wrote it.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick's label: thousands as `k`, fewer decimals as values grow.
fn label(value: f64) -> String {
    if value.abs() >= 10_000.0 && value % 1_000.0 == 0.0 {
        format!("{:.0}k", value / 1_000.0)
    } else if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A round step (1, 2, 2.5 or 5 times a power of ten) that cuts `span` into about `steps`.
fn round_step(span: f64, steps: u32) -> f64 {
    let raw = span / f64::from(steps);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&step| step >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// How values map onto one axis, and where its ticks go.
#[derive(Debug, Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    /// Logarithmic: ticks at 1, 2 and 5 times each power of ten.
    log: bool,
    step: f64,
}

impl Axis {
    /// From `lo` to `hi`, widened to round steps.
    fn linear(lo: f64, hi: f64) -> Self {
        let step = round_step((hi - lo).max(1e-9), STEPS);
        Self {
            lo: (lo / step).floor() * step,
            hi: ((hi / step).ceil() * step).max(lo + step),
            log: false,
            step,
        }
    }

    /// From `lo` to `hi` (both above zero), widened to powers of ten.
    fn log(lo: f64, hi: f64) -> Self {
        let lo = 10f64.powf(lo.log10().floor());
        let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
        Self {
            lo,
            hi,
            log: true,
            step: 0.0,
        }
    }

    /// Where `value` falls, from 0 at `lo` to 1 at `hi`.
    fn place(&self, value: f64) -> f64 {
        if self.log {
            (value.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (value - self.lo) / (self.hi - self.lo)
        }
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut ticks = Vec::new();
            let mut decade = self.lo;
            while decade <= self.hi * (1.0 + 1e-9) {
                for m in [1.0, 2.0, 5.0] {
                    let tick = decade * m;
                    if tick <= self.hi * (1.0 + 1e-9) {
                        ticks.push(tick);
                    }
                }
                decade *= 10.0;
            }
            ticks
        } else {
            let count = ((self.hi - self.lo) / self.step).round() as u32;
            (0..=count)
                .map(|i| self.lo + self.step * f64::from(i))
                .collect()
        }
    }
}

/// An `<svg>` element opened with its white frame and `title`.
fn frame(title: &str, left: f64) -> String {
    format!(
        r##"<svg width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif"><rect width="{WIDTH}" height="{HEIGHT}" fill="white" stroke="#ccc"/><text x="{left}" y="20" font-size="14">{}</text>"##,
        escape(title)
    )
}

/// The y axis' gridlines from `left` to `right`, each with its tick's label.
fn y_grid(svg: &mut String, axis: &Axis, left: f64, right: f64, y_at: impl Fn(f64) -> f64) {
    for y in axis.ticks() {
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{right}" y1="{at:.1}" y2="{at:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            left - 4.0,
            y_at(y) + 4.0,
            label(y),
            at = y_at(y),
        );
    }
}

impl Chart {
    pub fn new(
        title: impl Into<String>,
        x_unit: impl Into<String>,
        y_unit: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_unit: x_unit.into(),
            y_unit: y_unit.into(),
            log_y: false,
            series: Vec::new(),
        }
    }

    pub fn with(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// A logarithmic y axis, for figures that span decades (latency under rising load).
    pub fn log_y(mut self) -> Self {
        self.log_y = true;
        self
    }

    /// The chart as one `<svg>` element. A linear y axis starts at zero; the x axis spans the
    /// points, both widened to round steps. Points that cannot be drawn (not numbers, or not
    /// above zero on a log axis) are left out.
    pub fn svg(&self) -> String {
        let log_y = self.log_y;
        let drawable =
            move |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0);
        let points = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter())
                .filter(|p| drawable(p))
        };
        let x_lo = points().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let x_hi = points().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        let (x_lo, x_hi) = if x_lo.is_finite() {
            (x_lo, x_hi)
        } else {
            (0.0, 1.0)
        };
        let x_axis = Axis::linear(x_lo, x_hi);
        let y_hi = points().map(|p| p.1).fold(0.0f64, f64::max);
        let y_axis = if log_y {
            let y_lo = points().map(|p| p.1).fold(f64::INFINITY, f64::min);
            if y_lo.is_finite() {
                Axis::log(y_lo, y_hi)
            } else {
                Axis::log(1.0, 10.0)
            }
        } else {
            Axis::linear(0.0, y_hi.max(1e-9))
        };
        let (left, right, top, bottom) = (PAD, WIDTH - LEGEND, 35.0, HEIGHT - PAD);
        let x_at = |x: f64| left + (right - left) * x_axis.place(x);
        let y_at = |y: f64| bottom - (bottom - top) * y_axis.place(y);

        let mut svg = frame(&self.title, left);
        y_grid(&mut svg, &y_axis, left, right, y_at);
        for x in x_axis.ticks() {
            let _ = write!(
                svg,
                r##"<line x1="{at:.1}" x2="{at:.1}" y1="{bottom}" y2="{}" stroke="#999"/><text x="{at:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
                bottom + 4.0,
                bottom + 16.0,
                label(x),
                at = x_at(x),
            );
        }
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#999"/><text x="12" y="{mid:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 12 {mid:.1})">{}{}</text><text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
            escape(&self.y_unit),
            if log_y { " (log scale)" } else { "" },
            (left + right) / 2.0,
            bottom + 34.0,
            escape(&self.x_unit),
            mid = (top + bottom) / 2.0,
        );
        for (i, series) in self.series.iter().enumerate() {
            let line: Vec<(f64, f64)> = series
                .points
                .iter()
                .filter(|p| drawable(p))
                .map(|&(x, y)| (x_at(x), y_at(y)))
                .collect();
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let points: Vec<String> = line.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="{}"/>"#,
                points.join(" "),
                c = series.colour,
            );
            if !series.dashed {
                for (x, y) in &line {
                    let _ = write!(
                        svg,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{}"/>"#,
                        series.colour
                    );
                }
            }
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" font-size="12" fill="{}">{}</text>"#,
                right + 12.0,
                top + 10.0 + 16.0 * i as f64,
                series.colour,
                escape(&series.name),
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

/// A bar chart: one bar per `(label, value)`, labelled underneath, over a y axis from zero
/// with ticks and gridlines; each bar's value is its tooltip.
pub fn bars(title: &str, x_unit: &str, y_unit: &str, bars: &[(String, f64)]) -> String {
    let y_hi = bars
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let y_axis = Axis::linear(0.0, y_hi.max(1e-9));
    let (left, right, top, bottom) = (PAD + 10.0, WIDTH - 20.0, 35.0, HEIGHT - PAD);
    let y_at = |y: f64| bottom - (bottom - top) * y_axis.place(y);
    let width = (right - left) / bars.len().max(1) as f64;
    let mut svg = frame(title, left);
    y_grid(&mut svg, &y_axis, left, right, y_at);
    // Labels under every bar while they fit, else under every few.
    let every = ((bars.len() as f64 * 40.0 / (right - left)).ceil() as usize).max(1);
    for (i, (name, value)) in bars.iter().enumerate() {
        let value = if value.is_finite() { *value } else { 0.0 };
        let x = left + width * i as f64;
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#2a6df4"><title>{}: {}</title></rect>"##,
            x + 1.0,
            y_at(value),
            (width - 2.0).max(1.0),
            bottom - y_at(value),
            escape(name),
            label(value),
        );
        if i % every == 0 {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
                x + width / 2.0,
                bottom + 14.0,
                escape(name),
            );
        }
    }
    let _ = write!(
        svg,
        r##"<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#999"/><text x="12" y="{mid:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 12 {mid:.1})">{}</text><text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text></svg>"##,
        escape(y_unit),
        (left + right) / 2.0,
        bottom + 34.0,
        escape(x_unit),
        mid = (top + bottom) / 2.0,
    );
    svg
}

/// A whole page: a title, then each part (already HTML) in order.
pub fn page(title: &str, parts: &[String]) -> String {
    format!(
        "<!doctype html><meta charset=utf-8><title>{t}</title><body style=\"font-family:sans-serif\"><h1>{t}</h1>{}</body>",
        parts.concat(),
        t = escape(title)
    )
}

/// An HTML table of text cells, every cell escaped.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cells = |tag: &str, row: &mut dyn Iterator<Item = &str>| {
        row.map(|cell| {
            format!(
                "<{tag} style=\"text-align:left;padding:2px 10px\">{}</{tag}>",
                escape(cell)
            )
        })
        .collect::<String>()
    };
    let mut html = format!(
        "<table><tr>{}</tr>",
        cells("th", &mut header.iter().copied())
    );
    for row in rows {
        let _ = write!(
            html,
            "<tr>{}</tr>",
            cells("td", &mut row.iter().map(String::as_str))
        );
    }
    html.push_str("</table>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_scales_its_points_into_the_frame_and_names_every_series() {
        let svg = Chart::new("latency <by rate>", "updates/s", "ms")
            .with(Series::new(
                "p50",
                "#1b9e77",
                vec![(1_000.0, 1.0), (2_000.0, 2.0)],
            ))
            .with(Series::new("aim", "#999", vec![(1_000.0, 10.0), (2_000.0, 10.0)]).dashed())
            .svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // The title is escaped, not markup.
        assert!(svg.contains("latency &lt;by rate&gt;"));
        assert!(!svg.contains("<by rate>"));
        assert!(svg.contains(">p50</text>") && svg.contains(">aim</text>"));
        assert!(svg.contains("stroke-dasharray"));
        // The x axis spans 1,000 to 2,000 exactly (round already), so the first point sits on
        // the left edge and the last on the right; y runs from 0 to 10 ms, so 1 ms sits a tenth
        // of the way up.
        let polyline = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let xy: Vec<(f64, f64)> = polyline
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(xy[0].0, PAD);
        assert_eq!(xy[1].0, WIDTH - LEGEND);
        let (top, bottom) = (35.0, HEIGHT - PAD);
        let expected = bottom - (bottom - top) * 0.1;
        assert!(
            (xy[0].1 - expected).abs() < 0.1,
            "{} vs {expected}",
            xy[0].1
        );
    }

    #[test]
    fn axes_are_cut_in_round_steps() {
        assert_eq!(round_step(110_138.0 - 5_012.0, 5), 25_000.0);
        assert_eq!(round_step(10.0, 5), 2.0);
        assert_eq!(round_step(0.7, 5), 0.2);
        let x = Axis::linear(5_012.0, 110_138.0);
        assert_eq!((x.lo, x.hi), (0.0, 125_000.0));
        assert_eq!(x.ticks().len(), 6);
        let y = Axis::log(1.34, 154.75);
        assert_eq!((y.lo, y.hi), (1.0, 1_000.0));
        assert_eq!(
            y.ticks(),
            [
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0
            ]
        );
        assert!((y.place(10.0) - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(label(120_000.0), "120k");
        assert_eq!(label(2.5), "2.50");
        assert_eq!(label(20.0), "20");
    }

    #[test]
    fn a_log_chart_leaves_out_what_it_cannot_place() {
        let svg = Chart::new("t", "x", "ms")
            .log_y()
            .with(Series::new(
                "s",
                "#000",
                vec![(0.0, 0.0), (1.0, 2.0), (2.0, 300.0)],
            ))
            .svg();
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("ms (log scale)") && !svg.contains("inf") && !svg.contains("NaN"));
    }

    #[test]
    fn points_that_are_not_numbers_are_left_out_and_an_empty_chart_still_draws() {
        let svg = Chart::new("t", "x", "y")
            .with(Series::new(
                "s",
                "#000",
                vec![(0.0, f64::NAN), (1.0, 2.0), (2.0, 3.0)],
            ))
            .svg();
        assert!(!svg.contains("NaN"));
        assert_eq!(svg.matches("<circle").count(), 2);
        let empty = Chart::new("t", "x", "y").svg();
        assert!(empty.contains("</svg>") && !empty.contains("NaN"));
    }

    #[test]
    fn bars_have_a_scale_and_escaped_labels() {
        let svg = bars(
            "latency <dist>",
            "ms",
            "reports",
            &[("0.5".into(), 3.0), ("1".into(), 7.0), ("<2>".into(), 0.0)],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect x=").count(), 3);
        // 7 rounds to an axis of 0 to 8 in steps of 2: five ticks with their labels.
        for tick in [">0<", ">2<", ">4<", ">6<", ">8<"] {
            assert!(svg.contains(tick), "{tick}");
        }
        assert!(svg.contains("&lt;2&gt;") && !svg.contains("<2>"));
        assert!(svg.contains("latency &lt;dist&gt;"));
    }

    #[test]
    fn tables_escape_their_cells() {
        let html = table(&["a"], &[vec!["<script>".into()]]);
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
    }
}
