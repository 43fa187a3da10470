//! Collects the benchmark tables, prints them as Markdown, and writes them with an SVG chart
//! of the read-your-writes latency distributions to `target/bench/`.

use std::fmt::Write as _;
use std::path::PathBuf;

struct Section {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

/// One latency distribution (milliseconds, any order).
pub struct Series {
    pub name: String,
    pub samples: Vec<f64>,
}

#[derive(Default)]
pub struct Report {
    sections: Vec<Section>,
    latency: Vec<Series>,
}

impl Report {
    pub fn section(
        &mut self,
        title: &str,
        header: &[&str],
        rows: Vec<Vec<String>>,
        notes: Vec<String>,
    ) {
        self.sections.push(Section {
            title: title.to_string(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows,
            notes,
        });
    }

    /// A read-your-writes latency distribution for the chart.
    pub fn latency(&mut self, name: String, samples: Vec<f64>) {
        self.latency.push(Series { name, samples });
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        for s in &self.sections {
            let _ = writeln!(out, "\n## {}\n", s.title);
            let _ = writeln!(out, "| {} |", s.header.join(" | "));
            let _ = writeln!(
                out,
                "|{}|",
                s.header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
            );
            for r in &s.rows {
                let _ = writeln!(out, "| {} |", r.join(" | "));
            }
            for n in &s.notes {
                let _ = writeln!(out, "\n{n}");
            }
        }
        if !self.latency.is_empty() {
            let _ = writeln!(
                out,
                "\n![read-your-writes latency distributions](read-your-writes.svg)"
            );
        }
        out
    }

    /// Prints the tables and writes `target/bench/report.md` (and the chart, when there are
    /// latency series).
    pub fn print(&self) {
        let md = self.markdown();
        print!("{md}");
        let dir =
            PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
                .join("bench");
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let _ = std::fs::write(dir.join("report.md"), &md);
        if !self.latency.is_empty() {
            let _ = std::fs::write(dir.join("read-your-writes.svg"), svg(&self.latency));
        }
        println!("\n(written to {})", dir.join("report.md").display());
    }
}

/// Cumulative distributions on a log time axis: how many waits had ended by each latency.
fn svg(series: &[Series]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 420.0;
    const L: f64 = 60.0;
    const R: f64 = 220.0;
    const T: f64 = 30.0;
    const B: f64 = 50.0;
    let colors = [
        "#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989",
    ];
    let (lo, hi) = (-1.0f64, 3.0f64); // 0.1 ms .. 1000 ms
    let x = |ms: f64| L + (W - L - R) * ((ms.max(0.1).log10() - lo) / (hi - lo)).clamp(0.0, 1.0);
    let y = |f: f64| T + (H - T - B) * (1.0 - f);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{L}\" y=\"18\" font-size=\"14\">Read-your-writes: share of waits done by a latency (log scale)</text>\n"
    );
    for d in [0.1, 1.0, 10.0, 100.0, 1000.0] {
        let px = x(d);
        let _ = writeln!(
            s,
            "<line x1=\"{px:.1}\" y1=\"{T}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{d} ms</text>",
            H - B,
            H - B + 18.0
        );
    }
    for f in [0.0, 0.5, 0.9, 0.99] {
        let py = y(f);
        let _ = writeln!(
            s,
            "<line x1=\"{L}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}%</text>",
            W - R,
            L - 6.0,
            py + 4.0,
            f * 100.0
        );
    }
    for (i, sr) in series.iter().enumerate() {
        let mut v = sr.samples.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if v.is_empty() {
            continue;
        }
        let n = v.len() as f64;
        let step = (v.len() / 400).max(1);
        let pts: Vec<String> = v
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == 0 || *k == v.len() - 1)
            .map(|(k, ms)| format!("{:.1},{:.1}", x(*ms), y((k + 1) as f64 / n)))
            .collect();
        let color = colors[i % colors.len()];
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            pts.join(" "),
            W - R + 14.0,
            T + 20.0 * i as f64,
            W - R + 30.0,
            T + 20.0 * i as f64 + 10.0,
            sr.name.replace('&', "&amp;").replace('<', "&lt;")
        );
    }
    s.push_str("</svg>\n");
    s
}
