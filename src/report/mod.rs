//! Small report writers: Markdown tables and SVG bar charts (no plotting dependency).

/// A horizontal bar chart on a log10 axis (perplexities span orders of magnitude).
pub fn bar_chart_svg(title: &str, rows: &[(String, f64)]) -> String {
    let (w, left, bar_h, gap, top) = (720.0, 170.0, 22.0, 8.0, 40.0);
    let h = top + rows.len() as f64 * (bar_h + gap) + 30.0;
    let max = rows.iter().map(|r| r.1).fold(1.0f64, f64::max).log10().max(1.0);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n");
    s += &format!("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n", esc(title));
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let len = if v.is_finite() && *v > 0.0 { (v.log10().max(0.0) / max) * (w - left - 90.0) } else { 0.0 };
        s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", left - 8.0, y + 16.0, esc(label));
        s += &format!("<rect x=\"{left}\" y=\"{y}\" width=\"{len:.1}\" height=\"{bar_h}\" fill=\"#4a7ebb\"/>\n");
        s += &format!("<text x=\"{:.1}\" y=\"{}\">{}</text>\n", left + len + 6.0, y + 16.0, fmt(*v));
    }
    s += &format!("<text x=\"{left}\" y=\"{}\" fill=\"#555\">log scale</text>\n</svg>\n", h - 8.0);
    s
}

pub fn fmt(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
