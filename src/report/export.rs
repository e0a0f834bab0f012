//! `ablate export`: a sweep's runs with their axes and summary metrics, as CSV or JSON, for
//! notebooks and spreadsheets. One small writer per format.

use std::io::Write;

use serde_json::{json, Map, Value};

use super::format::csv_cell;
use super::{ReportData, RunRow};

/// The summary columns after `run_id`, `status`, `is_baseline` and the axes.
const SUMMARY: &[&str] = &[
    "evaluator",
    "pass_rate",
    "passed",
    "n_eval",
    "ci_low",
    "ci_high",
    "delta_pass_rate",
    "final_train_loss",
    "final_val_loss",
    "min_val_loss",
    "steps",
    "max_grad_norm",
    "grad_spikes",
    "params",
    "tokens_per_s",
    "duration_s",
    "seed",
];

fn summary(r: &RunRow) -> Vec<Value> {
    vec![
        json!(r.evaluator),
        json!(r.pass_rate),
        json!(r.passed),
        json!(r.n_eval),
        json!(r.ci_low),
        json!(r.ci_high),
        json!(r.delta_pass_rate),
        json!(r.final_train_loss),
        json!(r.final_val_loss),
        json!(r.min_val_loss),
        json!(r.steps),
        json!(r.max_grad_norm),
        json!(r.grad_spikes),
        json!(r.params),
        json!(r.tokens_per_s),
        json!(r.duration_s),
        json!(r.seed),
    ]
}

/// One JSON object per run: identity, `axes` as an object, then the summary metrics.
pub fn to_json(data: &ReportData) -> Value {
    let runs: Vec<Value> = data
        .rows
        .iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("run_id".into(), json!(r.run_id));
            o.insert("status".into(), json!(r.status));
            o.insert("is_baseline".into(), json!(r.is_baseline));
            o.insert("axes".into(), json!(r.axes));
            for (k, v) in SUMMARY.iter().zip(summary(r)) {
                o.insert((*k).into(), v);
            }
            Value::Object(o)
        })
        .collect();
    json!({ "sweep": data.sweep, "axes": data.axes, "runs": runs })
}

/// CSV with one column per axis (named by its dotted key); empty cells for missing values.
pub fn write_csv<W: Write>(data: &ReportData, out: W) -> csv::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    let mut header: Vec<&str> = vec!["run_id", "status", "is_baseline"];
    header.extend(data.axes.iter().map(String::as_str));
    header.extend(SUMMARY);
    w.write_record(&header)?;
    for r in &data.rows {
        let mut rec = vec![
            r.run_id.clone(),
            r.status.clone(),
            r.is_baseline.to_string(),
        ];
        rec.extend(
            data.axes
                .iter()
                .map(|a| r.axes.get(a).map(csv_cell).unwrap_or_default()),
        );
        rec.extend(summary(r).iter().map(csv_cell));
        w.write_record(&rec)?;
    }
    w.flush()?;
    Ok(())
}
