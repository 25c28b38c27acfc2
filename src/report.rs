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

/// Line chart of several (x, y) series on shared axes (log-scaled y with `log_y`; points
/// with y <= 0 are dropped there). Each series gets its own colour and a legend entry.
pub fn line_chart_svg(title: &str, xlabel: &str, series: &[(String, Vec<(f64, f64)>)], log_y: bool) -> String {
    const COLOURS: [&str; 8] = ["#4a7ebb", "#e07b39", "#3a9a5b", "#c0392b", "#8e44ad", "#7f8c8d", "#d4ac0d", "#16a085"];
    let (left, top, pw, ph) = (70.0, 40.0, 560.0, 300.0);
    let (w, h) = (left + pw + 200.0, top + ph + 60.0);
    let fy = |v: f64| if log_y { v.log10() } else { v };
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0))
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in &pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(fy(y)), y1.max(fy(y)));
    }
    if pts.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let px = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| top + (y1 - fy(y)) / (y1 - y0) * ph;
    let mut s =
        format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n");
    s += &format!(
        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        esc(title)
    );
    s += &format!("<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>\n");
    for k in 0..=4 {
        let f = k as f64 / 4.0;
        let yv = y0 + f * (y1 - y0);
        let label = if log_y { 10f64.powf(yv) } else { yv };
        let yy = top + (1.0 - f) * ph;
        s += &format!("<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\n", left + pw);
        s += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n", left - 6.0, yy + 4.0, fmt(label));
        let xv = x0 + f * (x1 - x0);
        s += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", left + f * pw, top + ph + 16.0, fmt(xv));
    }
    s += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#555\">{}</text>\n", left + pw / 2.0, h - 12.0, esc(xlabel));
    for (i, (name, p)) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let line: Vec<String> = p
            .iter()
            .filter(|&&(x, y)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0))
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if !line.is_empty() {
            s += &format!("<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.8\" points=\"{}\"/>\n", line.join(" "));
        }
        if line.len() <= 40 {
            for pt in &line {
                let (x, y) = pt.split_once(',').unwrap_or(("0", "0"));
                s += &format!("<circle cx=\"{x}\" cy=\"{y}\" r=\"2.5\" fill=\"{c}\"/>\n");
            }
        }
        let ly = top + 10.0 + i as f64 * 18.0;
        s += &format!("<rect x=\"{}\" y=\"{:.1}\" width=\"14\" height=\"3\" fill=\"{c}\"/>\n", left + pw + 12.0, ly - 4.0);
        s += &format!("<text x=\"{}\" y=\"{ly:.1}\">{}</text>\n", left + pw + 30.0, esc(name));
    }
    s + "</svg>\n"
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
