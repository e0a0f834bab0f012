//! The only module that prints: progress bars, tables, JSON lines.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::exec::{Event, Reporter};
use crate::store::RunStatus;

/// Progress bars on a terminal; plain lines otherwise (CI logs, pipes).
pub struct ProgressReporter {
    multi: MultiProgress,
    sweep: Option<ProgressBar>,
    runs: HashMap<String, ProgressBar>,
    labels: HashMap<String, String>,
    plain: bool,
}

impl Default for ProgressReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressReporter {
    pub fn new() -> Self {
        let plain = !std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if plain {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        ProgressReporter {
            multi,
            sweep: None,
            runs: HashMap::new(),
            labels: HashMap::new(),
            plain,
        }
    }

    fn line(&self, s: String) {
        if self.plain {
            eprintln!("{s}");
        } else {
            let _ = self.multi.println(s);
        }
    }
}

impl Reporter for ProgressReporter {
    fn event(&mut self, e: &Event) {
        match e {
            Event::SweepStarted {
                sweep,
                total,
                to_run,
            } => {
                self.line(format!("sweep {sweep}: {total} runs, {to_run} to run"));
                let pb = self.multi.add(ProgressBar::new(*to_run as u64));
                pb.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>10} [{bar:30}] {pos}/{len} runs {elapsed}",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                pb.set_prefix(sweep.clone());
                self.sweep = Some(pb);
            }
            Event::RunSkipped { run_id, reason } => {
                self.line(format!("  skip  {run_id} ({reason})"));
            }
            Event::RunStarted {
                run_id,
                label,
                devices,
                stages,
            } => {
                self.labels.insert(run_id.clone(), label.clone());
                let on = if devices.is_empty() {
                    String::new()
                } else {
                    let d: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
                    format!(" [devices {}]", d.join(","))
                };
                // Said only when earlier stages are reused.
                let only = if stages.len() < 3 && !stages.is_empty() || stages.is_empty() {
                    let s: Vec<&str> = stages.iter().map(|s| s.name()).collect();
                    if s.is_empty() {
                        " (all stages done: assembling)".to_string()
                    } else {
                        format!(" ({} only; earlier stages reused)", s.join(", "))
                    }
                } else {
                    String::new()
                };
                self.line(format!("  start {run_id} {label}{on}{only}"));
                let pb = self.multi.add(ProgressBar::new(0));
                pb.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>14} {spinner} {wide_msg} [{bar:20}] {pos}/{len}",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                pb.set_prefix(run_id.clone());
                pb.enable_steady_tick(Duration::from_millis(200));
                self.runs.insert(run_id.clone(), pb);
            }
            // The run's line and bar say enough; `--json` reports each stage.
            Event::StageFinished { .. } => {}
            Event::RunResumed { run_id, step, .. } => {
                self.line(format!("  resume {run_id} from step {step}"));
            }
            Event::Phase {
                run_id,
                phase,
                total,
            } => {
                if let Some(pb) = self.runs.get(run_id) {
                    pb.set_length(*total);
                    pb.set_position(0);
                    pb.set_message(phase.to_string());
                }
            }
            Event::Progress {
                run_id,
                pos,
                message,
            } => {
                if let Some(pb) = self.runs.get(run_id) {
                    pb.set_position(*pos);
                    pb.set_message(message.clone());
                }
            }
            Event::Record(_) => {}
            Event::RunFinished {
                run_id,
                status,
                error,
                duration_s,
            } => {
                if let Some(pb) = self.runs.remove(run_id) {
                    pb.finish_and_clear();
                    self.multi.remove(&pb);
                }
                if let Some(s) = &self.sweep {
                    s.inc(1);
                }
                let label = self.labels.get(run_id).cloned().unwrap_or_default();
                let tail = error.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
                self.line(format!(
                    "  {:<5} {run_id} {label} ({duration_s:.1}s){tail}",
                    match status {
                        RunStatus::Done => "done",
                        RunStatus::Interrupted => "intr",
                        RunStatus::Diverged => "diverged",
                        _ => "FAIL",
                    }
                ));
            }
            Event::SweepFinished(o) => {
                if let Some(s) = self.sweep.take() {
                    s.finish_and_clear();
                    self.multi.remove(&s);
                }
                self.line(format!(
                    "sweep {}: {} done, {} skipped, {} failed, {} diverged, {} interrupted",
                    o.sweep, o.done, o.skipped, o.failed, o.diverged, o.interrupted
                ));
            }
        }
    }
}

/// One JSON object per event on stdout (records left out), for scripts.
pub struct JsonReporter;

impl Reporter for JsonReporter {
    fn event(&mut self, e: &Event) {
        let v = match e {
            Event::SweepStarted {
                sweep,
                total,
                to_run,
            } => {
                serde_json::json!({"event": "sweep_started", "sweep": sweep, "total": total, "to_run": to_run})
            }
            Event::RunSkipped { run_id, reason } => {
                serde_json::json!({"event": "run_skipped", "run_id": run_id, "reason": reason})
            }
            Event::RunStarted {
                run_id,
                label,
                devices,
                stages,
            } => {
                serde_json::json!({"event": "run_started", "run_id": run_id, "label": label,
                    "devices": devices, "stages": stages})
            }
            Event::StageFinished {
                run_id,
                stage,
                id,
                duration_s,
                ..
            } => serde_json::json!({"event": "stage_finished", "run_id": run_id,
                "stage": stage, "id": id, "duration_s": duration_s}),
            Event::RunResumed {
                run_id,
                step,
                checkpoint,
            } => serde_json::json!({"event": "run_resumed", "run_id": run_id, "step": step,
                "checkpoint": checkpoint}),
            Event::RunFinished {
                run_id,
                status,
                error,
                duration_s,
            } => serde_json::json!({"event": "run_finished", "run_id": run_id, "status": status,
                "error": error, "duration_s": duration_s}),
            Event::Phase {
                run_id,
                phase,
                total,
            } => {
                serde_json::json!({"event": "phase", "run_id": run_id, "phase": phase, "total": total})
            }
            Event::SweepFinished(o) => serde_json::json!({"event": "sweep_finished", "outcome": o}),
            _ => return,
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
    }
}

/// An aligned text table.
pub fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut t = Table::new(headers.to_vec());
    for r in rows {
        t.push(r);
    }
    let mut out = Vec::new();
    t.write(&mut out).expect("writing to memory");
    String::from_utf8(out).expect("the cells' text")
}

/// An aligned text table built a row at a time, its cells kept in one buffer rather than a
/// string each: a table of a million runs (`plan`) costs little more than its text.
pub struct Table {
    headers: Vec<String>,
    layout: TableLayout,
    cells: String,
    /// Where each cell ends in `cells`.
    ends: Vec<usize>,
    /// Where each row's cells start in `ends`.
    rows: Vec<usize>,
}

impl Table {
    pub fn new(headers: Vec<String>) -> Table {
        Table {
            layout: TableLayout::fit(&headers, &[]),
            headers,
            cells: String::new(),
            ends: Vec::new(),
            rows: Vec::new(),
        }
    }

    pub fn push<S: AsRef<str>>(&mut self, row: &[S]) {
        self.rows.push(self.ends.len());
        for (i, c) in row.iter().enumerate() {
            let c = c.as_ref();
            if let Some(w) = self.layout.widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
            self.cells.push_str(c);
            self.ends.push(self.cells.len());
        }
    }

    /// The table's text, a line at a time.
    pub fn write(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(out, "{}", self.layout.line(&self.headers))?;
        for (n, &first) in self.rows.iter().enumerate() {
            let last = self.rows.get(n + 1).copied().unwrap_or(self.ends.len());
            let cells: Vec<&str> = (first..last)
                .map(|k| {
                    let start = if k == 0 { 0 } else { self.ends[k - 1] };
                    &self.cells[start..self.ends[k]]
                })
                .collect();
            writeln!(out, "{}", self.layout.line(&cells))?;
        }
        Ok(())
    }
}

/// The column widths of a table: each column as wide as its widest cell among those
/// measured, columns two spaces apart.
pub struct TableLayout {
    widths: Vec<usize>,
}

impl TableLayout {
    pub fn fit<S: AsRef<str>>(headers: &[S], rows: &[Vec<String>]) -> TableLayout {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.as_ref().chars().count()).collect();
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        TableLayout { widths }
    }

    /// One line of the table (no newline), trailing spaces trimmed.
    pub fn line<S: AsRef<str>>(&self, cells: &[S]) -> String {
        cells
            .iter()
            .map(AsRef::as_ref)
            .enumerate()
            // Padded by hand: `format!`'s width is limited to u16 and panics beyond it,
            // and a cell (a query result, an axis value) can be any length.
            .map(|(i, c)| {
                let pad = self
                    .widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(c.chars().count());
                let mut cell = String::with_capacity(c.len() + pad);
                cell.push_str(c);
                cell.extend(std::iter::repeat_n(' ', pad));
                cell
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    }
}

/// `ablate compare`: the differing config keys, then the runs, then the paired tests.
pub fn comparison(c: &crate::report::RunComparison) -> String {
    use crate::report::format::{num, pct, pvalue, signed_pts};
    let short = |id: &str| id[..id.len().min(12)].to_string();
    let mut out = String::new();
    let ids: Vec<String> = c.runs.iter().map(|r| short(&r.run_id)).collect();
    if c.differing.is_empty() {
        out.push_str("The runs have the same config.\n\n");
    } else {
        let mut headers = vec!["key".to_string()];
        headers.extend(ids.iter().cloned());
        let rows: Vec<Vec<String>> = c
            .differing
            .iter()
            .map(|(k, vals)| {
                let mut r = vec![k.clone()];
                r.extend(vals.iter().map(|v| crate::plan::display_value(Some(v))));
                r
            })
            .collect();
        out.push_str(&table(&headers, &rows));
        out.push('\n');
    }
    let headers: Vec<String> = [
        "run",
        "status",
        "evaluator",
        "pass rate",
        "95% CI",
        "final train loss",
        "val loss",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = c
        .runs
        .iter()
        .map(|r| {
            vec![
                short(&r.run_id),
                r.status.clone(),
                r.evaluator.clone(),
                format!("{} ({}/{})", pct(r.pass_rate), r.passed, r.n_eval),
                format!("{} – {}", pct(r.ci_low), pct(r.ci_high)),
                num(r.final_train_loss, None),
                num(r.final_val_loss, None),
            ]
        })
        .collect();
    out.push_str(&table(&headers, &rows));
    if !c.pairs.is_empty() {
        out.push('\n');
        let headers: Vec<String> = [
            "run",
            "vs",
            "shared",
            "Δ (points)",
            "95% CI of Δ",
            "p (McNemar)",
            "p (Holm)",
            "verdict",
        ]
        .map(String::from)
        .to_vec();
        let rows: Vec<Vec<String>> = c
            .pairs
            .iter()
            .map(|q| {
                vec![
                    short(&q.run_id),
                    short(&q.reference),
                    q.test.n.to_string(),
                    signed_pts(Some(q.test.diff)),
                    format!(
                        "{} – {}",
                        signed_pts(Some(q.test.diff_low)),
                        signed_pts(Some(q.test.diff_high))
                    ),
                    pvalue(Some(q.test.p_value)),
                    pvalue(Some(q.test.p_holm)),
                    q.test.verdict.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&headers, &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_takes_cells_of_any_length() {
        let long = "x".repeat(70_000);
        let out = table(
            &["a".to_string(), "b".to_string()],
            &[
                vec![long.clone(), "1".into()],
                vec!["é".into(), "22".into()],
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], format!("{long}  1"));
        assert_eq!(lines[2].chars().count(), 70_000 + 2 + 2);
        assert!(lines[0].starts_with("a ") && lines[0].ends_with(" b"));
    }
}
