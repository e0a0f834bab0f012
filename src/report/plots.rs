//! SVG plots written beside a report: loss curves with gradient-norm spikes, pass rate per
//! axis with Wilson error bars, the clip x lr heatmap and pass rate against model size.
//! Text stays SVG `<text>` (no font files are read), so the plots build anywhere.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{AxisPlot, Plots, ReportData, ReportError, RunRow};

/// Points per loss curve: longer series are thinned (spikes are always kept), so an SVG
/// stays small however many steps a run logged.
const MAX_POINTS: usize = 400;
const SIZE: (u32, u32) = (820, 480);

/// How many distinct colours [`palette`] has before it repeats.
pub const PALETTE_LEN: usize = 10;

pub fn palette(i: usize) -> RGBColor {
    // Tableau 10: distinct, and readable on white.
    const C: [(u8, u8, u8); PALETTE_LEN] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

/// An axis as a legend names it: `train.clip_norm` is `clip`, `model.name` is `model`,
/// otherwise the key's last part (`lr`, `epochs`, `seed`).
fn axis_short(axis: &str) -> &str {
    match axis {
        "train.clip_norm" => "clip",
        "model.name" => "model",
        _ => axis.rsplit('.').next().unwrap_or(axis),
    }
}

/// `clip 0.3, lr 0.001`: axis values that say which axis they belong to.
fn named_values<'a>(axes: impl Iterator<Item = &'a String>, values: &[String]) -> String {
    axes.zip(values)
        .map(|(a, v)| format!("{} {v}", axis_short(a)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn label(r: &RunRow, axes: &[String]) -> String {
    run_label(&r.run_id, axes, &r.axis_values)
}

/// A run as a legend names it: `1a2b3c4d: clip 0.3, lr 0.001` (its id's first 8 characters
/// and its axis values). Its colour is [`palette`] of its position in its sweep, in the
/// report's plots and on the dashboard alike.
pub fn run_label(run_id: &str, axes: &[String], values: &[String]) -> String {
    let short = &run_id[..run_id.len().min(8)];
    if values.is_empty() {
        short.to_string()
    } else {
        format!("{short}: {}", named_values(axes.iter(), values))
    }
}

/// Tick labels of a step axis: whole steps only (no `20.0`), blank between them.
pub fn step_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as i64)
    } else {
        String::new()
    }
}

/// (x, pass rate, interval low, interval high)
type Bar = (f64, f64, f64, f64);

fn canvas(path: &Path) -> DrawingArea<SVGBackend<'_>, Shift> {
    SVGBackend::new(path, SIZE).into_drawing_area()
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Writes every plot that fits the sweep into `dir` and returns their paths relative to the
/// report (`<prefix>/<file>.svg`).
pub fn write_all(data: &ReportData, dir: &Path, prefix: &str) -> Result<Plots, ReportError> {
    let mut plots = Plots::default();
    // Each plot opens its file only once it knows it has something to draw; a plot that
    // does not apply removes what an earlier report may have left under its name.
    let draw = |file: &str, f: &dyn Fn(&Path) -> DrawResult<bool>| {
        let path = dir.join(file);
        match f(&path) {
            Ok(true) => Ok(Some(format!("{prefix}/{file}"))),
            Ok(false) => {
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
            Err(e) => Err(ReportError::Plot {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    };
    plots.loss = draw("loss.svg", &|path| loss_curves(data, path))?;
    for (i, axis) in data.axes.iter().enumerate() {
        if axis == "train.seed" {
            continue;
        }
        let file = format!("pass_rate_{}.svg", axis.replace('.', "_"));
        if let Some(path) = draw(&file, &|path| pass_rate_by_axis(data, i, path))? {
            plots.by_axis.push(AxisPlot {
                axis: axis.clone(),
                path,
            });
        }
    }
    plots.heatmap = draw("clip_lr_heatmap.svg", &|path| heatmap(data, path))?;
    plots.size = draw("pass_rate_by_size.svg", &|path| by_size(data, path))?;
    Ok(plots)
}

/// Thins a series to at most `MAX_POINTS`, keeping the first, last and `keep` steps (a
/// chart of a million points draws no better than one of a few hundred, and far slower).
pub fn thin(series: &[(i64, f64)], keep: &[i64]) -> Vec<(f64, f64)> {
    let stride = series.len().div_ceil(MAX_POINTS).max(1);
    series
        .iter()
        .enumerate()
        .filter(|(i, (s, _))| {
            i % stride == 0 || *i + 1 == series.len() || keep.binary_search(s).is_ok()
        })
        .map(|(_, &(s, v))| (s as f64, v))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

fn loss_curves(data: &ReportData, path: &Path) -> DrawResult<bool> {
    let curves: Vec<(usize, Vec<(f64, f64)>)> = data
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| (i, thin(&s.loss, &s.spike_steps)))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    if curves.is_empty() {
        return Ok(false);
    }
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for (_, c) in &curves {
        for &(x, y) in c {
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    // Spike markers sit on the loss curve at the spike's step.
    let spikes: Vec<(f64, f64)> = curves
        .iter()
        .flat_map(|(i, _)| {
            let s = &data.series[*i];
            s.loss
                .iter()
                .filter(|(step, v)| v.is_finite() && s.spike_steps.binary_search(step).is_ok())
                .map(|&(step, v)| (step as f64, v))
        })
        .collect();
    let title = if spikes.is_empty() {
        format!("{}: training loss (no grad-norm spikes)", data.sweep)
    } else {
        format!(
            "{}: training loss ({} grad-norm spikes, red ×)",
            data.sweep,
            spikes.len()
        )
    };
    let root = canvas(path);
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc("loss")
        .x_label_formatter(&step_label)
        .draw()?;
    for (i, c) in &curves {
        let color = palette(*i);
        chart
            .draw_series(LineSeries::new(c.iter().copied(), color.stroke_width(2)))?
            .label(label(&data.rows[*i], &data.axes))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    // After every curve, so no line hides a marker.
    if !spikes.is_empty() {
        chart
            .draw_series(
                spikes
                    .into_iter()
                    .map(|p| Cross::new(p, 8, RED.stroke_width(3))),
            )?
            .label("grad-norm spike")
            .legend(|(x, y)| Cross::new((x + 8, y), 5, RED.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(true)
}

/// Pass rate against one axis: x is the axis value (in plan order), one line per
/// combination of the other axes, Wilson 95% error bars.
fn pass_rate_by_axis(data: &ReportData, axis: usize, path: &Path) -> DrawResult<bool> {
    let values = ordered_values(data, axis);
    // other axes' values -> [(x index, rate, lo, hi)]
    let mut lines: BTreeMap<Vec<String>, Vec<Bar>> = BTreeMap::new();
    for r in &data.rows {
        let v = &r.axis_values[axis];
        let (Some(p), Some(lo), Some(hi)) = (r.pass_rate, r.ci_low, r.ci_high) else {
            continue;
        };
        let x = values.iter().position(|x| x == v).unwrap_or(0) as f64;
        let others: Vec<String> = r
            .axis_values
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != axis)
            .map(|(_, v)| v.clone())
            .collect();
        lines.entry(others).or_default().push((x, p, lo, hi));
    }
    if lines.is_empty() {
        return Ok(false);
    }
    for pts in lines.values_mut() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let name = &data.axes[axis];
    let others: Vec<&String> = data
        .axes
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != axis)
        .map(|(_, a)| a)
        .collect();
    let root = canvas(path);
    root.fill(&WHITE)?;
    let n = values.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: pass rate by {name} (95% Wilson)", data.sweep),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.5f64..(n - 0.5), 0f64..1f64)?;
    let labels = values.clone();
    chart
        .configure_mesh()
        .x_desc(name.as_str())
        .y_desc("pass rate")
        .x_labels(values.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
        .draw()?;
    let k = lines.len();
    for (li, (key, pts)) in lines.iter().enumerate() {
        let color = palette(li);
        // Offset lines a little so error bars of equal x do not overlap.
        let dx = if k > 1 {
            (li as f64 - (k - 1) as f64 / 2.0) * 0.25 / k as f64
        } else {
            0.0
        };
        let legend = if others.is_empty() {
            "pass rate".to_string()
        } else {
            named_values(others.iter().copied(), key)
        };
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|&(x, p, _, _)| (x + dx, p)),
                color.stroke_width(2),
            ))?
            .label(legend)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart.draw_series(
            pts.iter().map(|&(x, p, lo, hi)| {
                ErrorBar::new_vertical(x + dx, lo, p, hi, color.filled(), 8)
            }),
        )?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    root.present()?;
    Ok(true)
}

/// An axis' distinct display values: numeric ones in increasing order (then any others,
/// such as `none`, in plan order), otherwise plan order.
fn ordered_values(data: &ReportData, axis: usize) -> Vec<String> {
    let mut values: Vec<String> = Vec::new();
    for r in &data.rows {
        if !values.contains(&r.axis_values[axis]) {
            values.push(r.axis_values[axis].clone());
        }
    }
    let num = |v: &String| v.parse::<f64>().ok();
    if values.iter().any(|v| num(v).is_some()) {
        // Stable: non-numeric values keep their order, after the numbers.
        values.sort_by(|a, b| match (num(a), num(b)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
    }
    values
}

/// Mean pass rate over seeds and other axes for each (clip norm, lr) cell; cells with a
/// diverged run say how many.
fn heatmap(data: &ReportData, path: &Path) -> DrawResult<bool> {
    let (Some(ci), Some(li)) = (
        data.axes.iter().position(|a| a == "train.clip_norm"),
        data.axes.iter().position(|a| a == "train.lr"),
    ) else {
        return Ok(false);
    };
    let clips = ordered_values(data, ci);
    let lrs = ordered_values(data, li);
    // (clip, lr) -> (sum of rates, runs with a rate, diverged)
    let mut cells: BTreeMap<(usize, usize), (f64, usize, usize)> = BTreeMap::new();
    for r in &data.rows {
        let (c, l) = (&r.axis_values[ci], &r.axis_values[li]);
        let key = (
            clips.iter().position(|x| x == c).unwrap_or(0),
            lrs.iter().position(|x| x == l).unwrap_or(0),
        );
        let cell = cells.entry(key).or_default();
        if let Some(p) = r.pass_rate {
            cell.0 += p;
            cell.1 += 1;
        }
        cell.2 += (r.status == "diverged") as usize;
    }
    // The colour scale spans the rates present, so neighbouring cells differ visibly.
    let rates: Vec<f64> = cells
        .values()
        .filter(|c| c.1 > 0)
        .map(|c| c.0 / c.1 as f64)
        .collect();
    let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rates.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let scale = |r: f64| if hi > lo { (r - lo) / (hi - lo) } else { 0.5 };
    let root = canvas(path);
    root.fill(&WHITE)?;
    let (main, bar) = root.split_horizontally(SIZE.0 - 110);
    let (nx, ny) = (lrs.len() as f64, clips.len() as f64);
    let mut chart = ChartBuilder::on(&main)
        .caption(
            format!("{}: mean pass rate by clip norm and lr", data.sweep),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..nx, 0f64..ny)?;
    let (lx, cy) = (lrs.clone(), clips.clone());
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("train.lr")
        .y_desc("train.clip_norm")
        .x_labels(lrs.len() * 2 + 1)
        .y_labels(clips.len() * 2 + 1)
        .x_label_formatter(&|x| centre_label(*x, &lx))
        .y_label_formatter(&|y| centre_label(*y, &cy))
        .draw()?;
    for (&(c, l), &(sum, n, diverged)) in &cells {
        let (x, y) = (l as f64, c as f64);
        let (color, text) = if n > 0 {
            let rate = sum / n as f64;
            (
                ViridisRGB::get_color(scale(rate)),
                format!("{:.1}%", rate * 100.0),
            )
        } else {
            (RGBColor(220, 220, 220), "-".into())
        };
        let fill = color.filled();
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x, y), (x + 1.0, y + 1.0)],
            fill,
        )))?;
        let mut text = text;
        if diverged > 0 {
            text.push_str(&format!(" ({diverged} diverged)"));
        }
        chart.draw_series(std::iter::once(Text::new(
            text,
            (x + 0.3, y + 0.5),
            ("sans-serif", 15).into_font().color(&text_on(color)),
        )))?;
    }
    if !rates.is_empty() {
        colour_bar(&bar, lo, hi)?;
    }
    root.present()?;
    Ok(true)
}

/// Black on light cells, white on dark ones (by relative luminance).
fn text_on(c: RGBColor) -> RGBColor {
    let l = 0.2126 * c.0 as f64 + 0.7152 * c.1 as f64 + 0.0722 * c.2 as f64;
    if l > 128.0 {
        BLACK
    } else {
        WHITE
    }
}

/// The heatmap's scale: viridis from `lo` (bottom) to `hi` (top), labelled in percent.
fn colour_bar(area: &DrawingArea<SVGBackend<'_>, Shift>, lo: f64, hi: f64) -> DrawResult<()> {
    const STEPS: usize = 50;
    let (top, bottom) = (60i32, SIZE.1 as i32 - 60);
    let (x0, x1) = (10i32, 34i32);
    let h = (bottom - top) as f64 / STEPS as f64;
    for k in 0..STEPS {
        let t = k as f64 / (STEPS - 1) as f64;
        let y = bottom as f64 - (k + 1) as f64 * h;
        area.draw(&Rectangle::new(
            [(x0, y.floor() as i32), (x1, (y + h).ceil() as i32)],
            ViridisRGB::get_color(if hi > lo { t } else { 0.5 }).filled(),
        ))?;
    }
    area.draw(&Rectangle::new([(x0, top), (x1, bottom)], BLACK))?;
    let font = ("sans-serif", 14).into_font();
    area.draw(&Text::new(
        format!("{:.1}%", hi * 100.0),
        (x1 + 6, top - 6),
        font.clone(),
    ))?;
    area.draw(&Text::new(
        format!("{:.1}%", lo * 100.0),
        (x1 + 6, bottom - 6),
        font.clone(),
    ))?;
    area.draw(&Text::new("pass rate", (x0 - 4, top - 30), font))?;
    Ok(())
}

/// Labels at cell centres (k + 0.5) only.
fn centre_label(v: f64, labels: &[String]) -> String {
    let k = v - 0.5;
    if (k - k.round()).abs() < 1e-6 && k >= 0.0 {
        labels.get(k.round() as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// Pass rate against parameter count (log scale), when the sweep varies the model.
fn by_size(data: &ReportData, path: &Path) -> DrawResult<bool> {
    if !data.axes.iter().any(|a| a == "model.name") {
        return Ok(false);
    }
    let pts: Vec<(f64, f64, f64, f64)> = data
        .rows
        .iter()
        .filter_map(|r| Some((r.params?, r.pass_rate?, r.ci_low?, r.ci_high?)))
        .collect();
    if pts.is_empty() {
        return Ok(false);
    }
    let lo = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min) / 2.0;
    let hi = pts.iter().map(|p| p.0).fold(0.0, f64::max) * 2.0;
    let root = canvas(path);
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: pass rate by model size (95% Wilson)", data.sweep),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("parameters")
        .y_desc("pass rate")
        .x_label_formatter(&|x| format!("{:.2e}", x))
        .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
        .draw()?;
    let color = palette(0);
    chart.draw_series(
        pts.iter()
            .map(|&(x, p, l, h)| ErrorBar::new_vertical(x, l, p, h, color.filled(), 8)),
    )?;
    chart.draw_series(
        pts.iter()
            .map(|&(x, p, _, _)| Circle::new((x, p), 4, color.filled())),
    )?;
    root.present()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_tick_as_whole_numbers_and_legends_name_their_axes() {
        assert_eq!(step_label(&20.0), "20");
        assert_eq!(step_label(&2.5), "");
        let axes = ["train.clip_norm".to_string(), "train.lr".to_string()];
        assert_eq!(
            named_values(axes.iter(), &["0.3".into(), "0.001".into()]),
            "clip 0.3, lr 0.001"
        );
    }

    #[test]
    fn heatmap_text_is_light_on_dark_cells() {
        assert_eq!(text_on(ViridisRGB::get_color(0.0)), WHITE);
        assert_eq!(text_on(ViridisRGB::get_color(1.0)), BLACK);
    }
}
