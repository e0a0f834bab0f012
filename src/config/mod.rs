//! Experiment files: figment layers, then a two-phase parse (raw values checked key by key,
//! then a validated [`Experiment`]). Every problem names its file and dotted key, and all
//! problems of a file are reported together.

mod spec;

pub use spec::*;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value as FValue};
use figment::Figment;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One problem in an experiment file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigProblem {
    /// Where the value came from: a file path, `--set` or the environment.
    pub origin: String,
    /// The dotted key (empty when the problem is the file itself).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("--set {0}: expected KEY=VALUE")]
    BadSet(String),
}

/// A parsed `--set key=value` override.
#[derive(Debug, Clone)]
pub struct Override {
    pub key: String,
    pub value: toml::Value,
}

impl std::str::FromStr for Override {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| ConfigError::BadSet(s.to_string()))?;
        let key = k.trim().to_string();
        if key.is_empty() {
            return Err(ConfigError::BadSet(s.to_string()));
        }
        // A value is read as TOML (numbers, booleans, arrays); anything else is a string.
        let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.to_string()));
        Ok(Override { key, value })
    }
}

/// Experiment-level settings that do not change results (and so not the run id).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
    /// Axis values of the baseline run, e.g. `{ "train.epochs" = 1 }`.
    #[serde(default)]
    pub baseline: BTreeMap<String, toml::Value>,
    /// Report template: a file name in report-templates/ or a path.
    #[serde(default)]
    pub report: Option<String>,
    /// The report's hybrid what-if: a small model that hands what it fails to a large one.
    #[serde(default)]
    pub hybrid: Option<HybridSpec>,
}

/// `[experiment.hybrid]`: where the large model's results come from, and what a query costs.
/// Without `large_run` or `large_pass_rate`, the sweep's largest model (by `params`) with the
/// same other axis values is the large model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HybridSpec {
    /// A stored run (id or unique prefix) whose per-example verdicts stand for the large model.
    pub large_run: Option<String>,
    /// Or the large model's pass rate on what the small one fails (0 to 1).
    pub large_pass_rate: Option<f64>,
    /// Cost of one query to the small model (any unit, e.g. dollars or GPU-seconds).
    pub small_cost: f64,
    /// Cost of one query to the large model, in the same unit.
    pub large_cost: f64,
}

impl Default for HybridSpec {
    fn default() -> Self {
        HybridSpec {
            large_run: None,
            large_pass_rate: None,
            small_cost: 1.0,
            large_cost: 10.0,
        }
    }
}

/// How runs execute: validation interval and checkpoints. None of it changes what a run
/// computes, so none of it is part of the run id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunOptions {
    /// Validation loss every this many optimizer steps, besides each epoch end (0: epoch
    /// ends only).
    pub val_every: usize,
    /// Checkpoint every this many optimizer steps, besides each epoch end (0: epoch ends
    /// only).
    pub checkpoint_every: usize,
    /// Checkpoints kept per run (older ones are deleted); 0 turns checkpoints off, and a
    /// failed or killed run then starts over.
    pub keep_checkpoints: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            val_every: 0,
            checkpoint_every: 0,
            keep_checkpoints: 1,
        }
    }
}

/// One `[[resources]]` entry: how many devices a run takes from `ablate run --devices`
/// (and how many GPUs its Slurm task asks for). The first entry whose `where` matches a
/// run's config applies; an entry without `where` matches every run; with no match a run
/// takes one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRule {
    pub devices: usize,
    /// Dotted config keys and the values a run must have, e.g.
    /// `{ "model.name" = "facebook/opt-1.3b" }`.
    #[serde(default, rename = "where")]
    pub when: BTreeMap<String, toml::Value>,
}

/// `[slurm]`: sbatch options for `ablate submit --slurm`; flags on the command line win.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmSpec {
    pub partition: Option<String>,
    /// Generic resources per task, e.g. "gpu:1". Default: `gpu:<devices>` for runs whose
    /// model.device is a GPU (cuda:N or auto), none for CPU runs.
    pub gres: Option<String>,
    /// Time limit per task, e.g. "04:00:00".
    pub time: Option<String>,
    /// Memory per task, e.g. "32G".
    pub mem: Option<String>,
    pub cpus_per_task: Option<usize>,
    /// At most this many tasks of the array at once (sbatch's `--array=0-N%max_parallel`).
    pub max_parallel: Option<usize>,
    /// More sbatch options, each as on the command line, e.g. "--account=lab".
    pub sbatch_args: Vec<String>,
    /// Shell lines the task runs before ablate, e.g. "module load cuda/12.4".
    pub setup: Vec<String>,
    /// The ablate binary tasks run (it must be reachable from the compute nodes); default:
    /// the binary that submits.
    pub ablate: Option<String>,
}

/// The sweep's grid, as written.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    /// Independent axes, crossed with each other.
    pub axes: BTreeMap<String, Vec<Value>>,
    /// Groups of axes whose values are paired position by position.
    pub zips: Vec<BTreeMap<String, Vec<Value>>>,
    /// Combinations to leave out: a run is excluded when it matches every key of one entry.
    pub exclude: Vec<BTreeMap<String, Value>>,
}

/// A validated experiment file.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub name: String,
    pub file: PathBuf,
    pub meta: ExperimentMeta,
    pub run: RunOptions,
    pub resources: Vec<ResourceRule>,
    pub slurm: SlurmSpec,
    /// The resolved base configuration (all layers applied), as JSON.
    pub base: Value,
    pub grid: Grid,
}

const SECTIONS: &[&str] = &["model", "data", "train", "eval"];

/// Loads an experiment file through the layers: built-in defaults <
/// `defaults.toml` beside the file < the file < `ABLATE_*` environment < `--set`.
pub fn load_experiment(path: &Path, sets: &[Override]) -> Result<Experiment, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read(path).map_err(|e| ConfigError::Io {
        path: file.clone(),
        message: e.to_string(),
    })?;
    let text = String::from_utf8(text).map_err(|e| ConfigError::Io {
        path: file.clone(),
        message: format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()),
    })?;
    load_experiment_text(path, &text, path.parent(), sets)
}

/// Loads an experiment from text; `path` names it in messages, and `defaults.toml` is
/// looked up in `defaults_dir`.
pub fn load_experiment_text(
    path: &Path,
    text: &str,
    defaults_dir: Option<&Path>,
    sets: &[Override],
) -> Result<Experiment, ConfigError> {
    let file = path.display().to_string();
    // Parse the file alone first, so a syntax error names this file with line and column.
    if let Err(e) = toml::from_str::<toml::Table>(text) {
        return Err(ConfigError::Invalid(vec![ConfigProblem {
            origin: file,
            key: String::new(),
            message: format!("invalid TOML: {}", one_line(&e.to_string())),
        }]));
    }

    let mut fig = Figment::from(Serialized::defaults(RunConfig::default()));
    if let Some(defaults) = defaults_dir.map(|d| d.join("defaults.toml")) {
        if defaults.is_file() && defaults.file_name() != path.file_name() {
            let dtext = std::fs::read_to_string(&defaults).unwrap_or_default();
            if let Err(e) = toml::from_str::<toml::Table>(&dtext) {
                return Err(ConfigError::Invalid(vec![ConfigProblem {
                    origin: defaults.display().to_string(),
                    key: String::new(),
                    message: format!("invalid TOML: {}", one_line(&e.to_string())),
                }]));
            }
            fig = fig.merge(Toml::file(&defaults));
        }
    }
    fig = fig.merge(Toml::string(text));
    fig = fig.merge(Env::prefixed("ABLATE_").split("__").filter(|k| {
        SECTIONS
            .iter()
            .chain(std::iter::once(&"run"))
            .any(|s| k.as_str().starts_with(&format!("{s}.")))
    }));
    for o in sets {
        fig = fig.merge(Serialized::global(&o.key, &o.value));
    }

    let origin_of = |key: &str| -> String {
        match fig.find_metadata(key) {
            Some(m) => match &m.source {
                Some(figment::Source::File(p)) => p.display().to_string(),
                Some(figment::Source::Custom(s)) => s.clone(),
                _ if m.name.contains("nvironment") => {
                    format!("ABLATE_{}", key.to_uppercase().replace('.', "__"))
                }
                // Defaults never produce a problem, so a serialized layer is `--set`.
                _ if m.name.contains("erialized") => format!("--set {key}"),
                _ => file.clone(),
            },
            None => file.clone(),
        }
    };

    let root: Dict = fig.extract().map_err(|e| {
        ConfigError::Invalid(vec![ConfigProblem {
            origin: file.clone(),
            key: e.path.join("."),
            message: one_line(&e.kind.to_string()),
        }])
    })?;
    // Shared by the checks below; a RefCell so `push` and the final count can coexist.
    let problems = std::cell::RefCell::new(Vec::new());
    let mut push = |key: &str, message: String| {
        problems.borrow_mut().push(ConfigProblem {
            origin: origin_of(key),
            key: key.to_string(),
            message,
        })
    };

    let defaults_json = serde_json::to_value(RunConfig::default()).expect("defaults serialize");
    let known = leaf_keys(&defaults_json);
    let mut base = defaults_json.clone();
    for (top, v) in &root {
        match top.as_str() {
            "experiment" | "grid" | "run" | "resources" | "slurm" => {}
            s if SECTIONS.contains(&s) => {
                let FValue::Dict(_, d) = v else {
                    push(s, format!("expected a table, found {}", kind(v)));
                    continue;
                };
                let mut leaves = Vec::new();
                flatten_fig(s, d, &mut leaves);
                for (key, val) in leaves {
                    let json = to_json(&val);
                    if !known.contains_key(&key) {
                        push(&key, unknown_key_message(&key, &known));
                    } else if let Err(m) = check_value(&defaults_json, &key, &json) {
                        push(&key, m);
                    } else {
                        set_path(&mut base, &key, json);
                    }
                }
            }
            other => push(other, unknown_key_message(other, &known)),
        }
    }

    let meta: ExperimentMeta = table_section(&root, "experiment", &mut push);
    let run: RunOptions = table_section(&root, "run", &mut push);
    let slurm: SlurmSpec = table_section(&root, "slurm", &mut push);
    let resources: Vec<ResourceRule> = table_section(&root, "resources", &mut push);
    for (i, rule) in resources.iter().enumerate() {
        if rule.devices == 0 {
            push(
                &format!("resources[{i}].devices"),
                "must be at least 1".into(),
            );
        }
        for (key, val) in &rule.when {
            let json = serde_json::to_value(val).unwrap_or(Value::Null);
            let label = format!("resources[{i}].where.\"{key}\"");
            if !known.contains_key(key) {
                push(&label, unknown_key_message(key, &known));
            } else if let Err(m) = check_value(&defaults_json, key, &json) {
                push(&label, m);
            }
        }
    }
    if slurm.max_parallel == Some(0) {
        push("slurm.max_parallel", "must be at least 1".into());
    }

    let grid = match root.get("grid") {
        None => Grid::default(),
        Some(v) => parse_grid(v, &defaults_json, &known, &mut push),
    };
    // A grid axis takes its values from [grid]; an override of the key would be silently
    // lost in every run, so it is refused.
    for o in sets {
        if grid.axes.contains_key(&o.key) || grid.zips.iter().any(|z| z.contains_key(&o.key)) {
            problems.borrow_mut().push(ConfigProblem {
                origin: format!("--set {}", o.key),
                key: o.key.clone(),
                message: "is a grid axis of this experiment: --set cannot change it (edit \
                          its values under [grid])"
                    .into(),
            });
        }
    }

    for (key, val) in &meta.baseline {
        let json = serde_json::to_value(val).unwrap_or(Value::Null);
        if !known.contains_key(key) {
            push(
                &format!("experiment.baseline.\"{key}\""),
                unknown_key_message(key, &known),
            );
        } else if let Err(m) = check_value(&defaults_json, key, &json) {
            push(&format!("experiment.baseline.\"{key}\""), m);
        }
    }

    if let Some(h) = &meta.hybrid {
        if let Some(r) = h.large_pass_rate {
            if !(0.0..=1.0).contains(&r) {
                push(
                    "experiment.hybrid.large_pass_rate",
                    format!("must be between 0 and 1, got {r}"),
                );
            }
        }
        for (k, v) in [("small_cost", h.small_cost), ("large_cost", h.large_cost)] {
            if !(v >= 0.0 && v.is_finite()) {
                push(
                    &format!("experiment.hybrid.{k}"),
                    format!("must be a finite number >= 0, got {v}"),
                );
            }
        }
        if h.large_run.is_some() && h.large_pass_rate.is_some() {
            push(
                "experiment.hybrid",
                "set large_run or large_pass_rate, not both".into(),
            );
        }
    }

    if problems.borrow().is_empty() {
        match serde_json::from_value::<RunConfig>(base.clone()) {
            Ok(cfg) => {
                // Semantic checks on the base; grid values are checked per run by the planner.
                for (k, m) in cfg.problems() {
                    if !grid.axes.contains_key(&k) && !grid.zips.iter().any(|z| z.contains_key(&k))
                    {
                        push(&k, m);
                    }
                }
            }
            Err(e) => push("", one_line(&e.to_string())),
        }
    }
    let name = meta.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "experiment".into())
    });
    // The name names files (the report and its plots): it must stay one file name.
    if let Err(m) = safe_file_name(&name) {
        push("experiment.name", format!("\"{name}\" {m}"));
    }
    let problems = problems.into_inner();
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    Ok(Experiment {
        name,
        file: path.to_path_buf(),
        meta,
        run,
        resources,
        slurm,
        base,
        grid,
    })
}

/// Whether a user-given name can be used as one file name inside a folder ablate writes:
/// not empty, at most 200 bytes, no path separator, no leading dot (no `..`, no hidden
/// files), no control characters.
pub fn safe_file_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > 200 {
        return Err("is longer than 200 bytes");
    }
    if name.contains(['/', '\\']) {
        return Err("contains a path separator: it must be one file name");
    }
    if name.starts_with('.') {
        return Err("starts with '.': it would name a hidden file or a parent folder");
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    Ok(())
}

/// Deserializes a top-level table that is not part of the run config (`[experiment]`,
/// `[run]`), reporting a problem under its dotted key and falling back to the defaults.
fn table_section<T: serde::de::DeserializeOwned + Default>(
    root: &Dict,
    name: &str,
    push: &mut impl FnMut(&str, String),
) -> T {
    let Some(v) = root.get(name) else {
        return T::default();
    };
    v.deserialize::<T>().unwrap_or_else(|e| {
        let key = std::iter::once(name.to_string())
            .chain(e.path.iter().cloned())
            .collect::<Vec<_>>()
            .join(".");
        let message = match &e.kind {
            figment::error::Kind::UnknownField(_, expected) => {
                format!("unknown key; expected one of: {}", expected.join(", "))
            }
            other => one_line(&other.to_string()),
        };
        push(&key, message);
        T::default()
    })
}

fn parse_grid(
    v: &FValue,
    defaults: &Value,
    known: &BTreeMap<String, Value>,
    push: &mut impl FnMut(&str, String),
) -> Grid {
    let mut grid = Grid::default();
    let FValue::Dict(_, d) = v else {
        push("grid", format!("expected a table, found {}", kind(v)));
        return grid;
    };
    for (k, v) in d {
        match k.as_str() {
            "seeds" => {
                if let Some(vals) =
                    axis_values("train.seed", "grid.seeds", v, defaults, known, push)
                {
                    grid.axes.insert("train.seed".into(), vals);
                }
            }
            "zip" => {
                let FValue::Array(_, groups) = v else {
                    push(
                        "grid.zip",
                        "expected an array of tables ([[grid.zip]])".into(),
                    );
                    continue;
                };
                for (gi, g) in groups.iter().enumerate() {
                    let FValue::Dict(_, gd) = g else {
                        push(&format!("grid.zip[{gi}]"), "expected a table".into());
                        continue;
                    };
                    let mut group = BTreeMap::new();
                    for (ak, av) in gd {
                        let label = format!("grid.zip[{gi}].\"{ak}\"");
                        if let Some(vals) = axis_values(ak, &label, av, defaults, known, push) {
                            group.insert(ak.clone(), vals);
                        }
                    }
                    let lens: Vec<(String, usize)> =
                        group.iter().map(|(k, v)| (k.clone(), v.len())).collect();
                    if lens.windows(2).any(|w| w[0].1 != w[1].1) {
                        let desc = lens
                            .iter()
                            .map(|(k, n)| format!("\"{k}\" has {n}"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        push(
                            &format!("grid.zip[{gi}]"),
                            format!("zipped axes must have equal lengths: {desc}"),
                        );
                        continue;
                    }
                    if !group.is_empty() {
                        grid.zips.push(group);
                    }
                }
            }
            "exclude" => {
                let FValue::Array(_, items) = v else {
                    push(
                        "grid.exclude",
                        "expected an array of tables ([[grid.exclude]])".into(),
                    );
                    continue;
                };
                for (i, item) in items.iter().enumerate() {
                    let FValue::Dict(_, e) = item else {
                        push(&format!("grid.exclude[{i}]"), "expected a table".into());
                        continue;
                    };
                    let mut m = BTreeMap::new();
                    for (ek, ev) in e {
                        let json = to_json(ev);
                        if !known.contains_key(ek) {
                            push(
                                &format!("grid.exclude[{i}].\"{ek}\""),
                                unknown_key_message(ek, known),
                            );
                            continue;
                        }
                        if let Err(msg) = check_value(defaults, ek, &json) {
                            push(&format!("grid.exclude[{i}].\"{ek}\""), msg);
                        }
                        m.insert(ek.clone(), json);
                    }
                    grid.exclude.push(m);
                }
            }
            axis => {
                let label = format!("grid.\"{axis}\"");
                if let Some(vals) = axis_values(axis, &label, v, defaults, known, push) {
                    grid.axes.insert(axis.to_string(), vals);
                }
            }
        }
    }
    // An axis may appear once: crossed, or in one zip group.
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for k in grid
        .axes
        .keys()
        .chain(grid.zips.iter().flat_map(|z| z.keys()))
    {
        *seen.entry(k).or_default() += 1;
    }
    for (k, n) in seen {
        if n > 1 {
            push(
                &format!("grid.\"{k}\""),
                "axis given more than once (in the grid and a zip)".into(),
            );
        }
    }
    for (i, e) in grid.exclude.iter().enumerate() {
        for k in e.keys() {
            let is_axis = grid.axes.contains_key(k) || grid.zips.iter().any(|z| z.contains_key(k));
            if !is_axis {
                push(
                    &format!("grid.exclude[{i}].\"{k}\""),
                    "not an axis of the grid".into(),
                );
            }
        }
    }
    grid
}

/// The values of one axis, each checked against the key's type.
fn axis_values(
    key: &str,
    label: &str,
    v: &FValue,
    defaults: &Value,
    known: &BTreeMap<String, Value>,
    push: &mut impl FnMut(&str, String),
) -> Option<Vec<Value>> {
    let FValue::Array(_, items) = v else {
        push(
            label,
            format!("expected an array of values, found {}", kind(v)),
        );
        return None;
    };
    if items.is_empty() {
        push(label, "empty axis: give at least one value".into());
        return None;
    }
    if !known.contains_key(key) {
        push(label, unknown_key_message(key, known));
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let json = to_json(item);
        if let Err(m) = check_value(defaults, key, &json) {
            push(&format!("{label}[{i}]"), m);
            ok = false;
        }
        out.push(json);
    }
    ok.then_some(out)
}

/// Checks one value against the type of `key` by deserializing the defaults with only that
/// value changed: type errors are reported per key, and all of them together.
pub fn check_value(defaults: &Value, key: &str, value: &Value) -> Result<(), String> {
    let mut probe = defaults.clone();
    set_path(&mut probe, key, value.clone());
    serde_json::from_value::<RunConfig>(probe)
        .map(|_| ())
        .map_err(|e| one_line(&e.to_string()))
}

/// Sets a dotted path inside a JSON object, creating objects on the way.
pub fn set_path(root: &mut Value, key: &str, value: Value) {
    let mut cur = root;
    let mut parts = key.split('.').peekable();
    while let Some(p) = parts.next() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let obj = cur.as_object_mut().expect("object");
        if parts.peek().is_none() {
            obj.insert(p.to_string(), value);
            return;
        }
        cur = obj
            .entry(p.to_string())
            .or_insert(Value::Object(Default::default()));
    }
}

/// Every leaf of a JSON object as `a.b.c` → value.
pub fn leaf_keys(v: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

fn flatten_fig(prefix: &str, d: &Dict, out: &mut Vec<(String, FValue)>) {
    for (k, v) in d {
        let key = format!("{prefix}.{k}");
        match v {
            FValue::Dict(_, inner) => flatten_fig(&key, inner, out),
            _ => out.push((key, v.clone())),
        }
    }
}

fn to_json(v: &FValue) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn kind(v: &FValue) -> &'static str {
    match v {
        FValue::String(..) => "a string",
        FValue::Char(..) => "a character",
        FValue::Bool(..) => "a boolean",
        FValue::Num(..) => "a number",
        FValue::Empty(..) => "nothing",
        FValue::Dict(..) => "a table",
        FValue::Array(..) => "an array",
    }
}

fn unknown_key_message(key: &str, known: &BTreeMap<String, Value>) -> String {
    let best = known
        .keys()
        .map(|k| (edit_distance(k, key), k))
        .min()
        .filter(|(d, _)| *d <= 3);
    match best {
        Some((_, k)) => format!("unknown key (did you mean `{k}`?)"),
        None => "unknown key".to_string(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Expands CLI arguments (files or directories) into experiment files, sorted; a
/// directory contributes its `*.toml` files except `defaults.toml`.
/// The experiment files found under `paths`, and the `*.toml` entries of a folder that
/// were passed over because they are not regular files (a FIFO, a device, a dangling
/// link), for the command line to name.
pub struct ExperimentFiles {
    pub files: Vec<PathBuf>,
    pub skipped: Vec<PathBuf>,
}

pub fn experiment_files(paths: &[PathBuf]) -> Result<ExperimentFiles, ConfigError> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| ConfigError::Io {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            let (mut files, mut others): (Vec<PathBuf>, Vec<PathBuf>) = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension().is_some_and(|x| x == "toml")
                        && f.file_name().is_some_and(|n| n != "defaults.toml")
                })
                // Regular files only (a symlink to one counts): a FIFO would block the
                // read forever and a device would never end.
                .partition(|f| f.is_file());
            files.sort();
            others.sort();
            out.extend(files);
            skipped.extend(others);
        } else if p.is_file() {
            out.push(p.clone());
        } else if p.exists() {
            return Err(ConfigError::Io {
                path: p.display().to_string(),
                message: "not a regular file or a directory".into(),
            });
        } else {
            return Err(ConfigError::Io {
                path: p.display().to_string(),
                message: "no such file or directory".into(),
            });
        }
    }
    if out.is_empty() {
        return Err(ConfigError::Io {
            path: paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            message: "no experiment files (*.toml) found".into(),
        });
    }
    Ok(ExperimentFiles {
        files: out,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn problems(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "exp.toml", text);
        match load_experiment(&p, &[]) {
            Ok(_) => vec![],
            Err(ConfigError::Invalid(ps)) => ps
                .into_iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let ps = problems(
            "[train]\nlrr = 1e-3\nepochs = \"three\"\n[grid]\n\"train.batch_size\" = []\n",
        );
        assert_eq!(ps.len(), 3, "{ps:?}");
        assert!(ps[0].starts_with("train.epochs: invalid type"), "{ps:?}");
        assert!(
            ps[1].starts_with("train.lrr: unknown key (did you mean `train.lr`?)"),
            "{ps:?}"
        );
        assert!(
            ps[2].starts_with("grid.\"train.batch_size\": empty axis"),
            "{ps:?}"
        );
    }

    #[test]
    fn zip_lengths_are_checked() {
        let ps = problems("[[grid.zip]]\n\"train.lr\" = [1e-3, 2e-3]\n\"train.epochs\" = [1]\n");
        assert_eq!(ps.len(), 1);
        assert!(ps[0].contains("equal lengths"), "{ps:?}");
    }

    #[test]
    fn semantic_problems_name_the_key() {
        let ps = problems("[train]\nlr = -1.0\nbatch_size = 0\n");
        assert_eq!(
            ps,
            vec![
                "train.lr: must be a positive number, found -1".to_string(),
                "train.batch_size: must be at least 1".to_string()
            ]
        );
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "defaults.toml",
            "[train]\nlr = 1e-3\nepochs = 2\n",
        );
        let p = write(
            dir.path(),
            "e.toml",
            "[train]\nepochs = 3\nbatch_size = 4\n",
        );
        let sets = vec!["train.batch_size=8".parse::<Override>().unwrap()];
        let e = load_experiment(&p, &sets).unwrap();
        assert_eq!(e.base["train"]["lr"], serde_json::json!(1e-3));
        assert_eq!(e.base["train"]["epochs"], serde_json::json!(3));
        assert_eq!(e.base["train"]["batch_size"], serde_json::json!(8));
        assert_eq!(e.name, "e");
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let ps = problems("[train\nlr = 1\n");
        assert_eq!(ps.len(), 1);
        assert!(
            ps[0].contains("invalid TOML") && ps[0].contains("line 1"),
            "{ps:?}"
        );
    }

    #[test]
    fn clip_norm_accepts_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "e.toml",
            "[grid]\n\"train.clip_norm\" = [0.3, \"none\"]\n",
        );
        let e = load_experiment(&p, &[]).unwrap();
        assert_eq!(e.grid.axes["train.clip_norm"].len(), 2);
        let ps = problems("[train]\nclip_norm = \"off\"\n");
        assert_eq!(ps.len(), 1, "{ps:?}");
    }
}
