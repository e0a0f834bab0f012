//! Grid expansion and run identity. A run's id is a hash of its canonical resolved
//! configuration, so the same run in two sweeps is the same row and is trained once.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, ConfigProblem, Experiment, ModelInit, RunConfig};
use crate::data::Template;
use crate::model::ModelSource;

mod expand;
pub mod stages;

pub use expand::Expansion;

/// Bumped when a code change makes old results incomparable (it is hashed into every id).
/// v2: training data is fitted, split and guarded (examples whose target was cut away are
/// dropped, no training query is an evaluation query, validation never reads the
/// evaluation set), so a v1 run of the same config trained on other examples.
pub const RUN_ID_VERSION: &str = "ablate-run-v2";

#[derive(Debug, Clone, Serialize)]
pub struct PlannedRun {
    pub id: String,
    /// Values of the varying axes, by dotted key.
    pub axes: BTreeMap<String, Value>,
    pub is_baseline: bool,
    /// Devices the run takes from `ablate run --devices` (`[[resources]]`; default 1).
    pub devices: usize,
    #[serde(skip)]
    pub config: RunConfig,
    /// Its training, generation and verdict sets.
    #[serde(skip)]
    pub stages: stages::StageIds,
    /// Why it does not take its model from a longer run of the same keys, when a sweep has
    /// one that a constant schedule would let it share (shown by `plan`).
    #[serde(skip)]
    pub sharing: Sharing,
}

/// Epoch-prefix sharing, as the plan decided it for a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Sharing {
    /// No longer run of the same keys in the plan.
    #[default]
    Alone,
    /// Its model is the checkpoint after its epochs of the training of this many epochs.
    PrefixOf(usize),
    /// A longer run of the same keys exists, but the schedule makes them differ.
    Refused(String),
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub experiment: Experiment,
    pub runs: Vec<PlannedRun>,
}

impl Plan {
    /// The axes that vary in this plan, in display order.
    pub fn axis_names(&self) -> Vec<String> {
        axis_names(&self.experiment)
    }
}

/// The axes that vary in an experiment's grid, in display order.
pub fn axis_names(exp: &Experiment) -> Vec<String> {
    let g = &exp.grid;
    g.axes
        .keys()
        .chain(g.zips.iter().flat_map(|z| z.keys()))
        .cloned()
        .collect()
}

/// The canonical form hashed into a run id: keys sorted, numbers in their shortest
/// round-trip spelling (so `5e-5` and `0.00005` are the same run).
pub fn canonical_json(cfg: &RunConfig) -> String {
    // serde_json's Map is a BTreeMap (no preserve_order feature): keys come out sorted.
    serde_json::to_value(cfg)
        .expect("config serializes")
        .to_string()
}

/// Keys added to the config after run ids were first issued, with their defaults. A key
/// at its default is left out of the hashed JSON, so adding an option never changes the
/// id (and so never reruns) of the runs that do not use it. Append only.
const ADDED_KEYS: &[(&str, &str, &str)] = &[
    ("eval", "temperature", "0.0"),
    ("eval", "top_k", "0"),
    ("eval", "top_p", "1.0"),
    ("eval", "stop", "[]"),
    ("eval", "max_turns", "8"),
    (
        "eval",
        "judge",
        r#"{"api_key_env":"OPENAI_API_KEY","k":3,"model":"","temperature":0.0,"timeout_s":60,"url":""}"#,
    ),
    (
        "eval",
        "judge",
        r#"{"api_key_env":"OPENAI_API_KEY","evaluator":"","k":null,"model":"","procedure":"pass_rate","temperature":null,"timeout_s":60,"url":""}"#,
    ),
    (
        "eval",
        "tools",
        r#"{"backends":["recorded"],"cache":"","key_env":"TOOLBENCH_KEY","simulator":{"api_key_env":"OPENAI_API_KEY","model":"","prompt":"","temperature":0.0,"timeout_s":60,"url":""},"timeout_s":60,"url":""}"#,
    ),
    (
        "model",
        "endpoint",
        r#"{"api_key_env":"OPENAI_API_KEY","timeout_s":120,"url":""}"#,
    ),
    ("data", "template", r#""compact""#),
    ("data", "truncation", r#""keep_start""#),
    ("data", "val", r#""""#),
    ("data", "val_fraction", "0.0"),
    // The plan resolves "checkpoint" to the model's rate: runs of presets (no dropout)
    // keep their ids, runs of checkpoints with dropout get new ones. (Only a config whose
    // model cannot be read keeps "checkpoint", and its plan fails.)
    ("train", "dropout", r#""checkpoint""#),
    ("train", "dropout", "0.0"),
];

/// The JSON that the run id hashes: the canonical config less [`ADDED_KEYS`] at their
/// defaults.
fn hashed_json(cfg: &RunConfig) -> String {
    let mut v = serde_json::to_value(cfg).expect("config serializes");
    for (section, key, default) in ADDED_KEYS {
        let default: Value = serde_json::from_str(default).expect("default is JSON");
        if let Some(Value::Object(sec)) = v.get_mut(*section) {
            if sec.get(*key) == Some(&default) {
                sec.remove(*key);
            }
        }
    }
    v.to_string()
}

pub fn run_id(cfg: &RunConfig) -> String {
    let mut h = Sha256::new();
    h.update(RUN_ID_VERSION.as_bytes());
    h.update(b"\n");
    h.update(hashed_json(cfg).as_bytes());
    let digest = h.finalize();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// An axis value for display: strings without their JSON quotes, `-` when absent.
pub fn display_value(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "-".into(),
    }
}

/// Whether `model.name` can be loaded as `init` asks, checked at plan time so that a
/// sweep does not fail run after run on a missing checkpoint.
fn model_problem(name: &str, init: ModelInit) -> Option<(String, String)> {
    let problem = |m: String| Some(("model.name".to_string(), m));
    if name.starts_with(crate::config::ENDPOINT_PREFIX) {
        return None; // no weights: its endpoint is asked at run time
    }
    match ModelSource::resolve(name) {
        // The key is already in front of the message.
        Err(crate::model::ModelError::NotFound { name, message }) => {
            problem(format!("\"{name}\": {message}"))
        }
        Err(e) => problem(e.to_string()),
        Ok(ModelSource::Preset(p)) if init == ModelInit::Pretrained => problem(format!(
            "\"{p}\" is a preset: it has no pretrained weights (use model.init = \"random\", or a checkpoint)"
        )),
        Ok(src @ ModelSource::Dir(_)) => match src.check(init != ModelInit::Random) {
            Err(e) => problem(e.to_string()),
            // Attention-probability dropout is not implemented: refused, not skipped.
            Ok(()) => match src.config() {
                Ok(c) if c.attention_dropout > 0.0 => problem(format!(
                    "\"{name}\": its config sets attention_dropout = {}, which ablate does not \
                     implement (it applies the residual dropout, `dropout`)",
                    c.attention_dropout
                )),
                _ => None,
            },
        },
        Ok(_) => None,
    }
}

/// Whether a data source loads (`synthetic`, a BFCL question file, a directory of
/// ToolBench answer files, a ToolBench SFT file) and can be written in `template`, read now
/// so that a bad file fails the plan, not every run.
fn data_problem(
    key: &str,
    spec: &crate::config::DataSource,
    template: Template,
) -> Option<(String, String)> {
    let problem = |m: String| Some((key.to_string(), m));
    let source = spec.source()?;
    if let crate::data::Source::Queries(path) = source {
        // Test queries are answered as an agent: they need a template that can write a
        // query without ToolBench's SFT turns.
        return match crate::data::toolbench::load_query_set(path) {
            Err(e) => problem(e.to_string()),
            Ok(q) if q.is_empty() => problem(format!("{spec}: no queries")),
            Ok(_) if template != Template::Compact => Some((
                "data.template".into(),
                format!(
                    "\"{}\" writes ToolBench's SFT turns, which test queries do not have \
                     (in {key} = \"{spec}\"); agent episodes use the \"compact\" template",
                    template.name()
                ),
            )),
            Ok(_) => None,
        };
    }
    match source.load() {
        Ok(Some(ex)) if ex.is_empty() => problem(format!("{spec}: no examples")),
        Ok(Some(ex)) => ex.iter().find_map(|e| template.prompt(e).err()).map(|e| {
            (
                "data.template".to_string(),
                format!("{e} (in {key} = \"{spec}\")"),
            )
        }),
        Ok(None) if template != Template::Compact => Some((
            "data.template".into(),
            format!(
                "\"{}\" cannot write the synthetic task ({key})",
                template.name()
            ),
        )),
        Ok(None) => None,
        Err(e) => problem(e.to_string()),
    }
}

/// Whether the judge's ToolEval evaluator folder (if any) reads, and names a model when
/// `eval.judge.model` does not.
fn judge_problem(judge: &crate::config::JudgeConfig) -> Option<(String, String)> {
    let dir = judge.evaluator.trim();
    if dir.is_empty() {
        return None;
    }
    match crate::eval::tooleval::EvaluatorFolder::load(std::path::Path::new(dir)) {
        Err(e) => Some(("eval.judge.evaluator".into(), e.to_string())),
        Ok(f) if judge.model.trim().is_empty() && f.model().is_none() => Some((
            "eval.judge.model".into(),
            format!("{dir}/config.yaml names no model, so this key must"),
        )),
        Ok(_) => None,
    }
}

/// What a run's data amounts to, shown by `plan`: examples trained on, left out by the
/// leak guard (their query is in the evaluation set), validated on and evaluated on, and
/// the training split against `data.max_seq_len` (token lengths before any cut, and how
/// many examples the limit cuts or drops), so a user can choose the limit before a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DataSummary {
    pub train: usize,
    pub left_out: usize,
    pub val: usize,
    pub eval: usize,
    pub tokens: crate::data::LengthStats,
    pub truncated: usize,
    pub dropped: usize,
}

/// `DataSummary`s, computed once per distinct data configuration and tokenizer. Reads the
/// token cache of the results folder but writes nothing (planning changes no file).
pub struct DataSummaries {
    cache: crate::data::cache::TokenCache,
    done: BTreeMap<String, DataSummary>,
}

impl DataSummaries {
    pub fn new(results: &std::path::Path) -> Self {
        DataSummaries {
            cache: crate::data::cache::TokenCache::in_results(results, false),
            done: BTreeMap::new(),
        }
    }

    pub fn of(&mut self, cfg: &RunConfig) -> Result<DataSummary, String> {
        let key = serde_json::json!([cfg.data, cfg.model.name, cfg.train.loss_on]).to_string();
        if let Some(s) = self.done.get(&key) {
            return Ok(*s);
        }
        let d = &cfg.data;
        let s = d
            .split_spec()
            .and_then(|s| crate::data::splits(&s))
            .map_err(|e| e.to_string())?;
        if cfg.model.endpoint_model().is_some() {
            // An endpoint's model is not trained here: only its evaluation set counts.
            let summary = DataSummary {
                train: 0,
                left_out: 0,
                val: 0,
                eval: s.eval.len(),
                tokens: Default::default(),
                truncated: 0,
                dropped: 0,
            };
            self.done.insert(key, summary);
            return Ok(summary);
        }
        let source = ModelSource::resolve(&cfg.model.name).map_err(|e| e.to_string())?;
        let tok = match source.tokenizer().map_err(|e| e.to_string())? {
            Some(t) => t,
            None => self
                .cache
                .preset_tokenizer(&s.train, d.template, d.vocab_size)
                .map_err(|e| e.to_string())?,
        };
        let encoding = crate::data::Encoding {
            template: d.template,
            loss_on: cfg.train.loss_on,
            max_len: d.max_seq_len,
            truncation: d.truncation,
        };
        let enc = self
            .cache
            .split(&tok, &s.train, &encoding)
            .map_err(|e| e.to_string())?;
        let summary = DataSummary {
            train: s.train.len(),
            left_out: s.left_out,
            val: s.val.len(),
            eval: s.eval.len(),
            tokens: enc.length_stats(),
            truncated: enc.truncated,
            dropped: enc.dropped,
        };
        self.done.insert(key, summary);
        Ok(summary)
    }
}

/// Expands an experiment's grid: crossed axes and zip groups form a cartesian product, in
/// the order of their keys; exclusions are dropped; duplicate configurations collapse.
pub fn expand(exp: &Experiment) -> Result<Plan, ConfigError> {
    expand_at_most(exp, DEFAULT_MAX_RUNS)
}

/// Grids larger than this are refused before they are expanded (`--max-runs` raises it).
pub const DEFAULT_MAX_RUNS: u64 = 500_000;

/// [`expand`], refusing a grid of more than `max_runs` grid points before expanding it.
pub fn expand_at_most(exp: &Experiment, max_runs: u64) -> Result<Plan, ConfigError> {
    Ok(Expansion::new(exp.clone(), max_runs)?.into_plan())
}
/// Gives each run its stage ids. Runs that differ only in `train.epochs` share the longest
/// one's training when the schedule makes a shorter run its exact prefix (see
/// [`stages::prefix_exact`]); their models are that training's checkpoints at their epochs.
pub fn assign_stages(runs: &mut [PlannedRun], origin: &str) -> Result<(), ConfigProblem> {
    let mut guards = stages::LeakGuards::default();
    let mut left_out = Vec::with_capacity(runs.len());
    for r in runs.iter() {
        let digest = guards.of(&r.config.data).map_err(|e| ConfigProblem {
            origin: origin.to_string(),
            key: "data.eval".into(),
            message: e.to_string(),
        })?;
        left_out.push(digest);
    }
    // Runs of the same training keys but for their length.
    let groups: Vec<String> = runs
        .iter()
        .zip(&left_out)
        .map(|(r, lo)| stages::training_key(&r.config, lo.as_deref(), 0).to_string())
        .collect();
    let mut longest: BTreeMap<&str, usize> = BTreeMap::new();
    for (r, g) in runs.iter().zip(&groups) {
        if r.config.train.epochs > 0 {
            let e = longest.entry(g).or_default();
            *e = (*e).max(r.config.train.epochs);
        }
    }
    for ((r, lo), g) in runs.iter_mut().zip(&left_out).zip(&groups) {
        let longest = longest.get(g.as_str()).copied();
        (r.stages, r.sharing) = stages_sharing(&r.config, lo.as_deref(), longest);
    }
    Ok(())
}

/// A run's stage ids and how it gets its model, given the longest `train.epochs` among the
/// runs of its training keys (None: no run of them trains).
fn stages_sharing(
    config: &RunConfig,
    left_out: Option<&str>,
    longest: Option<usize>,
) -> (stages::StageIds, Sharing) {
    let own = config.train.epochs;
    let max = longest.unwrap_or(own);
    let (train_epochs, sharing) = if own == 0 || max == own {
        (own, Sharing::Alone)
    } else {
        match stages::prefix_exact(config) {
            Ok(()) => (max, Sharing::PrefixOf(max)),
            Err(why) => (own, Sharing::Refused(why)),
        }
    };
    (stages::stage_ids(config, left_out, train_epochs), sharing)
}

/// Grid values compare as numbers when both are numbers (`1` equals `1.0`).
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_experiment, DropoutRate};

    #[test]
    fn added_keys_defaults_are_the_configs_defaults() {
        // A drifted default would change the id of every run that never set the key.
        // A key listed more than once has one entry per spelling of its default.
        let defaults = serde_json::to_value(RunConfig::default()).unwrap();
        for (section, key, _) in ADDED_KEYS {
            let spellings: Vec<Value> = ADDED_KEYS
                .iter()
                .filter(|(s, k, _)| s == section && k == key)
                .map(|(_, _, d)| serde_json::from_str(d).unwrap())
                .collect();
            assert!(
                spellings.contains(&defaults[section][key]),
                "{section}.{key}: {}",
                defaults[section][key]
            );
        }
    }

    fn plan(text: &str) -> Plan {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.toml");
        std::fs::write(&p, text).unwrap();
        expand(&load_experiment(&p, &[]).unwrap()).unwrap()
    }

    #[test]
    fn golden_run_id_of_the_defaults() {
        // Pinned: a change here invalidates every stored result. Bump RUN_ID_VERSION
        // deliberately instead of updating this value.
        assert_eq!(run_id(&RunConfig::default()), "d3262c447ef6");
    }

    #[test]
    fn keys_added_later_change_the_id_only_when_set() {
        let base = plan("[train]\nepochs = 2\n");
        let same = plan("[train]\nepochs = 2\n[eval]\ntemperature = 0\nstop = []\n");
        assert_eq!(base.runs[0].id, same.runs[0].id);
        let sampled = plan("[train]\nepochs = 2\n[eval]\ntemperature = 0.7\n");
        assert_ne!(base.runs[0].id, sampled.runs[0].id);
        let stopped = plan("[train]\nepochs = 2\n[eval]\nstop = [\"Observation:\"]\n");
        assert_ne!(base.runs[0].id, stopped.runs[0].id);
    }

    #[test]
    fn dropout_is_resolved_from_the_model_and_changes_the_id_only_when_it_is_used() {
        let base = plan("[train]\nepochs = 2\n");
        assert_eq!(base.runs[0].config.train.dropout, DropoutRate::Rate(0.0));
        let zero = plan("[train]\nepochs = 2\ndropout = 0\n");
        assert_eq!(base.runs[0].id, zero.runs[0].id);
        let some = plan("[train]\nepochs = 2\ndropout = 0.1\n");
        assert_ne!(base.runs[0].id, some.runs[0].id);
        // A checkpoint's own rate (0.1 in the Hub fixture's config.json) is read and hashed.
        let name = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/opt-hub/bin"
        );
        let from_dir = plan(&format!("[model]\nname = \"{name}\"\n"));
        assert_eq!(
            from_dir.runs[0].config.train.dropout,
            DropoutRate::Rate(0.1)
        );
        let overridden = plan(&format!(
            "[model]\nname = \"{name}\"\n[train]\ndropout = 0\n"
        ));
        assert_eq!(
            overridden.runs[0].config.train.dropout,
            DropoutRate::Rate(0.0)
        );
        assert_ne!(from_dir.runs[0].id, overridden.runs[0].id);
    }

    #[test]
    fn id_ignores_key_order_and_float_spelling() {
        let a = plan("[train]\nlr = 0.00005\nepochs = 2\n[model]\nname = \"tiny\"\n");
        let b = plan("[model]\nname = \"tiny\"\n[train]\nepochs = 2\nlr = 5e-5\n");
        assert_eq!(a.runs[0].id, b.runs[0].id);
        let c = plan("[train]\nlr = 5.0e-5\nepochs = 3\n");
        assert_ne!(a.runs[0].id, c.runs[0].id);
    }

    #[test]
    fn cartesian_product_zip_and_exclusions() {
        let p = plan(
            "[grid]\n\"train.epochs\" = [1, 3]\nseeds = [0, 1, 2]\n\
             [[grid.zip]]\n\"train.lr\" = [1e-3, 2e-3]\n\"train.warmup_ratio\" = [0.0, 0.1]\n\
             [[grid.exclude]]\n\"train.epochs\" = 3\n\"train.seed\" = 2\n",
        );
        // 2 epochs x 3 seeds x 2 zipped pairs = 12, minus (epochs 3, seed 2) x 2 pairs.
        assert_eq!(p.runs.len(), 10);
        let ids: std::collections::BTreeSet<_> = p.runs.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids.len(), 10);
        for r in &p.runs {
            let lr = r.axes["train.lr"].as_f64().unwrap();
            let wr = r.axes["train.warmup_ratio"].as_f64().unwrap();
            assert!((lr == 1e-3 && wr == 0.0) || (lr == 2e-3 && wr == 0.1));
            assert_eq!(r.config.train.lr, lr);
        }
        assert_eq!(
            p.axis_names(),
            vec![
                "train.epochs",
                "train.seed",
                "train.lr",
                "train.warmup_ratio"
            ]
        );
    }

    #[test]
    fn baseline_is_marked() {
        let p = plan(
            "[experiment]\nbaseline = { \"train.epochs\" = 3 }\n[grid]\n\"train.epochs\" = [1, 3]\n",
        );
        let marked: Vec<_> = p.runs.iter().filter(|r| r.is_baseline).collect();
        assert_eq!(marked.len(), 1);
        assert_eq!(marked[0].config.train.epochs, 3);
    }

    #[test]
    fn semantic_problem_in_a_grid_value_names_the_axis() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.toml");
        std::fs::write(&p, "[grid]\n\"train.lr\" = [1e-3, -1.0]\n").unwrap();
        let err = expand(&load_experiment(&p, &[]).unwrap()).unwrap_err();
        let s = err.to_string();
        assert!(
            s.contains("grid.\"train.lr\": must be a positive number"),
            "{s}"
        );
    }
}
