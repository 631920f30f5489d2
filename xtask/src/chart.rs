//! SVG line charts for the reports xtask writes (`soak`, `bench`): a few series over a shared
//! x axis, scaled to fit, with the axes' extremes and a legend. Self-contained SVG, so a report
//! opens in any browser and a chart committed under `docs/` renders where the repository is read.

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
    pub series: Vec<Series>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 280.0;
const PAD: f64 = 50.0;
/// Gridlines across the y axis, besides zero.
const GRID: u32 = 4;

/// Text for SVG: the chart's own labels, escaped all the same.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A value for an axis label: no decimals once it is large.
fn label(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
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
            series: Vec::new(),
        }
    }

    pub fn with(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// The chart as one `<svg>` element. The y axis starts at zero; the x axis spans the
    /// points. Non-finite points are left out.
    pub fn svg(&self) -> String {
        let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
        let points = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter())
                .filter(|p| finite(p))
        };
        let x_min = points().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let x_max = points().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        let (x_min, x_max) = if x_min.is_finite() {
            (x_min, x_max)
        } else {
            (0.0, 1.0)
        };
        let x_span = (x_max - x_min).max(1e-9);
        let y_max = points().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.1;
        let x_at = |x: f64| PAD + (WIDTH - 2.0 * PAD) * (x - x_min) / x_span;
        let y_at = |y: f64| HEIGHT - PAD - (HEIGHT - 2.0 * PAD) * y / y_max;

        let mut svg = String::new();
        let _ = write!(
            svg,
            r##"<svg width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif"><rect width="{WIDTH}" height="{HEIGHT}" fill="white" stroke="#ccc"/><text x="{PAD}" y="20" font-size="14">{}</text>"##,
            escape(&self.title)
        );
        for i in 0..=GRID {
            let y = y_max * f64::from(i) / f64::from(GRID);
            let _ = write!(
                svg,
                r##"<line x1="{PAD}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                WIDTH - PAD,
                PAD - 4.0,
                y_at(y) + 4.0,
                label(y),
                y = y_at(y),
            );
        }
        let _ = write!(
            svg,
            r##"<text x="6" y="{:.1}" font-size="11" transform="rotate(-90 12 {:.1})">{}</text><text x="{PAD}" y="{}" font-size="11">{}</text><text x="{}" y="{}" font-size="11" text-anchor="end">{} {}</text>"##,
            HEIGHT / 2.0,
            HEIGHT / 2.0,
            escape(&self.y_unit),
            HEIGHT - PAD + 16.0,
            label(x_min),
            WIDTH - PAD,
            HEIGHT - PAD + 16.0,
            label(x_max),
            escape(&self.x_unit),
        );
        for (i, series) in self.series.iter().enumerate() {
            let line: Vec<String> = series
                .points
                .iter()
                .filter(|p| finite(p))
                .map(|&(x, y)| format!("{:.1},{:.1}", x_at(x), y_at(y)))
                .collect();
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="{}"/>"#,
                line.join(" "),
                c = series.colour,
            );
            if !series.dashed {
                for point in &line {
                    let (x, y) = point.split_once(',').unwrap_or_default();
                    let _ = write!(
                        svg,
                        r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{}"/>"#,
                        series.colour
                    );
                }
            }
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" font-size="12" fill="{}">{}</text>"#,
                PAD + 8.0,
                PAD + 4.0 + 15.0 * i as f64,
                series.colour,
                escape(&series.name),
            );
        }
        svg.push_str("</svg>");
        svg
    }
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
        // The first point sits on the left edge, the last on the right; y is scaled to 110% of
        // the highest value (10 ms), so 1 ms sits near the bottom.
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
        assert_eq!(xy[1].0, WIDTH - PAD);
        let bottom = HEIGHT - PAD;
        let expected = bottom - (HEIGHT - 2.0 * PAD) * 1.0 / 11.0;
        assert!(
            (xy[0].1 - expected).abs() < 0.1,
            "{} vs {expected}",
            xy[0].1
        );
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
    fn tables_escape_their_cells() {
        let html = table(&["a"], &[vec!["<script>".into()]]);
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
    }
}
