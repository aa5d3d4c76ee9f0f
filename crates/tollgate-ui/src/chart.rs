//! Inline SVG charts rendered on the server: a line chart for time series, a horizontal bar
//! chart for top-N lists and a meter for "used of limit". Colours come from the stylesheet
//! (classes `s0`…`s5`), every data point carries a `<title>` (the browser's tooltip), and all
//! text is escaped.

use std::fmt::Write as _;

use crate::html::{esc, fmt_num};

/// One line of a line chart; `x` is unix seconds.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 640.0;
const H: f64 = 220.0;
const PAD_L: f64 = 52.0;
const PAD_R: f64 = 14.0;
const PAD_T: f64 = 12.0;
const PAD_B: f64 = 28.0;

/// The smallest "nice" number (1, 2, 2.5, 5 × 10ⁿ) at or above `v`.
pub fn nice_ceil(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v - 1e-12 {
            return m * mag;
        }
    }
    10.0 * mag
}

/// A line chart. `x_fmt` labels the x axis (e.g. `HH:MM`), `y_fmt` the y axis and tooltips.
/// The x axis spans the points. With no points at all it renders an empty state instead.
pub fn line_chart(
    id: &str,
    series: &[Series],
    x_fmt: &dyn Fn(f64) -> String,
    y_fmt: &dyn Fn(f64) -> String,
) -> String {
    line_chart_in(id, series, None, x_fmt, y_fmt)
}

/// [`line_chart`] over a given x range (e.g. the whole time range asked for), so charts of
/// one page line up even when a series has data in a few buckets only.
pub fn line_chart_in(
    id: &str,
    series: &[Series],
    x_range: Option<(f64, f64)>,
    x_fmt: &dyn Fn(f64) -> String,
    y_fmt: &dyn Fn(f64) -> String,
) -> String {
    let n: usize = series.iter().map(|s| s.points.len()).sum();
    if n == 0 {
        return crate::html::empty(
            "No data in this time range",
            "Traffic appears here once gateways report it.",
        );
    }
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (mut x0, mut x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    if let Some((a, b)) = x_range {
        x0 = x0.min(a);
        x1 = x1.max(b);
    }
    if x1 - x0 < 1.0 {
        x0 -= 30.0;
        x1 += 30.0;
    }
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    // Four gridline steps of a "nice" size, so the labels are round numbers.
    let y1 = 4.0 * nice_ceil(ymax / 4.0);
    let sx = |x: f64| PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R);
    let sy = |y: f64| H - PAD_B - (y / y1) * (H - PAD_T - PAD_B);
    let mut out = String::with_capacity(1024 + n * 120);
    let _ = write!(
        out,
        "<figure class=\"chart\" data-chart=\"line\" id=\"{}\" data-points=\"{n}\">\
         <svg viewBox=\"0 0 {W} {H}\" role=\"img\" class=\"line-chart\">",
        esc(id)
    );
    // Horizontal grid with y labels.
    for i in 0..=4 {
        let v = y1 * f64::from(i) / 4.0;
        let y = sy(v);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{PAD_L}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - PAD_R,
            PAD_L - 6.0,
            y + 4.0,
            esc(&y_fmt(v))
        );
    }
    for i in 0..=4 {
        let x = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            out,
            "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            sx(x),
            H - 8.0,
            esc(&x_fmt(x))
        );
    }
    for (i, s) in series.iter().enumerate() {
        let cls = i % 6;
        if s.points.len() > 1 {
            let _ = write!(out, "<polyline class=\"line s{cls}\" points=\"");
            for (x, y) in &s.points {
                let _ = write!(out, "{:.1},{:.1} ", sx(*x), sy(*y));
            }
            out.push_str("\"/>");
        }
        // Zeros stay on the line but get no marker: the markers are the data.
        for (x, y) in s.points.iter().filter(|p| p.1 != 0.0) {
            let _ = write!(
                out,
                "<circle class=\"pt s{cls}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.6\"><title>{} · {}: {}</title></circle>",
                sx(*x),
                sy(*y),
                esc(&x_fmt(*x)),
                esc(&s.name),
                esc(&y_fmt(*y))
            );
        }
    }
    out.push_str("</svg><figcaption class=\"legend\">");
    for (i, s) in series.iter().enumerate() {
        let _ = write!(
            out,
            "<span><i class=\"sw s{}\"></i>{}</span>",
            i % 6,
            esc(&s.name)
        );
    }
    out.push_str("</figcaption></figure>");
    out
}

/// A horizontal bar chart of `(label, value)` rows (already sorted by the caller).
pub fn bar_chart(id: &str, rows: &[(String, f64)], v_fmt: &dyn Fn(f64) -> String) -> String {
    if rows.is_empty() {
        return crate::html::empty("Nothing yet", "Rows appear here once there is traffic.");
    }
    const ROW: f64 = 26.0;
    const LABEL_W: f64 = 190.0;
    const VAL_W: f64 = 70.0;
    let h = ROW * rows.len() as f64 + 4.0;
    let max = rows.iter().map(|r| r.1).fold(0.0f64, f64::max).max(1e-12);
    let mut out = String::with_capacity(256 + rows.len() * 260);
    let _ = write!(
        out,
        "<figure class=\"chart\" data-chart=\"bar\" id=\"{}\" data-points=\"{}\">\
         <svg viewBox=\"0 0 {W} {h}\" role=\"img\" class=\"bar-chart\">",
        esc(id),
        rows.len()
    );
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = i as f64 * ROW + 2.0;
        let bw = ((v / max) * (W - LABEL_W - VAL_W - 8.0)).max(if *v > 0.0 { 2.0 } else { 0.0 });
        let shown: String = if label.chars().count() > 30 {
            let mut s: String = label.chars().take(29).collect();
            s.push('…');
            s
        } else {
            label.clone()
        };
        let _ = write!(
            out,
            "<g class=\"row\"><title>{}: {}</title>\
             <text class=\"label\" x=\"0\" y=\"{:.1}\">{}</text>\
             <rect class=\"track\" x=\"{LABEL_W}\" y=\"{:.1}\" width=\"{:.1}\" height=\"14\" rx=\"3\"/>\
             <rect class=\"bar s0\" x=\"{LABEL_W}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"14\" rx=\"3\"/>\
             <text class=\"value\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text></g>",
            esc(label),
            esc(&v_fmt(*v)),
            y + 15.0,
            esc(&shown),
            y + 4.0,
            W - LABEL_W - VAL_W - 8.0,
            y + 4.0,
            W,
            y + 15.0,
            esc(&v_fmt(*v)),
        );
    }
    out.push_str("</svg></figure>");
    out
}

/// A "used of limit" meter: green below 70 %, amber below 90 %, red above.
pub fn meter(used: f64, limit: f64) -> String {
    let pct = if limit > 0.0 {
        (used / limit * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    let cls = if pct >= 90.0 {
        "bad"
    } else if pct >= 70.0 {
        "warn"
    } else {
        "ok"
    };
    format!(
        "<span class=\"meter\"><svg viewBox=\"0 0 100 8\" preserveAspectRatio=\"none\" width=\"120\" height=\"8\" role=\"img\">\
         <title>{} of {} ({pct:.0} %)</title><rect class=\"track\" width=\"100\" height=\"8\" rx=\"4\"/>\
         <rect class=\"fill {cls}\" width=\"{pct:.1}\" height=\"8\" rx=\"4\"/></svg><span class=\"pct\">{pct:.0} %</span></span>",
        esc(&fmt_num(used)),
        esc(&fmt_num(limit))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(7.0), 10.0);
        assert_eq!(nice_ceil(11.0), 20.0);
        assert_eq!(nice_ceil(230.0), 250.0);
        assert_eq!(nice_ceil(0.3), 0.5);
    }

    #[test]
    fn line_chart_has_a_point_per_sample_and_escapes_names() {
        let s = vec![
            Series {
                name: "<req>".into(),
                points: vec![(0.0, 1.0), (60.0, 3.0), (120.0, 2.0)],
            },
            Series {
                name: "errors".into(),
                points: vec![(60.0, 1.0)],
            },
        ];
        let svg = line_chart("c", &s, &|x| format!("{x}"), &|y| format!("{y}"));
        assert_eq!(svg.matches("<circle class=\"pt").count(), 4);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("data-points=\"4\""));
        assert!(svg.contains("&lt;req&gt;"));
        assert!(!svg.contains("<req>"));
        // The axis ends at four round steps above the highest point (3 → steps of 1 → 4).
        assert!(svg.contains(">4</text>") && svg.contains(">1</text>"));
        assert!(!svg.contains(">5</text>"));
    }

    #[test]
    fn empty_charts_say_so() {
        assert!(
            line_chart("c", &[], &|x| format!("{x}"), &|y| format!("{y}"))
                .contains("class=\"empty\"")
        );
        assert!(bar_chart("b", &[], &|v| format!("{v}")).contains("class=\"empty\""));
    }

    #[test]
    fn bars_scale_to_the_largest() {
        let rows = vec![("a".to_string(), 10.0), ("b".to_string(), 5.0)];
        let svg = bar_chart("b", &rows, &|v| format!("{v}"));
        let full = W - 190.0 - 70.0 - 8.0;
        assert!(svg.contains(&format!(
            "width=\"{full:.1}\" height=\"14\" rx=\"3\"/><text"
        )));
        assert!(svg.contains(&format!("width=\"{:.1}\"", full / 2.0)));
    }

    #[test]
    fn meter_colours() {
        assert!(meter(95.0, 100.0).contains("fill bad"));
        assert!(meter(75.0, 100.0).contains("fill warn"));
        assert!(meter(1.0, 100.0).contains("fill ok"));
        assert!(meter(500.0, 100.0).contains("width=\"100.0\""));
    }
}
