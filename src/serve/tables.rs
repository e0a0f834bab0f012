//! Every table of the dashboard as CSV: the same rows as the page shows, numbers
//! unformatted. A page with two tables names the second with `table=`.

use std::collections::BTreeMap;

use super::{Miss, Page, Site};
use crate::report::{self, ReportOptions};

impl Site {
    pub(super) fn sweeps_csv(&self) -> Result<Page, Miss> {
        let header = [
            "sweep",
            "question",
            "runs",
            "done",
            "failed",
            "running",
            "pending",
            "updated_at",
        ];
        let rows = self.sweep_list()?.into_iter().map(|s| {
            vec![
                s.name,
                s.description,
                s.runs.to_string(),
                s.done.to_string(),
                s.failed.to_string(),
                s.running.to_string(),
                s.pending.to_string(),
                s.updated_at,
            ]
        });
        csv_page(&header, rows)
    }

    /// `ablate export`'s CSV of a sweep's runs (those the page's filters keep), or with
    /// `table=comparisons` its paired tests against the baseline.
    pub(super) fn sweep_csv(&self, name: &str, q: &BTreeMap<String, String>) -> Result<Page, Miss> {
        let mut data = self.sweep_data(name)?;
        if q.get("table").is_some_and(|t| t == "comparisons") {
            let rows = data
                .comparisons
                .iter()
                .map(|c| ([c.group.clone(), c.run_ids.join(" ")], &c.test));
            return paired_csv(["configuration", "run_ids"], rows);
        }
        super::filter_runs(&mut data, q);
        let mut body = Vec::new();
        report::export::write_csv(&data, &mut body).map_err(|e| Miss::Failed(e.to_string()))?;
        Ok(Page {
            status: 200,
            content_type: "text/csv; charset=utf-8",
            body,
        })
    }

    /// The examples table as filtered on its page (every row, not only the first
    /// `MAX_EXAMPLES`), or with `table=discordant` the counts by kind of failure.
    pub(super) fn examples_csv(
        &self,
        id: &str,
        q: &BTreeMap<String, String>,
    ) -> Result<Page, Miss> {
        let v = self.example_view(id, q)?;
        if q.get("table").is_some_and(|t| t == "discordant") {
            let Some(kinds) = v.discordant else {
                return Err(Miss::Bad(
                    "The discordant table needs another run: add vs=<run id>.".into(),
                ));
            };
            let other = v.other.unwrap_or_default();
            let header = [
                "kind".to_string(),
                format!("{} only passes", v.id),
                format!("{other} only passes"),
            ];
            let rows = kinds
                .into_iter()
                .map(|k| vec![k.kind, k.fixed_here.to_string(), k.fixed_there.to_string()]);
            return csv_page(&header, rows);
        }
        let mut header = vec![
            "dataset",
            "example_id",
            "category",
            "evaluator",
            "verdict",
            "passed",
        ];
        let against = v.other.is_some();
        if against {
            header.extend(["other_verdict", "other_passed"]);
        }
        header.extend(["prediction", "gold"]);
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let rows = v.examples.into_iter().map(|e| {
            let mut row = vec![
                e.dataset,
                e.example_id,
                e.category,
                e.evaluator,
                e.verdict,
                flag(e.passed),
            ];
            if against {
                row.push(e.other_verdict.unwrap_or_default());
                row.push(e.other_passed.map(flag).unwrap_or_default());
            }
            row.extend([e.prediction, e.gold]);
            row
        });
        csv_page(&header, rows)
    }

    /// The compare page's differing keys (with the pass rates), or with `table=pairs` its
    /// paired tests.
    pub(super) fn compare_csv(&self, q: &BTreeMap<String, String>) -> Result<Page, Miss> {
        let ids = self.run_list(q)?;
        let cmp = report::compare_runs(&self.store, &ids, &ReportOptions::default())
            .map_err(|e| Miss::Failed(e.to_string()))?;
        let cell = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        if q.get("table").is_some_and(|t| t == "pairs") {
            let rows = cmp
                .pairs
                .iter()
                .map(|p| ([p.run_id.clone(), p.reference.clone()], &p.test));
            return paired_csv(["run_id", "against"], rows);
        }
        let mut header = vec!["key".to_string()];
        header.extend(cmp.runs.iter().map(|r| r.run_id.clone()));
        let mut rows: Vec<Vec<String>> = cmp
            .differing
            .iter()
            .map(|(key, values)| {
                let mut row = vec![key.clone()];
                row.extend(values.iter().map(report::format::csv_cell));
                row
            })
            .collect();
        let mut rates = vec!["pass_rate".to_string()];
        rates.extend(cmp.runs.iter().map(|r| cell(r.pass_rate)));
        rows.push(rates);
        csv_page(&header, rows)
    }

    pub(super) fn live_csv(&self) -> Result<Page, Miss> {
        let header = [
            "run_id",
            "started_at",
            "host",
            "step",
            "total_steps",
            "loss",
            "seconds_per_step",
            "eta_s",
        ];
        let opt = |v: Option<String>| v.unwrap_or_default();
        let rows = self
            .store
            .progress()
            .map_err(|e| Miss::Failed(e.to_string()))?
            .into_iter()
            .map(|p| {
                let eta = p.eta_s();
                vec![
                    p.run_id,
                    p.started_at,
                    p.host,
                    opt(p.step.map(|s| s.to_string())),
                    opt(p.total_steps.map(|s| s.to_string())),
                    opt(p.loss.map(|s| s.to_string())),
                    opt(p.step_time_s.map(|s| s.to_string())),
                    opt(eta.map(|s| format!("{s:.0}"))),
                ]
            });
        csv_page(&header, rows)
    }
}

/// Paired tests as CSV: each row's two leading cells (what was tested against what),
/// then the test's numbers.
fn paired_csv<'a>(
    lead: [&str; 2],
    rows: impl Iterator<Item = ([String; 2], &'a report::PairedTest)>,
) -> Result<Page, Miss> {
    let header: Vec<&str> = lead.into_iter().chain(PAIRED_HEADER).collect();
    let rows = rows.map(|(lead, t)| {
        let mut row = Vec::from(lead);
        row.extend(paired_cells(t));
        row
    });
    csv_page(&header, rows)
}

/// The columns of a paired test in CSV, as `paired_cells` writes them.
const PAIRED_HEADER: [&str; 12] = [
    "pairs",
    "reference_rate",
    "rate",
    "diff",
    "diff_low",
    "diff_high",
    "only_reference",
    "only_this",
    "p_value",
    "p_holm",
    "verdict",
    "mde",
];

fn paired_cells(t: &report::PairedTest) -> Vec<String> {
    vec![
        t.n.to_string(),
        t.reference_rate.to_string(),
        t.rate.to_string(),
        t.diff.to_string(),
        t.diff_low.to_string(),
        t.diff_high.to_string(),
        t.only_reference.to_string(),
        t.only_this.to_string(),
        t.p_value.to_string(),
        t.p_holm.to_string(),
        t.verdict.clone(),
        t.mde.map(|m| m.to_string()).unwrap_or_default(),
    ]
}

/// A table as CSV, its header first.
fn csv_page<H: AsRef<str>>(
    header: &[H],
    rows: impl IntoIterator<Item = Vec<String>>,
) -> Result<Page, Miss> {
    let fail = |e: csv::Error| Miss::Failed(e.to_string());
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header.iter().map(AsRef::as_ref))
        .map_err(fail)?;
    for row in rows {
        w.write_record(&row).map_err(fail)?;
    }
    let body = w.into_inner().map_err(|e| Miss::Failed(e.to_string()))?;
    Ok(Page {
        status: 200,
        content_type: "text/csv; charset=utf-8",
        body,
    })
}
