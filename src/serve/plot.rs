//! The curves page's chart: any runs' series of one metric overlaid, optionally smoothed
//! and on a log scale, grad-norm spikes marked; an SVG string put inline in the page.

use plotters::prelude::*;

use crate::report::plots;

/// (metric, split) pairs the page offers.
pub const METRICS: &[(&str, &str)] = &[
    ("loss", "train"),
    ("loss", "val"),
    ("grad_norm", "train"),
    ("lr", "train"),
    ("tokens_per_s", "train"),
];

/// The name a metric goes by in URLs: `loss`, `val_loss`, `grad_norm`, ...
pub fn key(m: &(&str, &str)) -> String {
    match m {
        (name, "train") => name.to_string(),
        (name, split) => format!("{split}_{name}"),
    }
}

/// An exponential moving average with weight `smooth` on the past (0: the raw series),
/// thinned for drawing with its grad-norm spike steps kept.
fn smoothed(s: &[(i64, f64)], smooth: f64, metric: &str) -> Vec<(f64, f64)> {
    let mut avg: Option<f64> = None;
    let averaged: Vec<(i64, f64)> = s
        .iter()
        .filter(|(step, v)| *step >= 0 && v.is_finite())
        .map(|&(step, v)| {
            let a = avg.map_or(v, |a| smooth * a + (1.0 - smooth) * v);
            avg = Some(a);
            (step, a)
        })
        .collect();
    let spikes = if metric == "grad_norm" {
        crate::report::spikes(s)
    } else {
        Vec::new()
    };
    plots::thin(&averaged, &spikes)
}

/// One run's series of the metric, as the chart names and colours it.
pub struct Curve {
    pub run_id: String,
    /// The legend's name for it: its id and axis values.
    pub label: String,
    /// Its [`plots::palette`] index: its position in its sweep, as in the report's plots.
    pub colour: usize,
    pub points: Vec<(i64, f64)>,
}

/// Runs of different sweeps (or ten places apart in one) can have the same colour: each
/// later one takes the first colour no earlier run on the chart has, while one is left, so
/// a chart of up to ten runs never shows two lines alike. The others keep their report's.
pub fn distinct_colours(series: &mut [Curve]) {
    let mut used = [false; plots::PALETTE_LEN];
    // First every run whose colour no earlier run took keeps it, then the rest take the
    // free ones in order.
    let clashing: Vec<usize> = (0..series.len())
        .filter(|&i| {
            let own = series[i].colour % plots::PALETTE_LEN;
            std::mem::replace(&mut used[own], true)
        })
        .collect();
    for i in clashing {
        if let Some(free) = used.iter().position(|u| !u) {
            series[i].colour = free;
            used[free] = true;
        }
    }
}

pub fn curves(series: &[Curve], metric: &str, smooth: f64, log: bool) -> Result<String, String> {
    let lines: Vec<(&Curve, Vec<(f64, f64)>)> = series
        .iter()
        .map(|c| (c, smoothed(&c.points, smooth, metric)))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    if lines.is_empty() {
        return Ok(format!("<p>No {metric} values for these runs.</p>"));
    }
    let pts = lines.iter().flat_map(|(_, s)| s.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let log = log && y0 > 0.0;
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 460)).into_drawing_area();
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root);
        chart
            .caption(format!("{metric} by optimizer step"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut c = $chart;
                c.configure_mesh()
                    .x_desc("optimizer step")
                    .y_desc(metric)
                    .x_label_formatter(&plots::step_label)
                    .draw()
                    .map_err(|x| e(&x))?;
                for (curve, s) in &lines {
                    let colour = plots::palette(curve.colour);
                    c.draw_series(LineSeries::new(s.iter().copied(), colour.stroke_width(2)))
                        .map_err(|x| e(&x))?
                        .label(curve.label.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
                }
                if metric == "grad_norm" {
                    for Curve {
                        run_id: id,
                        points: raw,
                        ..
                    } in series
                    {
                        let steps = crate::report::spikes(raw);
                        let marks: Vec<(f64, f64)> = raw
                            .iter()
                            .filter(|(s, v)| v.is_finite() && steps.binary_search(s).is_ok())
                            .map(|&(s, v)| (s as f64, v))
                            .collect();
                        if marks.is_empty() {
                            continue;
                        }
                        c.draw_series(
                            marks
                                .into_iter()
                                .map(|p| Cross::new(p, 8, RED.stroke_width(3))),
                        )
                        .map_err(|x| e(&x))?
                        .label(format!("{id}: spike"))
                        .legend(|(x, y)| Cross::new((x + 8, y), 5, RED.stroke_width(3)));
                    }
                }
                c.configure_series_labels()
                    .border_style(BLACK)
                    .background_style(WHITE.mix(0.85))
                    .draw()
                    .map_err(|x| e(&x))?;
            }};
        }
        if log {
            draw!(chart
                .build_cartesian_2d(0f64..x1, (y0 / 1.2..y1 * 1.2).log_scale())
                .map_err(|x| e(&x))?);
        } else {
            draw!(chart
                .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))
                .map_err(|x| e(&x))?);
        }
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(colour: usize) -> Curve {
        Curve {
            run_id: String::new(),
            label: String::new(),
            colour,
            points: Vec::new(),
        }
    }

    #[test]
    fn runs_sharing_a_colour_get_the_first_free_one_and_the_rest_keep_theirs() {
        // Position 0 of two sweeps, and positions 1 and 11 of one.
        let mut s: Vec<Curve> = [0, 0, 1, 11, 4].into_iter().map(curve).collect();
        distinct_colours(&mut s);
        let got: Vec<usize> = s.iter().map(|c| c.colour).collect();
        assert_eq!(got, [0, 2, 1, 3, 4]);
        // Eleven runs: the palette runs out and the last keeps its own.
        let mut s: Vec<Curve> = (0..11).map(|_| curve(5)).collect();
        distinct_colours(&mut s);
        let got: Vec<usize> = s.iter().map(|c| c.colour).collect();
        assert_eq!(got, [5, 0, 1, 2, 3, 4, 6, 7, 8, 9, 5]);
    }
}
