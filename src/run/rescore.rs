//! `ablate rescore`: an evaluator's verdicts on stored predictions, without the model. Each
//! run's generation is judged again as a new verdict set (the evaluator's current version,
//! with any `eval.judge.*` settings changed); a set already done is not judged twice. When
//! the set is one the run itself names (same evaluator and settings, a newer version), the
//! run takes it and its rows are assembled anew.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use super::{judge, provenance::Provenance, RunError};
use crate::config::{self, Evaluator, Override, RunConfig, RunOptions};
use crate::exec::{Event, RunContext};
use crate::plan::stages::{self, StageIds, VerdictSetId};
use crate::store::{Record, Stage, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RescoreError {
    #[error("--set {key}: rescore changes only the judge's settings (eval.judge.*); {why}")]
    NotAJudgeKey { key: String, why: &'static str },
    #[error("--set {key}: {message}")]
    BadValue { key: String, message: String },
    #[error("run {run}: {key}: {message}")]
    Unfit {
        run: String,
        key: String,
        message: String,
    },
    #[error("run {0} has no stored predictions (it is not done)")]
    NoGeneration(String),
    #[error("{run}: {source}")]
    Run {
        run: String,
        #[source]
        source: Box<RunError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What re-scoring one run did.
#[derive(Debug, Clone, Serialize)]
pub struct Rescored {
    pub run_id: String,
    pub verdict_set: String,
    pub evaluator: Evaluator,
    pub version: String,
    /// Why the run was passed over (the evaluator does not fit its data).
    pub skipped: Option<String>,
    /// Already done: nothing was judged.
    pub already_done: bool,
    pub judged: usize,
    pub passed: usize,
    /// The run took the new verdict set as its own (its rows were assembled anew).
    pub relinked: bool,
}

/// A run's config with the `--set` overrides, which may touch only `eval.judge.*` (anything
/// else would need a new generation, which a re-score never makes).
pub fn with_judge_settings(cfg: &RunConfig, sets: &[Override]) -> Result<RunConfig, RescoreError> {
    let mut v = serde_json::to_value(cfg).expect("config serializes");
    for s in sets {
        if !s.key.starts_with("eval.judge.") {
            return Err(RescoreError::NotAJudgeKey {
                key: s.key.clone(),
                why: "other keys change what the model generates: run the sweep with them instead",
            });
        }
        let value = serde_json::to_value(&s.value).map_err(|e| RescoreError::BadValue {
            key: s.key.clone(),
            message: e.to_string(),
        })?;
        config::set_path(&mut v, &s.key, value);
    }
    serde_json::from_value(v).map_err(|e| RescoreError::BadValue {
        key: sets.last().map(|s| s.key.clone()).unwrap_or_default(),
        message: e.to_string(),
    })
}

/// Re-scores each run's stored predictions with `evaluator`. `db` is where the LLM judge
/// caches its answers; events (progress) go to `emit`.
#[allow(clippy::too_many_arguments)]
pub fn rescore(
    store: &mut Store,
    results: &Path,
    runs: &[(String, RunConfig)],
    evaluator: Evaluator,
    sets: &[Override],
    db: Option<&Path>,
    cancel: &AtomicBool,
    emit: &dyn Fn(Event),
) -> Result<Vec<Rescored>, RescoreError> {
    let mut out = Vec::new();
    let mut unfit = None;
    let prov = Provenance::current(&Device::Cpu).to_json();
    for (run_id, stored) in runs {
        let Some(generation) = store.run_generation(run_id)? else {
            return Err(RescoreError::NoGeneration(run_id.clone()));
        };
        let mut cfg = with_judge_settings(stored, sets)?;
        let own = cfg.eval.evaluators.iter().position(|e| *e == evaluator);
        let unchanged = sets.is_empty();
        if own.is_none() {
            cfg.eval.evaluators.push(evaluator);
        }
        // The evaluator must fit the data (`bfcl` a BFCL file, `episode` ToolBench answers)
        // and the judge must have its endpoint.
        if let Some((key, message)) = cfg
            .problems()
            .into_iter()
            .find(|(k, _)| k.starts_with("eval."))
        {
            unfit.get_or_insert(RescoreError::Unfit {
                run: run_id.clone(),
                key: key.clone(),
                message: message.clone(),
            });
            out.push(Rescored {
                run_id: run_id.clone(),
                verdict_set: String::new(),
                evaluator,
                version: String::new(),
                skipped: Some(format!("{key}: {message}")),
                already_done: false,
                judged: 0,
                passed: 0,
                relinked: false,
            });
            continue;
        }
        let key = stages::verdict_key(&cfg, &generation, evaluator);
        let set = VerdictSetId {
            evaluator,
            id: stages::digest("verdicts", &key),
            version: crate::eval::version(evaluator).to_string(),
        };
        let already_done = store.register_verdict_set(&generation, &set, &key)?;
        let (mut judged, mut passed) = (0, 0);
        if !already_done {
            let predictions = store.predictions(&generation)?;
            let ids = StageIds {
                generation: generation.clone(),
                ..Default::default()
            };
            let rows = std::cell::RefCell::new(Vec::new());
            let collect = |e: Event| match e {
                Event::Record(r) => rows.borrow_mut().push(r),
                e => emit(e),
            };
            let t0 = Instant::now();
            let wrap = |e: RunError| RescoreError::Run {
                run: run_id.clone(),
                source: Box::new(e),
            };
            let eval = cfg
                .data
                .split_spec()
                .and_then(|s| crate::data::eval_examples(&s))
                .map_err(RunError::from)
                .map_err(wrap)?;
            let options = RunOptions::default();
            let needs = Default::default();
            let ctx = RunContext {
                run_id,
                config: &cfg,
                options: &options,
                dir: &results.join("runs").join(run_id),
                results,
                stages: &ids,
                needs: &needs,
                predictions: &[],
                db,
                cancel,
                emit: &collect,
            };
            judge::run(&ctx, &set, &predictions, &eval).map_err(wrap)?;
            let rows = rows.into_inner();
            for r in &rows {
                if let Record::StageVerdict { passed: p, .. } = r {
                    judged += 1;
                    passed += *p as usize;
                }
            }
            store.finish_stage(
                Stage::Judge,
                &set.id,
                t0.elapsed().as_secs_f64(),
                &prov,
                &rows,
            )?;
        } else {
            (judged, passed) = store.verdict_counts(&set.id)?;
        }
        // The run's own evaluator, as configured, at a newer version: the run takes it.
        let relinked = match own {
            Some(position) if unchanged => store.relink_verdict_set(run_id, position, &set.id)?,
            _ => false,
        };
        out.push(Rescored {
            run_id: run_id.clone(),
            verdict_set: set.id,
            evaluator,
            version: set.version,
            skipped: None,
            already_done,
            judged,
            passed,
            relinked,
        });
    }
    // Runs the evaluator does not fit are passed over; none fitting is an error.
    match unfit {
        Some(e) if out.iter().all(|r| r.skipped.is_some()) => Err(e),
        _ => Ok(out),
    }
}
