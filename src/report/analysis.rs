//! From stored runs to the numbers a report prints: one row per run, paired comparisons
//! against the baseline, spread over seeds, per-group pass rates and the hybrid what-if.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

use super::stats::{self, Discordant, Spread, Z95};
use super::{
    AgreementRow, Flip, JudgeRow, Plots, ReportData, ReportError, ReportOptions, RescoreRow,
    RunRow, RunSeries, SPIKE_FACTOR, SPIKE_WINDOW,
};
use crate::config::RunConfig;
use crate::store::{Store, VerdictRow};

mod hybrid;
use hybrid::hybrid;
pub use hybrid::HybridRow;

/// A paired test of one set of outcomes against a reference on the same examples.
#[derive(Debug, Clone, Serialize)]
pub struct PairedTest {
    /// Example pairs judged by both.
    pub n: usize,
    pub reference_rate: f64,
    pub rate: f64,
    /// rate − reference_rate, with its paired-bootstrap 95% interval.
    pub diff: f64,
    pub diff_low: f64,
    pub diff_high: f64,
    /// Passed by the reference only, and by this one only.
    pub only_reference: usize,
    pub only_this: usize,
    /// Exact McNemar p-value, and Holm-adjusted over the tests it is reported with.
    pub p_value: f64,
    pub p_holm: f64,
    /// `better`, `worse` or `within noise` (Holm-adjusted p ≥ 0.05).
    pub verdict: String,
    /// The smallest difference from the reference's rate that `n` examples detect (80%
    /// power, α 0.05; see [`stats::mde`]); None when none would.
    pub mde: Option<f64>,
}

impl PairedTest {
    /// Tests `b` against the reference `a` (same examples, same order); Holm's correction
    /// and the verdict come with [`adjust`].
    fn of(a: &[bool], b: &[bool], opts: &ReportOptions) -> PairedTest {
        let d = Discordant::of(a, b);
        let n = a.len();
        let rate = |v: &[bool]| v.iter().filter(|&&x| x).count() as f64 / n.max(1) as f64;
        let boot = stats::paired_bootstrap(a, b, opts.bootstrap_iters, opts.seed);
        PairedTest {
            n,
            reference_rate: rate(a),
            rate: rate(b),
            diff: boot.diff,
            diff_low: boot.low,
            diff_high: boot.high,
            only_reference: d.only_a,
            only_this: d.only_b,
            p_value: stats::mcnemar_exact(d.only_a, d.only_b),
            p_holm: 1.0,
            verdict: String::new(),
            mde: stats::mde(n, rate(a)),
        }
    }
}

/// Holm's correction over a family of tests, then each test's verdict.
fn adjust<'a>(tests: impl Iterator<Item = &'a mut PairedTest>) {
    let mut tests: Vec<&mut PairedTest> = tests.collect();
    let adjusted = stats::holm(&tests.iter().map(|t| t.p_value).collect::<Vec<_>>());
    for (t, p) in tests.iter_mut().zip(adjusted) {
        t.p_holm = p;
        t.verdict = if t.n == 0 {
            "no shared examples"
        } else if p >= stats::ALPHA || t.diff == 0.0 {
            "within noise"
        } else if t.diff > 0.0 {
            "better"
        } else {
            "worse"
        }
        .into();
    }
}

/// One config (its runs over seeds pooled) against the baseline config, on the same
/// examples: pairs are matched by seed, dataset and example id.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub group: String,
    pub run_ids: Vec<String>,
    #[serde(flatten)]
    pub test: PairedTest,
    /// What kinds of failure the configuration removed and added.
    pub error_types: Vec<ErrorTypeShift>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeedGroup {
    pub group: String,
    pub is_baseline: bool,
    pub seeds: usize,
    pub pass_rate: Option<Spread>,
    pub val_loss: Option<Spread>,
    pub diverged: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    pub run_id: String,
    pub group: String,
    pub evaluator: String,
    pub dataset: String,
    pub category: String,
    pub n: usize,
    pub passed: usize,
    pub rate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// What the rate measures (step accuracy, answer rate, ToolEval's pass rate, ...).
    pub measure: &'static str,
    /// Rate minus the reference's, in points: the same configuration's G1_instruction
    /// (the test group whose tools training has seen, in ToolBench's naming) when the
    /// sweep has it, else the run's first category in sorted order.
    pub gap: f64,
    /// The category the gap is to.
    pub reference: String,
}

/// Everything read for one run.
struct Loaded {
    row: RunRow,
    series: RunSeries,
    verdicts: Vec<VerdictRow>,
}

impl Loaded {
    /// The first evaluator's verdicts, keyed by (dataset, example id).
    fn primary(&self) -> BTreeMap<(&str, &str), bool> {
        self.primary_verdicts()
            .into_iter()
            .map(|(k, (passed, _))| (k, passed))
            .collect()
    }

    /// The first evaluator's verdicts with what failed, keyed by (dataset, example id).
    fn primary_verdicts(&self) -> BTreeMap<(&str, &str), Outcome<'_>> {
        self.verdicts
            .iter()
            .filter(|v| v.evaluator == self.row.evaluator)
            .map(|v| {
                let key = (v.dataset.as_str(), v.example_id.as_str());
                (key, (v.passed, v.verdict.as_str()))
            })
            .collect()
    }
}

/// Whether an example passed, and its verdict (`pass` or what failed).
type Outcome<'a> = (bool, &'a str);

const SEED_AXIS: &str = "train.seed";

fn load_run(
    store: &Store,
    run_id: &str,
    axes: &[String],
    axes_json: &str,
    is_baseline: bool,
) -> Result<Loaded, ReportError> {
    let info = store
        .run_info(run_id)?
        .ok_or_else(|| ReportError::UnknownRun(run_id.into()))?;
    let axes_map: BTreeMap<String, Value> = serde_json::from_str(axes_json).unwrap_or_default();
    let config = RunConfig::from_stored(&info.config_json).ok();
    let evaluator = config
        .as_ref()
        .and_then(|c| c.eval.evaluators.first())
        .map_or("rules", |e| e.name())
        .to_string();
    let seed = config.as_ref().map(|c| c.train.seed);
    let loss = store.series(run_id, "loss", "train")?;
    let val_loss = store.series(run_id, "loss", "val")?;
    let grad_norm = store.series(run_id, "grad_norm", "train")?;
    let tps = store.series(run_id, "tokens_per_s", "train")?;
    let params = store.summary_metric(run_id, "params", "model")?;
    let fit = |name: &str| store.summary_metric(run_id, name, "train");
    let data_fit = match fit("examples")? {
        Some(examples) => Some(super::DataFit {
            examples,
            left_out: fit("examples_left_out")?.unwrap_or(0.0),
            truncated: fit("examples_truncated")?.unwrap_or(0.0),
            dropped: fit("examples_dropped")?.unwrap_or(0.0),
            median_len: fit("seq_len_median")?.unwrap_or(0.0),
            p95_len: fit("seq_len_p95")?.unwrap_or(0.0),
            max_len: fit("seq_len_max")?.unwrap_or(0.0),
        }),
        None => None,
    };
    let verdicts = store.verdicts(run_id)?;

    let mut norms: Vec<f64> = grad_norm.iter().map(|&(_, v)| v).collect();
    norms.sort_by(f64::total_cmp);
    let spike_steps = spikes(&grad_norm);
    let min_val_loss = val_loss
        .iter()
        .map(|&(_, v)| v)
        .filter(|v| v.is_finite())
        .min_by(f64::total_cmp);
    let last_val = val_loss.last().map(|&(_, v)| v);
    let overfit = matches!((min_val_loss, last_val), (Some(m), Some(l)) if l > m * 1.01);

    let n = info.n_eval.unwrap_or(0).max(0);
    let passed = info.pass_rate.map_or(0, |p| (p * n as f64).round() as i64);
    let (ci_low, ci_high) = if n > 0 {
        let (l, h) = stats::wilson(passed as usize, n as usize, Z95);
        (Some(l), Some(h))
    } else {
        (None, None)
    };
    let group = axes
        .iter()
        .filter(|a| *a != SEED_AXIS)
        .map(|a| format!("{a}={}", crate::plan::display_value(axes_map.get(a))))
        .collect::<Vec<_>>()
        .join(", ");
    // A sweep over seeds alone: every run has the one configuration.
    let group = if group.is_empty() {
        "(one configuration)".to_string()
    } else {
        group
    };
    let row = RunRow {
        run_id: run_id.to_string(),
        status: info.status,
        error: info.error,
        is_baseline,
        axis_values: axes
            .iter()
            .map(|a| crate::plan::display_value(axes_map.get(a)))
            .collect(),
        axes: axes_map,
        group,
        seed,
        evaluator,
        final_train_loss: info.final_train_loss,
        final_val_loss: info.final_val_loss,
        min_val_loss,
        overfit,
        pass_rate: info.pass_rate,
        passed,
        n_eval: n,
        ci_low,
        ci_high,
        delta_pass_rate: None,
        steps: loss.len() as i64,
        duration_s: info.duration_s,
        params,
        tokens_per_s: (!tps.is_empty())
            .then(|| tps.iter().map(|&(_, v)| v).sum::<f64>() / tps.len() as f64),
        max_grad_norm: norms.last().copied(),
        grad_spikes: spike_steps.len(),
        data_fit,
    };
    Ok(Loaded {
        row,
        series: RunSeries {
            loss,
            val_loss,
            grad_norm,
            spike_steps,
        },
        verdicts,
    })
}

/// Steps whose gradient norm is not finite or exceeds `SPIKE_FACTOR` times the median of
/// the `SPIKE_WINDOW` steps before it. A local median, because norms fall steeply early in
/// training: against the run's overall median every early step would count.
pub fn spikes(grad_norm: &[(i64, f64)]) -> Vec<i64> {
    let mut window: Vec<f64> = Vec::with_capacity(SPIKE_WINDOW);
    let mut out = Vec::new();
    for (i, &(step, v)) in grad_norm.iter().enumerate() {
        if !v.is_finite() {
            out.push(step);
            continue;
        }
        if i >= SPIKE_WINDOW / 4 {
            window.clear();
            window.extend(
                grad_norm[i.saturating_sub(SPIKE_WINDOW)..i]
                    .iter()
                    .map(|&(_, v)| v)
                    .filter(|v| v.is_finite()),
            );
            window.sort_by(f64::total_cmp);
            if !window.is_empty() && v > SPIKE_FACTOR * stats::quantile_sorted(&window, 0.5) {
                out.push(step);
            }
        }
    }
    out
}

/// Collects a sweep's report data from the store.
pub fn collect(
    store: &Store,
    sweep: &str,
    opts: &ReportOptions,
) -> Result<ReportData, ReportError> {
    let (description, file, axes) = store
        .sweep_meta(sweep)?
        .ok_or_else(|| ReportError::UnknownSweep(sweep.into()))?;
    let mut runs = store
        .sweep_runs(sweep)?
        .iter()
        .map(|(id, axes_json, base)| load_run(store, id, &axes, axes_json, *base))
        .collect::<Result<Vec<_>, _>>()?;

    // Δ against the baseline run of the same seed, else the first baseline run.
    let baseline_rate = |seed: Option<u64>, runs: &[Loaded]| {
        let bases: Vec<&Loaded> = runs.iter().filter(|r| r.row.is_baseline).collect();
        bases
            .iter()
            .find(|b| b.row.seed == seed)
            .or(bases.first())
            .and_then(|b| b.row.pass_rate)
    };
    let deltas: Vec<Option<f64>> = runs
        .iter()
        .map(|r| Some(r.row.pass_rate? - baseline_rate(r.row.seed, &runs)?))
        .collect();
    for (r, d) in runs.iter_mut().zip(deltas) {
        r.row.delta_pass_rate = d;
    }

    let mut counts = BTreeMap::new();
    for r in &runs {
        *counts.entry(r.row.status.clone()).or_insert(0) += 1;
    }
    let best = runs
        .iter()
        .filter(|r| r.row.pass_rate.is_some())
        .max_by(|a, b| a.row.pass_rate.partial_cmp(&b.row.pass_rate).unwrap())
        .map(|r| r.row.run_id.clone());

    let comparisons = comparisons(&runs, opts);
    let seed_groups = if axes.iter().any(|a| a == SEED_AXIS) {
        seed_groups(&runs)
    } else {
        Vec::new()
    };
    let breakdown = breakdown(&runs);
    let spec = opts.hybrid.clone().unwrap_or_default();
    let hybrid = hybrid(store, &runs, &spec)?;
    let agreement = agreement(store, sweep)?;
    let judges = judges(store, sweep)?;
    let rescores = rescores(store, sweep)?;

    let (rows, series): (Vec<RunRow>, Vec<RunSeries>) =
        runs.into_iter().map(|r| (r.row, r.series)).unzip();
    Ok(ReportData {
        sweep: sweep.to_string(),
        description,
        file,
        baseline: rows
            .iter()
            .find(|r| r.is_baseline)
            .map(|r| r.run_id.clone()),
        axes,
        best,
        rows,
        counts,
        agreement,
        judges,
        rescores,
        comparisons,
        seed_groups,
        breakdown,
        hybrid,
        hybrid_costs: (spec.small_cost, spec.large_cost),
        plots: Plots::default(),
        spike_factor: SPIKE_FACTOR,
        spike_window: SPIKE_WINDOW,
        series,
    })
}

/// Runs in groups of equal non-seed axis values, in plan order.
fn groups(runs: &[Loaded]) -> Vec<(String, Vec<&Loaded>)> {
    let mut out: Vec<(String, Vec<&Loaded>)> = Vec::new();
    for r in runs {
        match out.iter_mut().find(|(g, _)| *g == r.row.group) {
            Some((_, v)) => v.push(r),
            None => out.push((r.row.group.clone(), vec![r])),
        }
    }
    out
}

/// Paired outcomes (baseline, this) over the examples both judged, matched by seed.
/// The baseline's and this configuration's outcomes on the same examples, runs matched by
/// seed (else the baseline's first run).
fn paired<'a>(base: &[&'a Loaded], this: &[&'a Loaded]) -> Vec<(Outcome<'a>, Outcome<'a>)> {
    let mut out = Vec::new();
    for t in this {
        let Some(bl) = base
            .iter()
            .find(|x| x.row.seed == t.row.seed)
            .or(base.first())
        else {
            continue;
        };
        let bv = bl.primary_verdicts();
        for (k, this) in t.primary_verdicts() {
            if let Some(&b) = bv.get(&k) {
                out.push((b, this));
            }
        }
    }
    out
}

/// How often each kind of failure occurs under the baseline and under this configuration,
/// on the same examples: the examples that lost it (failed so under ★, not here) and
/// gained it, with the exact McNemar test on those two counts.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorTypeShift {
    pub error_type: String,
    pub reference: usize,
    pub this: usize,
    pub removed: usize,
    pub added: usize,
    pub p_value: f64,
}

fn error_type_shifts(pairs: &[(Outcome, Outcome)]) -> Vec<ErrorTypeShift> {
    let mut by: BTreeMap<&str, (usize, usize, usize, usize)> = BTreeMap::new();
    for &((bp, bv), (tp, tv)) in pairs {
        let (b_fail, t_fail) = ((!bp).then_some(bv), (!tp).then_some(tv));
        if let Some(b) = b_fail {
            let e = by.entry(b).or_default();
            e.0 += 1;
            e.2 += (t_fail != Some(b)) as usize;
        }
        if let Some(t) = t_fail {
            let e = by.entry(t).or_default();
            e.1 += 1;
            e.3 += (b_fail != Some(t)) as usize;
        }
    }
    let mut out: Vec<ErrorTypeShift> = by
        .into_iter()
        .filter(|(_, (_, _, removed, added))| removed + added > 0)
        .map(|(t, (reference, this, removed, added))| ErrorTypeShift {
            error_type: t.to_string(),
            reference,
            this,
            removed,
            added,
            p_value: stats::mcnemar_exact(removed, added),
        })
        .collect();
    // The largest net changes first.
    out.sort_by_key(|s| std::cmp::Reverse(s.removed.abs_diff(s.added)));
    out
}

fn comparisons(runs: &[Loaded], opts: &ReportOptions) -> Vec<Comparison> {
    let groups = groups(runs);
    let Some((_, base)) = groups
        .iter()
        .find(|(_, rs)| rs.iter().any(|r| r.row.is_baseline))
    else {
        return Vec::new();
    };
    let mut out: Vec<Comparison> = groups
        .iter()
        .filter(|(_, rs)| !rs.iter().any(|r| r.row.is_baseline))
        .filter_map(|(g, rs)| {
            let pairs = paired(base, rs);
            let (a, b): (Vec<bool>, Vec<bool>) = pairs.iter().map(|(a, b)| (a.0, b.0)).unzip();
            (!a.is_empty()).then(|| Comparison {
                group: g.clone(),
                run_ids: rs.iter().map(|r| r.row.run_id.clone()).collect(),
                test: PairedTest::of(&a, &b, opts),
                error_types: error_type_shifts(&pairs),
            })
        })
        .collect();
    adjust(out.iter_mut().map(|c| &mut c.test));
    out
}

fn seed_groups(runs: &[Loaded]) -> Vec<SeedGroup> {
    groups(runs)
        .into_iter()
        .map(|(g, rs)| {
            let rates: Vec<f64> = rs.iter().filter_map(|r| r.row.pass_rate).collect();
            let vals: Vec<f64> = rs.iter().filter_map(|r| r.row.final_val_loss).collect();
            SeedGroup {
                group: g,
                is_baseline: rs.iter().any(|r| r.row.is_baseline),
                seeds: rs.len(),
                pass_rate: stats::spread(&rates),
                val_loss: stats::spread(&vals),
                diverged: rs.iter().filter(|r| r.row.status == "diverged").count(),
            }
        })
        .collect()
}

/// ToolBench's test group whose tools the training data has seen: the reference of the
/// generalization question.
const SEEN_TOOLS_GROUP: &str = "G1_instruction";

/// A run's configuration less what only picks the evaluation set: runs that share it
/// evaluated the same trained model.
fn model_key(r: &RunRow) -> String {
    let mut axes = r.axes.clone();
    axes.remove("data.eval");
    axes.remove("eval.evaluators");
    serde_json::to_string(&axes).unwrap_or_default()
}

fn breakdown(runs: &[Loaded]) -> Vec<Breakdown> {
    // The seen-tools group's rate of each configuration, evaluator and dataset.
    let mut seen_tools: HashMap<(String, &str, &str), f64> = HashMap::new();
    for r in runs {
        let (mut n, mut passed) = (HashMap::new(), HashMap::new());
        for v in r.verdicts.iter().filter(|v| v.category == SEEN_TOOLS_GROUP) {
            *n.entry((v.evaluator.as_str(), v.dataset.as_str()))
                .or_insert(0usize) += 1;
            *passed
                .entry((v.evaluator.as_str(), v.dataset.as_str()))
                .or_insert(0usize) += v.passed as usize;
        }
        for (k, n) in n {
            seen_tools.insert((model_key(&r.row), k.0, k.1), passed[&k] as f64 / n as f64);
        }
    }
    let mut out = Vec::new();
    for r in runs {
        // (evaluator, dataset, category) -> (n, passed)
        let mut cells: BTreeMap<(&str, &str, &str), (usize, usize)> = BTreeMap::new();
        for v in &r.verdicts {
            let c = cells
                .entry((&v.evaluator, &v.dataset, &v.category))
                .or_default();
            c.0 += 1;
            c.1 += v.passed as usize;
        }
        let mut first: HashMap<(&str, &str), (&str, f64)> = HashMap::new();
        for ((ev, ds, cat), (n, passed)) in cells {
            let rate = passed as f64 / n as f64;
            let first_category = *first.entry((ev, ds)).or_insert((cat, rate));
            let (reference, reference_rate) = match seen_tools.get(&(model_key(&r.row), ev, ds)) {
                Some(&seen) => (SEEN_TOOLS_GROUP, seen),
                None => first_category,
            };
            let (lo, hi) = stats::wilson(passed, n, Z95);
            out.push(Breakdown {
                run_id: r.row.run_id.clone(),
                group: r.row.group.clone(),
                evaluator: ev.into(),
                dataset: ds.into(),
                category: cat.into(),
                n,
                passed,
                rate,
                ci_low: lo,
                ci_high: hi,
                measure: crate::config::Evaluator::parse(ev)
                    .map_or("pass rate", |e| crate::eval::measure(e, ds)),
                gap: rate - reference_rate,
                reference: reference.to_string(),
            });
        }
    }
    out
}

fn agreement(store: &Store, sweep: &str) -> Result<Vec<AgreementRow>, ReportError> {
    let (_, pairs) = store.query(&format!(
        "SELECT a.run_id, a.dataset, a.evaluator_a, a.evaluator_b, a.n, a.agreement,
                a.both_pass, a.only_a, a.only_b, a.both_fail
         FROM evaluator_agreement a JOIN sweep_runs s ON s.run_id = a.run_id
         WHERE s.sweep = '{}' ORDER BY s.position, a.dataset, a.evaluator_a, a.evaluator_b",
        sweep.replace('\'', "''")
    ))?;
    Ok(pairs
        .iter()
        .map(|r| {
            let count = |i: usize| r[i].as_i64().unwrap_or(0);
            let (evaluator_a, evaluator_b) = (
                r[2].as_str().unwrap_or_default().to_string(),
                r[3].as_str().unwrap_or_default().to_string(),
            );
            let kappa = stats::cohens_kappa(
                count(6) as usize,
                count(7) as usize,
                count(8) as usize,
                count(9) as usize,
            );
            let label_set = |e: &str| e.split_once('/').map(|(n, _)| n.to_string());
            AgreementRow {
                run_id: r[0].as_str().unwrap_or_default().to_string(),
                dataset: r[1].as_str().unwrap_or_default().to_string(),
                annotators: label_set(&evaluator_a).is_some()
                    && label_set(&evaluator_a) == label_set(&evaluator_b),
                evaluator_a,
                evaluator_b,
                n: count(4),
                agreement: r[5].as_f64(),
                kappa: kappa.map(|k| k.0),
                kappa_low: kappa.map(|k| k.1),
                kappa_high: kappa.map(|k| k.2),
                both_pass: count(6),
                only_a: count(7),
                only_b: count(8),
                both_fail: count(9),
            }
        })
        .collect())
}

/// Each run's LLM judge verdict set: what prompted it, and how its k judgments spread.
fn judges(store: &Store, sweep: &str) -> Result<Vec<JudgeRow>, ReportError> {
    let (_, rows) = store.query(&format!(
        "SELECT s.run_id, vs.key_json, r.config_json, v.judgments_json
         FROM sweep_runs s
         JOIN runs r ON r.id = s.run_id AND r.status = 'done'
         JOIN run_verdict_sets rv ON rv.run_id = s.run_id AND rv.evaluator = 'llm_judge'
         JOIN verdict_sets vs ON vs.id = rv.verdict_set_id
         JOIN verdicts v ON v.verdict_set_id = vs.id
         WHERE s.sweep = '{}' AND v.judgments_json IS NOT NULL
         ORDER BY s.position, v.kind, v.example_id",
        sweep.replace('\'', "''")
    ))?;
    let mut out: Vec<JudgeRow> = Vec::new();
    let mut per_run: Vec<Vec<Vec<crate::eval::llm_judge::Judgment>>> = Vec::new();
    for r in &rows {
        let run_id = r[0].as_str().unwrap_or_default();
        if out.last().map(|j| j.run_id.as_str()) != Some(run_id) {
            let key: Value =
                serde_json::from_str(r[1].as_str().unwrap_or("{}")).unwrap_or_default();
            let cfg: Value =
                serde_json::from_str(r[2].as_str().unwrap_or("{}")).unwrap_or_default();
            let folder = cfg["eval"]["judge"]["evaluator"]
                .as_str()
                .unwrap_or_default();
            let digest = key["settings"]["evaluator"].as_str().unwrap_or_default();
            let prompts = if folder.is_empty() {
                "ablate's own prompts (no ToolEval evaluator folder given)".to_string()
            } else {
                let name = std::path::Path::new(folder)
                    .file_name()
                    .map_or(folder.into(), |n| n.to_string_lossy());
                format!(
                    "ToolEval evaluator {name} (sha256 {})",
                    &digest[..digest.len().min(12)]
                )
            };
            out.push(JudgeRow {
                run_id: run_id.to_string(),
                prompts,
                procedure: key["settings"]["procedure"]
                    .as_str()
                    .unwrap_or("pass_rate")
                    .to_string(),
                model: key["settings"]["model"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                k: 0,
                n: 0,
                unstable: 0,
                coins: 0,
                rates: vec![],
                mean: 0.0,
                sd: 0.0,
            });
            per_run.push(Vec::new());
        }
        let js: Vec<crate::eval::llm_judge::Judgment> =
            serde_json::from_str(r[3].as_str().unwrap_or("[]")).unwrap_or_default();
        per_run.last_mut().expect("a run row").push(js);
    }
    for (row, examples) in out.iter_mut().zip(per_run) {
        let k = examples.iter().map(Vec::len).max().unwrap_or(0);
        let sopr = row.procedure == "sopr";
        let score = |j: &crate::eval::llm_judge::Judgment| -> f64 {
            if sopr {
                j.answer.score()
            } else if j.passed == Some(true) {
                1.0
            } else {
                0.0
            }
        };
        row.k = k;
        row.n = examples.len();
        row.unstable = examples
            .iter()
            .filter(|js| {
                js.windows(2)
                    .any(|w| score(&w[0]) != score(&w[1]) || w[0].answer != w[1].answer)
            })
            .count();
        row.coins = examples.iter().flatten().filter(|j| j.coin).count();
        row.rates = (0..k)
            .map(|i| {
                examples
                    .iter()
                    .map(|js| js.get(i).map_or(0.0, score))
                    .sum::<f64>()
                    / examples.len().max(1) as f64
            })
            .collect();
        row.mean = row.rates.iter().sum::<f64>() / k.max(1) as f64;
        row.sd = (row
            .rates
            .iter()
            .map(|r| (r - row.mean).powi(2))
            .sum::<f64>()
            / k.max(1) as f64)
            .sqrt();
    }
    Ok(out)
}

/// Every pair of consecutive verdict sets (by finishing time) of one evaluator on one
/// generation of the sweep.
fn rescores(store: &Store, sweep: &str) -> Result<Vec<RescoreRow>, ReportError> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let (_, sets) = store.query(&format!(
        "SELECT MIN(s.position), MIN(s.run_id), v.generation_id, v.evaluator, v.id, v.version,
                json_extract(v.key_json, '$.settings'), v.finished_at
         FROM sweep_runs s
         JOIN run_stages r ON r.run_id = s.run_id
         JOIN verdict_sets v ON v.generation_id = r.generation_id AND v.status = 'done'
         WHERE s.sweep = '{}'
         GROUP BY v.id
         ORDER BY 1, v.evaluator, v.finished_at, v.id",
        sweep.replace('\'', "''")
    ))?;
    let label = |r: &[serde_json::Value]| {
        let settings = text(&r[6]);
        match settings.as_str() {
            "" | "{}" => text(&r[5]),
            s => format!("{} {s}", text(&r[5])),
        }
    };
    let mut out = Vec::new();
    for pair in sets.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a[2] != b[2] || a[3] != b[3] {
            continue;
        }
        let quoted = |v: &serde_json::Value| text(v).replace('\'', "''");
        let (set_a, set_b) = (quoted(&a[4]), quoted(&b[4]));
        let (_, stats) = store.query(&format!(
            "SELECT COUNT(*), AVG(x.passed = y.passed), AVG(x.passed), AVG(y.passed)
             FROM verdicts x JOIN verdicts y ON y.verdict_set_id = '{set_b}'
              AND y.kind = x.kind AND y.example_id = x.example_id
             WHERE x.verdict_set_id = '{set_a}'"
        ))?;
        let (_, flips) = store.query(&format!(
            "SELECT x.verdict, y.verdict, COUNT(*)
             FROM verdicts x JOIN verdicts y ON y.verdict_set_id = '{set_b}'
              AND y.kind = x.kind AND y.example_id = x.example_id
             WHERE x.verdict_set_id = '{set_a}' AND x.verdict <> y.verdict
             GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
        ))?;
        let st = &stats[0];
        out.push(RescoreRow {
            run_id: text(&a[1]),
            evaluator: text(&a[3]),
            from: label(a),
            to: label(b),
            n: st[0].as_i64().unwrap_or(0),
            agreement: st[1].as_f64(),
            pass_from: st[2].as_f64(),
            pass_to: st[3].as_f64(),
            flips: flips
                .iter()
                .map(|f| Flip {
                    from: text(&f[0]),
                    to: text(&f[1]),
                    count: f[2].as_i64().unwrap_or(0),
                })
                .collect(),
        });
    }
    Ok(out)
}

/// A full run id from an id or a unique prefix of one.
pub fn resolve_run(store: &Store, prefix: &str) -> Result<String, ReportError> {
    let ids = store.run_ids_with_prefix(prefix)?;
    match ids.as_slice() {
        [] => Err(ReportError::UnknownRun(prefix.into())),
        [one] => Ok(one.clone()),
        many => Err(ReportError::AmbiguousRun(prefix.into(), many.join(", "))),
    }
}

/// `ablate compare`: runs side by side, each against the first on shared examples.
#[derive(Debug, Clone, Serialize)]
pub struct RunComparison {
    pub runs: Vec<RunRow>,
    /// Config keys whose values differ between the runs: key -> value per run.
    pub differing: BTreeMap<String, Vec<Value>>,
    pub pairs: Vec<PairwiseComparison>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairwiseComparison {
    pub reference: String,
    pub run_id: String,
    #[serde(flatten)]
    pub test: PairedTest,
}

pub fn compare_runs(
    store: &Store,
    ids: &[String],
    opts: &ReportOptions,
) -> Result<RunComparison, ReportError> {
    let mut loaded = Vec::new();
    let mut configs = Vec::new();
    for prefix in ids {
        let id = resolve_run(store, prefix)?;
        let info = store
            .run_info(&id)?
            .ok_or_else(|| ReportError::UnknownRun(id.clone()))?;
        configs.push(crate::config::leaf_keys(
            &serde_json::from_str(&info.config_json).unwrap_or(Value::Null),
        ));
        loaded.push(load_run(store, &id, &[], "{}", false)?);
    }
    let mut differing = BTreeMap::new();
    let keys: std::collections::BTreeSet<&String> = configs.iter().flat_map(|c| c.keys()).collect();
    for k in keys {
        let vals: Vec<Value> = configs
            .iter()
            .map(|c| c.get(k).cloned().unwrap_or(Value::Null))
            .collect();
        if vals.iter().any(|v| *v != vals[0]) {
            differing.insert(k.clone(), vals);
        }
    }
    let mut pairs = Vec::new();
    if let Some((first, rest)) = loaded.split_first() {
        let fv = first.primary();
        for r in rest {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for (k, p) in r.primary() {
                if let Some(&q) = fv.get(&k) {
                    a.push(q);
                    b.push(p);
                }
            }
            pairs.push(PairwiseComparison {
                reference: first.row.run_id.clone(),
                run_id: r.row.run_id.clone(),
                test: PairedTest::of(&a, &b, opts),
            });
        }
    }
    adjust(pairs.iter_mut().map(|c| &mut c.test));
    Ok(RunComparison {
        runs: loaded.into_iter().map(|l| l.row).collect(),
        differing,
        pairs,
    })
}

#[cfg(test)]
pub(crate) fn empty_for_tests() -> ReportData {
    ReportData {
        sweep: "test".into(),
        description: String::new(),
        file: String::new(),
        axes: vec![],
        rows: vec![],
        baseline: None,
        best: None,
        counts: BTreeMap::new(),
        agreement: vec![],
        judges: vec![],
        rescores: vec![],
        comparisons: vec![],
        seed_groups: vec![],
        breakdown: vec![],
        hybrid: vec![],
        hybrid_costs: {
            let d = crate::config::HybridSpec::default();
            (d.small_cost, d.large_cost)
        },
        plots: Plots::default(),
        spike_factor: SPIKE_FACTOR,
        spike_window: SPIKE_WINDOW,
        series: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_count_what_a_configuration_removed_and_added() {
        let (pass, te, wf) = ((true, "pass"), (false, "type_error"), (false, "wrong_func"));
        let mut pairs = vec![(te, pass); 3];
        pairs.extend([(pass, wf); 2]);
        pairs.push((te, te));
        pairs.push((te, wf));
        pairs.push((pass, pass));
        let s = error_type_shifts(&pairs);
        let got: Vec<_> = s
            .iter()
            .map(|x| {
                (
                    x.error_type.as_str(),
                    x.reference,
                    x.this,
                    x.removed,
                    x.added,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("type_error", 5, 1, 4, 0), ("wrong_func", 0, 3, 0, 3)]
        );
        assert!((s[0].p_value - 0.125).abs() < 1e-12);
        assert!((s[1].p_value - 0.25).abs() < 1e-12);
        // A type that moved nowhere is left out.
        assert!(error_type_shifts(&[(te, te)]).is_empty());
    }

    #[test]
    fn the_report_says_which_failures_a_configuration_removed_and_added() {
        let (pass, te, wf) = ((true, "pass"), (false, "type_error"), (false, "wrong_func"));
        let mut pairs = vec![(te, pass); 6];
        pairs.extend([(pass, wf); 2]);
        pairs.extend([(te, te); 4]);
        let (a, b): (Vec<bool>, Vec<bool>) = pairs.iter().map(|(a, b)| (a.0, b.0)).unzip();
        let mut data = empty_for_tests();
        data.comparisons = vec![Comparison {
            group: "train.clip_norm=0.3".into(),
            run_ids: vec!["r1".into()],
            test: PairedTest::of(&a, &b, &ReportOptions::default()),
            error_types: error_type_shifts(&pairs),
        }];
        adjust(data.comparisons.iter_mut().map(|c| &mut c.test));
        let text = super::super::templates::render(
            &data,
            &super::super::templates::TemplateSource::Builtin("sweep".into()),
        )
        .unwrap();
        // The comparison (with its minimum detectable effect) and the failure kinds.
        let from = text.find("| configuration | pairs |").unwrap();
        let section: String = text[from..]
            .lines()
            .take_while(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(section);
    }

    #[test]
    fn spikes_are_local_jumps_not_the_early_descent() {
        // Norms falling from 50 to 1, then flat at 1 with one jump to 8 and one NaN.
        let mut g: Vec<(i64, f64)> = (1..=40).map(|s| (s, 50.0 / s as f64)).collect();
        g.extend((41..=80).map(|s| (s, 1.0)));
        g[59].1 = 8.0; // step 60
        g[69].1 = f64::NAN; // step 70
        assert_eq!(spikes(&g), vec![60, 70]);
    }
}
