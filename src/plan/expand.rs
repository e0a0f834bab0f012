//! Grid expansion in two passes, so that a grid of a million runs is planned without
//! holding a million resolved configurations. The first pass resolves and checks every grid
//! point and keeps only what the runs share: which points become runs (not excluded, first
//! of their id) and the longest training of each group of runs that differ only in their
//! epochs. The second resolves the kept points again, a chunk at a time, into planned runs
//! with their stage ids, which a caller prints and drops (`plan`) or collects (`run`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::stages::{self, LeakGuards};
use super::{
    data_problem, judge_problem, model_problem, run_id, stages_sharing, values_equal, Plan,
    PlannedRun,
};
use crate::config::{set_path, ConfigError, ConfigProblem, Evaluator, Experiment, RunConfig};
use crate::model::ModelSource;

/// Grid points resolved at a time: large enough to keep every core busy, small enough
/// that a chunk's configurations and stage keys are a few megabytes.
const CHUNK: usize = 4096;

/// Alternatives of one factor of the grid (an axis, or a zip group); each alternative sets
/// one or more keys.
type Factor = Vec<Vec<(String, Value)>>;

/// One grid point resolved: its config, the config's own problems, its run id and the
/// devices it takes.
type Resolved = (RunConfig, Vec<(String, String)>, String, usize);

/// A checked grid that yields its runs in grid order, a chunk at a time.
pub struct Expansion {
    pub experiment: Experiment,
    factors: Vec<Factor>,
    baseline: BTreeMap<String, Value>,
    /// `train.dropout = "checkpoint"` is the model's own rate, read once per model.
    dropout_of: BTreeMap<String, f64>,
    /// Grid points that become runs, in grid order.
    kept: Vec<u64>,
    /// The longest `train.epochs` of each training group (a digest of its keys but length).
    longest: HashMap<[u8; 16], usize>,
    guards: Mutex<LeakGuards>,
}

impl Expansion {
    /// Checks every grid point; all problems of the grid are reported together. A grid of
    /// more than `max_runs` points is refused before any is resolved (its size is the
    /// product of the axis lengths, counted without overflow).
    pub fn new(exp: Experiment, max_runs: u64) -> Result<Expansion, ConfigError> {
        let origin = exp.file.display().to_string();
        let size = exp
            .grid
            .axes
            .values()
            .map(|v| v.len() as u64)
            .chain(
                exp.grid
                    .zips
                    .iter()
                    .map(|z| z.values().next().map_or(0, |v| v.len() as u64)),
            )
            .try_fold(1u64, |n, k| n.checked_mul(k));
        let total = match size {
            Some(n) if n <= max_runs => n,
            _ => {
                return Err(ConfigError::Invalid(vec![ConfigProblem {
                    origin,
                    key: "grid".into(),
                    message: format!(
                        "{} grid points (before exclusions), more than the {max_runs} allowed: \
                         narrow the grid, or raise the limit with --max-runs",
                        size.map_or("more than 2^64".to_string(), |n| n.to_string())
                    ),
                }]))
            }
        };
        let mut factors: Vec<Factor> = Vec::new();
        for (k, vals) in &exp.grid.axes {
            factors.push(vals.iter().map(|v| vec![(k.clone(), v.clone())]).collect());
        }
        for z in &exp.grid.zips {
            let n = z.values().next().map_or(0, Vec::len);
            factors.push(
                (0..n)
                    .map(|i| z.iter().map(|(k, v)| (k.clone(), v[i].clone())).collect())
                    .collect(),
            );
        }
        let baseline = exp
            .meta
            .baseline
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(Value::Null)))
            .collect();
        let dropout_of = dropout_rates(&exp, &factors);
        let mut x = Expansion {
            experiment: exp,
            factors,
            baseline,
            dropout_of,
            kept: Vec::new(),
            longest: HashMap::new(),
            guards: Mutex::new(LeakGuards::default()),
        };
        let problems = x.check(total, &origin);
        if problems.is_empty() {
            Ok(x)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The first pass: every grid point resolved, checked and hashed, in parallel a chunk
    /// at a time; files are checked once per distinct source and model, not once per run.
    fn check(&mut self, total: u64, origin: &str) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let (mut models, mut datasets, mut judges) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        // The leak guard's error is reported alone, and only for an otherwise valid grid.
        let mut guard_problem = None;
        let guards = self.guards.get_mut().expect("not poisoned");
        let mut start = 0u64;
        while start < total {
            let end = total.min(start + CHUNK as u64);
            let points: Vec<(u64, BTreeMap<String, Value>)> = (start..end)
                .map(|i| (i, point(&self.factors, i)))
                .filter(|(_, axes)| !excluded(&self.experiment, axes))
                .collect();
            start = end;
            let built: Vec<Result<Resolved, String>> = points
                .par_iter()
                .map(|(_, axes)| resolve(&self.experiment, &self.dropout_of, axes))
                .collect();
            let mut grouped = Vec::new();
            for ((i, axes), b) in points.into_iter().zip(built) {
                let (config, config_problems, id, _) = match b {
                    Ok(x) => x,
                    Err(message) => {
                        problems.push(ConfigProblem {
                            origin: origin.to_string(),
                            key: "grid".into(),
                            message,
                        });
                        continue;
                    }
                };
                let data_problems: Vec<(String, String)> = [
                    ("data.train", &config.data.train),
                    ("data.eval", &config.data.eval),
                    ("data.val", &config.data.val),
                ]
                .into_iter()
                .filter(|(_, spec)| !spec.is_empty())
                .filter_map(|(k, spec)| {
                    let template = config.data.template;
                    datasets
                        .entry((k, spec.to_string(), template))
                        .or_insert_with(|| data_problem(k, spec, template))
                        .clone()
                })
                .collect();
                let judge_problem = if config.eval.evaluators.contains(&Evaluator::LlmJudge) {
                    judges
                        .entry((
                            config.eval.judge.evaluator.clone(),
                            config.eval.judge.model.clone(),
                        ))
                        .or_insert_with(|| judge_problem(&config.eval.judge))
                        .clone()
                } else {
                    None
                };
                let model_problem = models
                    .entry((config.model.name.clone(), config.model.init))
                    .or_insert_with(|| model_problem(&config.model.name, config.model.init))
                    .clone();
                for (k, m) in config_problems
                    .into_iter()
                    .chain(model_problem)
                    .chain(judge_problem)
                    .chain(data_problems)
                {
                    let p = ConfigProblem {
                        origin: origin.to_string(),
                        key: if axes.contains_key(&k) {
                            format!("grid.\"{k}\"")
                        } else {
                            k
                        },
                        message: m,
                    };
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
                if !seen.insert(id) {
                    continue;
                }
                self.kept.push(i);
                if problems.is_empty() && guard_problem.is_none() {
                    match guards.of(&config.data) {
                        Ok(left_out) if config.train.epochs > 0 => grouped.push((config, left_out)),
                        Ok(_) => {}
                        Err(e) => {
                            guard_problem = Some(ConfigProblem {
                                origin: origin.to_string(),
                                key: "data.eval".into(),
                                message: e.to_string(),
                            })
                        }
                    }
                }
            }
            // Runs of the same training keys but for their length.
            let groups: Vec<([u8; 16], usize)> = grouped
                .par_iter()
                .map(|(config, left_out)| {
                    (group_of(config, left_out.as_deref()), config.train.epochs)
                })
                .collect();
            for (g, epochs) in groups {
                let e = self.longest.entry(g).or_default();
                *e = (*e).max(epochs);
            }
        }
        if problems.is_empty() {
            problems.extend(guard_problem);
        }
        problems
    }

    /// How many runs the grid makes.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The runs, in grid order, a chunk at a time.
    pub fn runs(&self) -> impl Iterator<Item = Vec<PlannedRun>> + '_ {
        self.kept.chunks(CHUNK).map(|c| self.runs_at(c))
    }

    /// Every run at once: the plan `ablate run` executes.
    pub fn into_plan(self) -> Plan {
        let runs = self.runs().flatten().collect();
        Plan {
            experiment: self.experiment,
            runs,
        }
    }

    /// The second pass over some kept grid points. They resolved in the first pass, and
    /// their leak guards are cached there.
    fn runs_at(&self, indices: &[u64]) -> Vec<PlannedRun> {
        let resolved: Vec<(BTreeMap<String, Value>, Resolved)> = indices
            .par_iter()
            .map(|&i| {
                let axes = point(&self.factors, i);
                let r = resolve(&self.experiment, &self.dropout_of, &axes)
                    .expect("resolved in the first pass");
                (axes, r)
            })
            .collect();
        let left_out: Vec<Option<String>> = {
            let mut guards = self.guards.lock().expect("not poisoned");
            resolved
                .iter()
                .map(|(_, (config, ..))| guards.of(&config.data).expect("read in the first pass"))
                .collect()
        };
        let first = self.kept.first().copied();
        resolved
            .into_par_iter()
            .zip(left_out)
            .zip(indices)
            .map(|(((axes, (config, _, id, devices)), left_out), &i)| {
                let longest = (config.train.epochs > 0)
                    .then(|| self.longest.get(&group_of(&config, left_out.as_deref())))
                    .flatten()
                    .copied();
                let (stages, sharing) = stages_sharing(&config, left_out.as_deref(), longest);
                // With no declared baseline, the first run is the reference row.
                let is_baseline = if self.baseline.is_empty() {
                    Some(i) == first
                } else {
                    self.baseline
                        .iter()
                        .all(|(k, v)| axes.get(k).is_some_and(|a| values_equal(a, v)))
                };
                PlannedRun {
                    id,
                    axes,
                    is_baseline,
                    devices,
                    config,
                    stages,
                    sharing,
                }
            })
            .collect()
    }
}

/// The keys a grid point sets: its index read as a number whose digits are the factors'
/// alternatives, the last factor fastest.
fn point(factors: &[Factor], mut i: u64) -> BTreeMap<String, Value> {
    let mut chosen = vec![0usize; factors.len()];
    for (d, f) in factors.iter().enumerate().rev() {
        let n = f.len() as u64;
        chosen[d] = (i % n) as usize;
        i /= n;
    }
    factors
        .iter()
        .zip(chosen)
        .flat_map(|(f, c)| f[c].iter().cloned())
        .collect()
}

fn excluded(exp: &Experiment, axes: &BTreeMap<String, Value>) -> bool {
    exp.grid.exclude.iter().any(|e| {
        e.iter()
            .all(|(k, v)| axes.get(k).is_some_and(|a| values_equal(a, v)))
    })
}

/// A grid point's configuration, its problems, id and devices.
fn resolve(
    exp: &Experiment,
    dropout_of: &BTreeMap<String, f64>,
    axes: &BTreeMap<String, Value>,
) -> Result<Resolved, String> {
    let mut json = exp.base.clone();
    for (k, v) in axes {
        set_path(&mut json, k, v.clone());
    }
    let devices = devices_needed(&exp.resources, &json);
    let mut config: RunConfig = serde_json::from_value(json).map_err(|e| e.to_string())?;
    if let Some(&rate) = dropout_of.get(&config.model.name) {
        config.train.dropout = config.train.dropout.resolved(rate);
    }
    let problems = config.problems();
    let id = run_id(&config);
    Ok((config, problems, id, devices))
}

/// The dropout rate of every model the grid names (each `model.name` value, else the
/// base's), where its config reads.
fn dropout_rates(exp: &Experiment, factors: &[Factor]) -> BTreeMap<String, f64> {
    let mut names: BTreeSet<String> = factors
        .iter()
        .flatten()
        .flatten()
        .filter(|(k, _)| k == "model.name")
        .filter_map(|(_, v)| v.as_str())
        .map(String::from)
        .collect();
    if names.is_empty() {
        names.insert(
            exp.base["model"]["name"]
                .as_str()
                .unwrap_or_default()
                .into(),
        );
    }
    names
        .into_iter()
        .filter_map(|name| {
            let rate = ModelSource::resolve(&name).ok()?.config().ok()?.dropout;
            Some((name, rate))
        })
        .collect()
}

/// A digest of a run's training keys less its length: runs of one group differ only in
/// `train.epochs`.
fn group_of(config: &RunConfig, left_out: Option<&str>) -> [u8; 16] {
    let key = stages::training_key(config, left_out, 0).to_string();
    let digest = Sha256::digest(key.as_bytes());
    digest[..16].try_into().expect("16 bytes")
}

/// The devices of the first `[[resources]]` entry whose `where` matches the config (as
/// JSON), else 1.
fn devices_needed(rules: &[crate::config::ResourceRule], config: &Value) -> usize {
    rules
        .iter()
        .find(|rule| {
            rule.when.iter().all(|(k, v)| {
                let want = serde_json::to_value(v).unwrap_or(Value::Null);
                k.split('.')
                    .try_fold(config, |node, part| node.get(part))
                    .is_some_and(|have| values_equal(have, &want))
            })
        })
        .map_or(1, |rule| rule.devices)
}
