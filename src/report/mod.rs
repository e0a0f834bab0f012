//! Reports: read a sweep from the store, compute what the study's questions need (intervals,
//! paired tests against the baseline, spread over seeds, per-group pass rates, the hybrid
//! what-if), draw SVG plots beside the markdown, and render a minijinja template (strict:
//! an undefined variable is an error).

mod analysis;
pub mod export;
pub mod format;
pub mod plots;
pub mod stats;
mod templates;
pub mod tooleval;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

pub use analysis::{
    compare_runs, resolve_run, spikes, Breakdown, Comparison, HybridRow, PairedTest,
    PairwiseComparison, RunComparison, SeedGroup,
};
pub use templates::{
    builtin_template, register_filters, render, TemplateSource, BUILTIN_TEMPLATES, DEFAULT_TEMPLATE,
};

use crate::config::HybridSpec;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sweep \"{0}\" is not in the database (run `ablate run` on it first)")]
    UnknownSweep(String),
    #[error("run \"{0}\" is not in the database")]
    UnknownRun(String),
    #[error("run id prefix \"{0}\" is ambiguous: {1}")]
    AmbiguousRun(String, String),
    #[error("template {path}: {message}")]
    Template { path: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("plot {path}: {message}")]
    Plot { path: String, message: String },
}

/// What a report computes beyond the stored numbers.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The experiment's `[experiment.hybrid]`, if any.
    pub hybrid: Option<HybridSpec>,
    /// Resamples of the paired bootstrap (0 skips it).
    pub bootstrap_iters: usize,
    /// Seed of the bootstrap, so that a report renders the same twice.
    pub seed: u64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            hybrid: None,
            bootstrap_iters: 2000,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub run_id: String,
    pub status: String,
    pub error: Option<String>,
    pub is_baseline: bool,
    /// Axis values in the order of `ReportData::axes`, formatted for display.
    pub axis_values: Vec<String>,
    pub axes: BTreeMap<String, Value>,
    /// The axis values other than the seed, joined: runs that differ only by seed share it.
    pub group: String,
    pub seed: Option<u64>,
    /// The evaluator behind `pass_rate` (the run's first).
    pub evaluator: String,
    pub final_train_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    /// Lowest validation loss, and whether the final one rose 1% or more above it (the
    /// overfitting signal of the epochs question).
    pub min_val_loss: Option<f64>,
    pub overfit: bool,
    pub pass_rate: Option<f64>,
    pub passed: i64,
    pub n_eval: i64,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// Pass rate minus the baseline's (same seed where the baseline has it), in points.
    pub delta_pass_rate: Option<f64>,
    pub steps: i64,
    pub duration_s: Option<f64>,
    pub params: Option<f64>,
    /// Mean training throughput.
    pub tokens_per_s: Option<f64>,
    pub max_grad_norm: Option<f64>,
    /// Steps whose pre-clip gradient norm exceeds `SPIKE_FACTOR` times the median of the
    /// `SPIKE_WINDOW` steps before it (or is not finite).
    pub grad_spikes: usize,
    /// How the training split fitted `data.max_seq_len` (runs from before it was recorded
    /// have none).
    pub data_fit: Option<DataFit>,
}

/// Training examples against the length limit: how many were cut or left out, and their
/// token lengths before any cut.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataFit {
    pub examples: f64,
    /// Left out before fitting: their query is in the evaluation set.
    pub left_out: f64,
    pub truncated: f64,
    pub dropped: f64,
    pub median_len: f64,
    pub p95_len: f64,
    pub max_len: f64,
}

/// Per-step series of one run, for the plots; not given to templates.
#[derive(Debug, Clone, Default)]
pub struct RunSeries {
    pub loss: Vec<(i64, f64)>,
    pub val_loss: Vec<(i64, f64)>,
    pub grad_norm: Vec<(i64, f64)>,
    pub spike_steps: Vec<i64>,
}

/// Paths of the SVG plots, relative to the markdown file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plots {
    pub loss: Option<String>,
    /// One plot of pass rate per axis: (axis, path).
    pub by_axis: Vec<AxisPlot>,
    pub heatmap: Option<String>,
    pub size: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AxisPlot {
    pub axis: String,
    pub path: String,
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
    /// Each run's LLM judge: its prompts and settings, and its judgments' spread.
    pub judges: Vec<JudgeRow>,
    /// The same predictions judged twice by one evaluator (a newer version, other judge
    /// settings): agreement, and what flipped.
    pub rescores: Vec<RescoreRow>,
    /// Each config (runs differing only by seed pooled) against the baseline's, paired.
    pub comparisons: Vec<Comparison>,
    /// Mean ± sd and t-interval over seeds, when the sweep has a seed axis.
    pub seed_groups: Vec<SeedGroup>,
    /// Pass rate per run, evaluator, dataset and category (ToolBench group, BFCL category).
    pub breakdown: Vec<Breakdown>,
    pub hybrid: Vec<HybridRow>,
    /// Cost per query of the small and the large model (`[experiment.hybrid]`).
    pub hybrid_costs: (f64, f64),
    pub plots: Plots,
    pub spike_factor: f64,
    pub spike_window: usize,
    #[serde(skip)]
    pub series: Vec<RunSeries>,
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
    /// Cohen's kappa's 95% interval.
    pub kappa_low: Option<f64>,
    pub kappa_high: Option<f64>,
    /// The confusion table: both pass, only a passes, only b passes, both fail.
    pub both_pass: i64,
    pub only_a: i64,
    pub only_b: i64,
    pub both_fail: i64,
    /// Two annotators of one label set (`NAME/x` and `NAME/y`).
    pub annotators: bool,
}

/// What the LLM judge of a run was and how steady its k judgments were.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeRow {
    pub run_id: String,
    /// "ToolEval evaluator <name> (sha256 <first 12>)", or ablate's own prompts.
    pub prompts: String,
    pub procedure: String,
    pub model: String,
    pub k: usize,
    pub n: usize,
    /// Queries whose k judgments did not all agree.
    pub unstable: usize,
    /// Judgments an Unsure outcome left to a coin (ToolBench's procedure).
    pub coins: usize,
    /// The rate of each judgment (SoPR: Solved 1, Unsure 0.5; pass_rate: passed), its
    /// mean and (population) sd, as StableToolBench's script prints them.
    pub rates: Vec<f64>,
    pub mean: f64,
    pub sd: f64,
}

/// Two verdict sets of one evaluator on one generation, older first.
#[derive(Debug, Clone, Serialize)]
pub struct RescoreRow {
    /// The first run of the sweep with this generation.
    pub run_id: String,
    pub evaluator: String,
    /// Version and settings of each set, e.g. `rules-1` or `llm_judge-1 {"model":"m"}`.
    pub from: String,
    pub to: String,
    pub n: i64,
    pub agreement: Option<f64>,
    pub pass_from: Option<f64>,
    pub pass_to: Option<f64>,
    /// Examples whose verdict changed, by (old verdict, new verdict), most first.
    pub flips: Vec<Flip>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Flip {
    pub from: String,
    pub to: String,
    pub count: i64,
}

/// A gradient-norm spike: this many times the median pre-clip norm of the steps before it.
pub const SPIKE_FACTOR: f64 = 5.0;
/// How many preceding steps that median is taken over.
pub const SPIKE_WINDOW: usize = 20;

pub use analysis::collect;

/// Renders a sweep's report into `<out_dir>/<sweep>.md`, with its plots in
/// `<out_dir>/<sweep>/`, and returns the markdown's path.
pub fn write_report(
    store: &Store,
    sweep: &str,
    template: &TemplateSource,
    out_dir: &Path,
    opts: &ReportOptions,
) -> Result<PathBuf, ReportError> {
    let mut data = collect(store, sweep, opts)?;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| ReportError::Io {
            path,
            message: e.to_string(),
        }
    };
    let plot_dir = out_dir.join(sweep);
    std::fs::create_dir_all(&plot_dir).map_err(io(&plot_dir))?;
    data.plots = plots::write_all(&data, &plot_dir, sweep)?;
    let text = render(&data, template)?;
    let path = out_dir.join(format!("{sweep}.md"));
    // Write then rename: a reader never sees half a report.
    let tmp = out_dir.join(format!(".{sweep}.md.tmp"));
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
}
