//! The overview's charts, drawn on the server as SVG by `plotters` (no
//! JavaScript chart library, nothing to build): one line per series over
//! the last hour, x in minutes before now.

use plotters::prelude::*;

/// One line of a chart.
pub struct Line {
    /// Legend text (queue and task names are `[A-Za-z0-9_-]`; the SVG
    /// backend escapes text as well).
    pub label: String,
    /// CSS colour, `#rrggbb`.
    pub color: (u8, u8, u8),
    /// (seconds since the epoch, value).
    pub points: Vec<(i64, f64)>,
    /// Draw a dot at each point too (a series with gaps, such as quantiles
    /// of slices with no sample, may have single points a line cannot show).
    pub dots: bool,
}

/// Chart size in pixels.
const WIDTH: u32 = 560;
const HEIGHT: u32 = 230;

/// Shortest time range drawn, in minutes.
const MIN_MINUTES: f64 = 5.0;

/// Draws `lines` over the time before `now` (seconds since the epoch) as an
/// SVG document: from the oldest point with data (at least
/// [`MIN_MINUTES`], at most an hour). `unit` labels the y axis.
pub fn render(title: &str, unit: &str, now: i64, lines: &[Line]) -> Result<String, String> {
    let oldest = lines
        .iter()
        .flat_map(|l| l.points.iter().filter(|p| p.1 != 0.0).map(|p| p.0))
        .min()
        .map_or(0.0, |t| (now - t) as f64 / 60.0);
    let minutes = (oldest + 1.0).clamp(MIN_MINUTES, 60.0).ceil();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let top = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(0.0_f64, f64::max);
        let top = if top <= 0.0 { 1.0 } else { top * 1.15 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(48)
            .build_cartesian_2d(-minutes..0.0_f64, 0.0_f64..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(5)
            .x_label_formatter(&|m| if *m >= 0.0 { "now".to_string() } else { format!("{m:.0}m") })
            .y_desc(unit)
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(|e| e.to_string())?;
        for line in lines {
            let color = RGBColor(line.color.0, line.color.1, line.color.2);
            let points = line
                .points
                .iter()
                .map(|(t, v)| ((*t - now) as f64 / 60.0, *v))
                .filter(|(m, _)| *m >= -minutes && *m <= 0.0);
            let points: Vec<(f64, f64)> = points.collect();
            if line.dots {
                chart
                    .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(line.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2)));
        }
        if !lines.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(RGBColor(200, 200, 200))
                .label_font(("sans-serif", 11))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A colour per status, the same as the console's CSS.
pub fn status_color(status: jetsched_contract::RunStatus) -> (u8, u8, u8) {
    use jetsched_contract::RunStatus::*;
    match status {
        Queued | Waiting => (120, 144, 156),
        Started => (33, 150, 243),
        Succeeded => (46, 160, 67),
        Failed => (245, 159, 0),
        Dead | Rejected | Invalid => (214, 48, 49),
        Cancelled | Skipped | Missed | Backfill => (150, 150, 150),
        Expired => (156, 39, 176),
    }
}

/// Colours for lines that are not statuses (queues), in turn.
pub const PALETTE: [(u8, u8, u8); 8] = [
    (33, 150, 243),
    (46, 160, 67),
    (245, 159, 0),
    (214, 48, 49),
    (156, 39, 176),
    (0, 150, 136),
    (121, 85, 72),
    (96, 125, 139),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_a_path_per_line_and_the_legend() {
        let now = 1_000_000;
        let line = Line {
            label: "succeeded".into(),
            color: (1, 2, 3),
            points: vec![(now - 600, 1.0), (now, 2.0)],
            dots: false,
        };
        let svg = render("Runs per second", "runs/s", now, &[line]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.contains("succeeded"));
        assert!(svg.contains("<polyline") || svg.contains("<path"), "{svg}");
    }

    #[test]
    fn text_is_escaped() {
        let line = Line { label: "<b>x</b>".into(), color: (1, 2, 3), points: vec![(0, 1.0)], dots: true };
        let svg = render("a & b", "n", 0, &[line]).unwrap();
        assert!(!svg.contains("<b>"), "{svg}");
    }
}
