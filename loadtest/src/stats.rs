//! Latency distributions (HdrHistogram: microsecond resolution, three
//! significant digits, up to an hour), their plots (SVG, plotters), and the
//! progress bars of long phases (indicatif, on stderr, hidden when stderr is
//! not a terminal).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Highest latency recorded, in microseconds (an hour); longer ones count as this.
const MAX_US: u64 = 3_600_000_000;

/// A latency distribution.
pub struct Samples(Histogram<u64>);

impl Default for Samples {
    fn default() -> Self {
        // Bounds are constants that hdrhistogram accepts.
        #[allow(clippy::expect_used)]
        Samples(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"))
    }
}

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.saturating_record((d.as_micros() as u64).clamp(1, MAX_US));
    }

    pub fn len(&self) -> usize {
        self.0.len() as usize
    }

    /// The p-th percentile (0-100).
    pub fn percentile(&mut self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.0.value_at_percentile(p))
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Samples) {
        if let Err(err) = self.0.add(&other.0) {
            println!("samples not merged: {err}");
        }
    }

    /// How many samples are longer than `d`.
    pub fn count_above(&self, d: Duration) -> u64 {
        let above = (d.as_micros() as u64).saturating_add(1);
        if above > self.0.max() { 0 } else { self.0.count_between(above, self.0.max()) }
    }

    /// `p50 .. p99 .. max ..`.
    pub fn summary(&mut self) -> String {
        let (p50, p99, max) = (self.percentile(50.0), self.percentile(99.0), Duration::from_micros(self.0.max()));
        format!("p50 {} p99 {} max {}", ms(p50), ms(p99), ms(max))
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Where plots go: `LOADTEST_PLOTS` or docs/img (BENCHMARKS.md shows them).
pub fn plot_dir() -> PathBuf {
    std::env::var_os("LOADTEST_PLOTS").map_or_else(|| PathBuf::from("docs/img"), PathBuf::from)
}

/// Draws the latency distributions `series` (label, samples) as a
/// percentile spectrum (x: percentile on a log scale of 1 / (1 - q), y:
/// latency in ms) to `<plot dir>/bench-<name>.svg`; prints where.
pub fn plot(name: &str, title: &str, series: &[(&str, &Samples)]) {
    let path = plot_dir().join(format!("bench-{name}.svg"));
    match draw(&path, title, series) {
        Ok(()) => println!("plot: {}", path.display()),
        Err(err) => println!("plot {} not written: {err}", path.display()),
    }
}

/// Percentiles drawn: up to 99.99.
const MAX_X: f64 = 10_000.0;

fn draw(path: &Path, title: &str, series: &[(&str, &Samples)]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(label, s)| {
            let points =
                s.0.iter_quantiles(2)
                    .map(|v| {
                        (1.0 / (1.0 - v.quantile_iterated_to()).max(1.0 / MAX_X), v.value_iterated_to() as f64 / 1000.0)
                    })
                    .filter(|(x, _)| *x <= MAX_X)
                    .collect();
            (*label, points)
        })
        .collect();
    let top = curves.iter().flat_map(|(_, p)| p.iter().map(|v| v.1)).fold(0.0_f64, f64::max).max(0.01) * 1.1;
    let root = SVGBackend::new(path, (720, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d((1.0..MAX_X).log_scale(), 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{}%", 100.0 - 100.0 / x))
        .draw()
        .map_err(|e| e.to_string())?;
    const COLORS: [RGBColor; 4] =
        [RGBColor(33, 150, 243), RGBColor(214, 48, 49), RGBColor(46, 160, 67), RGBColor(245, 159, 0)];
    for (i, (label, points)) in curves.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// A counter for a long phase: `<what> <count> (<rate>/s)` on stderr.
pub fn progress(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {human_pos} ({per_sec}) {elapsed}") {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut s = Samples::default();
        for ms in 1..=100 {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.len(), 100);
        let p50 = s.percentile(50.0).as_secs_f64() * 1000.0;
        let p99 = s.percentile(99.0).as_secs_f64() * 1000.0;
        assert!((49.9..=50.1).contains(&p50), "{p50}");
        assert!((98.9..=99.1).contains(&p99), "{p99}");
        assert_eq!(Samples::default().percentile(99.0), Duration::ZERO);
    }

    #[test]
    fn a_plot_is_an_svg_with_a_line_per_series() {
        let mut a = Samples::default();
        for us in 1..=1000 {
            a.push(Duration::from_micros(us * 10));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        draw(&path, "test", &[("a", &a)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("polyline"), "{svg}");
    }
}
