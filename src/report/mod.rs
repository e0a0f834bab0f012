//! Reports: query the store for a sweep, compute intervals and differences to the
//! baseline, and render a minijinja template (strict: an undefined variable is an error).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::Value;

use crate::eval::wilson_interval;
use crate::store::{Store, StoreError};

/// The built-in template, used when report-templates/ has none.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../report-templates/sweep.md.j2");
const Z95: f64 = 1.959963984540054;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sweep \"{0}\" is not in the database (run `ablate run` on it first)")]
    UnknownSweep(String),
    #[error("template {path}: {message}")]
    Template { path: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub run_id: String,
    pub status: String,
    pub is_baseline: bool,
    /// Axis values in the order of `ReportData::axes`, formatted for display.
    pub axis_values: Vec<String>,
    pub axes: BTreeMap<String, Value>,
    pub final_train_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub pass_rate: Option<f64>,
    pub passed: i64,
    pub n_eval: i64,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// Pass rate minus the baseline's, in points.
    pub delta_pass_rate: Option<f64>,
    pub steps: i64,
    pub duration_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportData {
    pub sweep: String,
    pub description: String,
    pub file: String,
    pub axes: Vec<String>,
    pub rows: Vec<RunRow>,
    pub baseline: Option<String>,
    pub best: Option<String>,
    pub counts: BTreeMap<String, usize>,
    /// Pairs of evaluators that judged the same predictions of a run.
    pub agreement: Vec<AgreementRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgreementRow {
    pub run_id: String,
    pub dataset: String,
    pub evaluator_a: String,
    pub evaluator_b: String,
    pub n: i64,
    pub agreement: Option<f64>,
    pub kappa: Option<f64>,
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Collects a sweep's rows from the store.
pub fn collect(store: &Store, sweep: &str) -> Result<ReportData, ReportError> {
    let (_, meta) = store.query(&format!(
        "SELECT name, description, file, axes_json FROM sweeps WHERE name = {}",
        sql_str(sweep)
    ))?;
    let Some(m) = meta.first() else {
        return Err(ReportError::UnknownSweep(sweep.into()));
    };
    let axes: Vec<String> = serde_json::from_str(m[3].as_str().unwrap_or("[]")).unwrap_or_default();
    let (_, rows) = store.query(&format!(
        "SELECT s.run_id, r.status, s.is_baseline, s.axes_json, v.final_train_loss, v.final_val_loss,
                v.pass_rate,
                CAST(ROUND(v.pass_rate * v.n_eval) AS INTEGER),
                v.n_eval,
                (SELECT COUNT(*) FROM metrics m WHERE m.run_id = s.run_id AND m.name = 'loss' AND m.split = 'train'),
                r.duration_s
         FROM sweep_runs s JOIN runs r ON r.id = s.run_id JOIN run_summary v ON v.run_id = s.run_id
         WHERE s.sweep = {} ORDER BY s.position",
        sql_str(sweep)
    ))?;
    let mut out = Vec::new();
    for r in rows {
        let axes_map: BTreeMap<String, Value> =
            serde_json::from_str(r[3].as_str().unwrap_or("{}")).unwrap_or_default();
        let passed = r[7].as_i64().unwrap_or(0);
        let n = r[8].as_i64().unwrap_or(0);
        let (lo, hi) = if n > 0 {
            let (l, h) = wilson_interval(passed as usize, n as usize, Z95);
            (Some(l), Some(h))
        } else {
            (None, None)
        };
        out.push(RunRow {
            run_id: r[0].as_str().unwrap_or_default().to_string(),
            status: r[1].as_str().unwrap_or_default().to_string(),
            is_baseline: r[2].as_i64() == Some(1),
            axis_values: axes
                .iter()
                .map(|a| crate::plan::display_value(axes_map.get(a)))
                .collect(),
            axes: axes_map,
            final_train_loss: f(&r[4]),
            final_val_loss: f(&r[5]),
            pass_rate: f(&r[6]),
            passed,
            n_eval: n,
            ci_low: lo,
            ci_high: hi,
            delta_pass_rate: None,
            steps: r[9].as_i64().unwrap_or(0),
            duration_s: f(&r[10]),
        });
    }
    let base_rate = out.iter().find(|r| r.is_baseline).and_then(|r| r.pass_rate);
    for r in &mut out {
        if let (Some(b), Some(p)) = (base_rate, r.pass_rate) {
            r.delta_pass_rate = Some(p - b);
        }
    }
    let mut counts = BTreeMap::new();
    for r in &out {
        *counts.entry(r.status.clone()).or_insert(0) += 1;
    }
    let best = out
        .iter()
        .filter(|r| r.pass_rate.is_some())
        .max_by(|a, b| {
            a.pass_rate
                .partial_cmp(&b.pass_rate)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|r| r.run_id.clone());
    let (_, pairs) = store.query(&format!(
        "SELECT a.run_id, a.dataset, a.evaluator_a, a.evaluator_b, a.n, a.agreement, a.kappa
         FROM evaluator_agreement a JOIN sweep_runs s ON s.run_id = a.run_id
         WHERE s.sweep = {} ORDER BY s.position, a.dataset, a.evaluator_a, a.evaluator_b",
        sql_str(sweep)
    ))?;
    let agreement = pairs
        .iter()
        .map(|r| AgreementRow {
            run_id: r[0].as_str().unwrap_or_default().to_string(),
            dataset: r[1].as_str().unwrap_or_default().to_string(),
            evaluator_a: r[2].as_str().unwrap_or_default().to_string(),
            evaluator_b: r[3].as_str().unwrap_or_default().to_string(),
            n: r[4].as_i64().unwrap_or(0),
            agreement: f(&r[5]),
            kappa: f(&r[6]),
        })
        .collect();
    Ok(ReportData {
        agreement,
        sweep: sweep.to_string(),
        description: m[1].as_str().unwrap_or_default().to_string(),
        file: m[2].as_str().unwrap_or_default().to_string(),
        axes,
        baseline: out.iter().find(|r| r.is_baseline).map(|r| r.run_id.clone()),
        best,
        rows: out,
        counts,
    })
}

fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Renders `data` with a template (a path, or the built-in one).
pub fn render(data: &ReportData, template: Option<&Path>) -> Result<String, ReportError> {
    let (name, source) = match template {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| ReportError::Template {
                path: p.display().to_string(),
                message: e.to_string(),
            })?,
        ),
        None => (
            "sweep.md.j2 (built in)".to_string(),
            DEFAULT_TEMPLATE.to_string(),
        ),
    };
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_filter("pct", |v: Option<f64>| -> String {
        v.map_or("-".into(), |x| format!("{:.1}%", 100.0 * x))
    });
    env.add_filter("num", |v: Option<f64>, digits: Option<usize>| -> String {
        v.map_or("-".into(), |x| format!("{:.*}", digits.unwrap_or(4), x))
    });
    env.add_filter("signed_pts", |v: Option<f64>| -> String {
        v.map_or("-".into(), |x| format!("{:+.1}", 100.0 * x))
    });
    let tmpl_err = |e: minijinja::Error| ReportError::Template {
        path: name.clone(),
        message: format!("{e:#}")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    env.add_template_owned("report", source).map_err(tmpl_err)?;
    env.get_template("report")
        .and_then(|t| t.render(data))
        .map_err(tmpl_err)
}

/// Renders a sweep's report into `<out_dir>/<sweep>.md` and returns the path.
pub fn write_report(
    store: &Store,
    sweep: &str,
    template: Option<&Path>,
    out_dir: &Path,
) -> Result<PathBuf, ReportError> {
    let data = collect(store, sweep)?;
    let text = render(&data, template)?;
    std::fs::create_dir_all(out_dir).map_err(|e| ReportError::Io {
        path: out_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let path = out_dir.join(format!("{sweep}.md"));
    std::fs::write(&path, text).map_err(|e| ReportError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(path)
}
