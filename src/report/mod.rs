//! Small report writers: Markdown tables and SVG bar charts (no plotting dependency).

/// A horizontal bar chart on a log10 axis (perplexities span orders of magnitude).
pub fn bar_chart_svg(title: &str, rows: &[(String, f64)]) -> String {
    let (w, left, bar_h, gap, top) = (720.0, 170.0, 22.0, 8.0, 40.0);
    let h = top + rows.len() as f64 * (bar_h + gap) + 30.0;
    let max = rows.iter().map(|r| r.1).fold(1.0f64, f64::max).log10().max(1.0);
    let mut s =
        format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n");
    s += &format!(
        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        esc(title)
    );
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

/// A vertical bar chart of one score per layer (linear axis from the lowest of 0 and the
/// scores to the highest); `highlight` layers (e.g. the kept ones) are drawn in orange.
/// Non-finite scores get no bar.
pub fn layer_chart_svg(title: &str, scores: &[f64], highlight: &[usize]) -> String {
    let (left, top, plot_h, bar_w, gap) = (60.0, 40.0, 240.0, 18.0, 6.0);
    let w = left + scores.len() as f64 * (bar_w + gap) + 20.0;
    let h = top + plot_h + 50.0;
    let finite = scores.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let y = |v: f64| top + (hi - v) / span * plot_h;
    let mut s =
        format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n");
    s += &format!(
        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        esc(title)
    );
    for v in [hi, lo] {
        s += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n", left - 6.0, y(v) + 4.0, fmt(v));
    }
    s += &format!("<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\n", w - 20.0, y(0.0), y(0.0));
    for (l, v) in scores.iter().enumerate() {
        let x = left + l as f64 * (bar_w + gap) + gap / 2.0;
        if v.is_finite() {
            let (y0, y1) = (y(v.max(0.0)), y(v.min(0.0)));
            let fill = if highlight.contains(&l) { "#e07b39" } else { "#4a7ebb" };
            s += &format!(
                "<rect x=\"{x:.1}\" y=\"{y0:.1}\" width=\"{bar_w}\" height=\"{:.1}\" fill=\"{fill}\"><title>layer {l}: {}</title></rect>\n",
                (y1 - y0).max(0.5),
                fmt(*v)
            );
        }
        s += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{l}</text>\n", x + bar_w / 2.0, top + plot_h + 16.0);
    }
    s += &format!("<text x=\"{left}\" y=\"{}\" fill=\"#555\">layer (orange: kept)</text>\n</svg>\n", h - 10.0);
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
