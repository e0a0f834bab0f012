//! The judge stage: one verdict set, an evaluator's verdict on every stored prediction it
//! reads (test steps, or episodes for `episode` and an episode-reading `llm_judge`).

use std::collections::HashMap;

use super::RunError;
use crate::config::Evaluator;
use crate::data::{self, Example};
use crate::eval::{self, llm_judge, Judgment, Prediction, PredictionKind};
use crate::exec::{Event, RunContext};
use crate::plan::stages::{reads_episodes, Kinds, VerdictSetId};
use crate::store::judge_cache::JudgeCacheReader;
use crate::store::Record;
use crate::train::TrainError;

pub fn run(
    ctx: &RunContext,
    set: &VerdictSetId,
    predictions: &[Prediction],
    eval: &[Example],
) -> Result<(), RunError> {
    let (run_id, cfg, emit) = (ctx.run_id, ctx.config, ctx.emit);
    let kind = if reads_episodes(set.evaluator, Kinds::of(cfg)) {
        PredictionKind::Episode
    } else {
        PredictionKind::Step
    };
    let mine: Vec<&Prediction> = predictions.iter().filter(|p| p.kind == kind).collect();
    emit(Event::Phase {
        run_id: run_id.to_string(),
        phase: "judge",
        total: mine.len() as u64,
    });
    let cache = match set.evaluator {
        Evaluator::LlmJudge => StoreCache::open(ctx)?,
        _ => None,
    };
    let llm = match set.evaluator {
        Evaluator::LlmJudge => Some(llm_judge::Judge::new(
            &cfg.eval.judge,
            cache.as_ref().map(|c| c as &dyn llm_judge::AnswerCache),
        )?),
        _ => None,
    };
    let examples: HashMap<&str, &Example> = eval.iter().map(|e| (e.id.as_str(), e)).collect();
    let tasks = match kind {
        PredictionKind::Episode => super::episode::tasks(cfg)?,
        PredictionKind::Step => Vec::new(),
    };
    let tasks: HashMap<&str, &crate::toolenv::Task> =
        tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut passed = 0usize;
    for (n, p) in mine.iter().enumerate() {
        if ctx.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(TrainError::Interrupted.into());
        }
        let v = match (set.evaluator, p.kind, p.ending()) {
            (ev, PredictionKind::Step, Some(ending)) if ev != Evaluator::Episode => Judgment {
                passed: false,
                verdict: ending.to_string(),
            }
            .into(),
            (Evaluator::Episode, _, ending) => {
                let ending = ending.unwrap_or("no_finish");
                Judgment {
                    passed: ending == "pass",
                    verdict: ending.to_string(),
                }
                .into()
            }
            (Evaluator::LlmJudge, kind, _) => {
                let j = llm.as_ref().expect("a judge for llm_judge");
                let d = match kind {
                    // The episode as ToolEval's converted format has it: what an export
                    // writes and ToolEval's script reads.
                    PredictionKind::Episode => {
                        let Some(t) = tasks.get(p.example_id.as_str()) else {
                            return Err(missing(ctx, p));
                        };
                        let detail = p.detail.clone().unwrap_or_default();
                        let entry = crate::eval::tooleval::converted(&detail);
                        j.judge(&llm_judge::Item::converted(&t.id, &t.query, &entry))?
                    }
                    PredictionKind::Step => {
                        let Some(e) = examples.get(p.example_id.as_str()) else {
                            return Err(missing(ctx, p));
                        };
                        j.judge(&llm_judge::Item::step(
                            &e.id,
                            &e.query,
                            &e.tools,
                            &p.prediction,
                        ))?
                    }
                };
                Scored {
                    judgment: Judgment {
                        passed: d.passed,
                        verdict: d.verdict,
                    },
                    score: d.score,
                    judgments: Some(serde_json::to_value(&d.judgments).expect("json")),
                }
            }
            (ev, _, _) => {
                let Some(e) = examples.get(p.example_id.as_str()) else {
                    return Err(missing(ctx, p));
                };
                eval::judge(ev, &p.prediction, e).into()
            }
        };
        let Scored {
            judgment: v,
            score,
            judgments,
        } = v;
        passed += v.passed as usize;
        emit(Event::Record(Record::StageVerdict {
            verdict_set_id: set.id.clone(),
            kind: p.kind,
            example_id: p.example_id.clone(),
            verdict: v.verdict,
            passed: v.passed,
            score,
            judgments,
        }));
        emit(Event::Progress {
            run_id: run_id.to_string(),
            pos: n as u64 + 1,
            message: format!("{} pass {passed}/{}", set.evaluator, n + 1),
        });
    }
    Ok(())
}

/// A verdict with what a judge that asks k times adds to it.
struct Scored {
    judgment: Judgment,
    score: Option<f64>,
    judgments: Option<serde_json::Value>,
}

impl From<Judgment> for Scored {
    fn from(judgment: Judgment) -> Scored {
        Scored {
            judgment,
            score: None,
            judgments: None,
        }
    }
}

/// The judge's answers: read from the database, written by the store's one writer (the
/// answer travels as a record, like every other row of the run).
pub(super) struct StoreCache<'a> {
    reader: JudgeCacheReader,
    emit: &'a dyn Fn(Event),
}

impl<'a> StoreCache<'a> {
    /// The run's database's cache, or None when the run has no database (tests).
    pub(super) fn open(ctx: &'a RunContext) -> Result<Option<StoreCache<'a>>, RunError> {
        let Some(db) = ctx.db else { return Ok(None) };
        Ok(Some(StoreCache {
            reader: JudgeCacheReader::open(db)
                .map_err(|e| llm_judge::JudgeError::Cache(e.to_string()))?,
            emit: ctx.emit,
        }))
    }
}

impl llm_judge::AnswerCache for StoreCache<'_> {
    fn get(&self, key: &str) -> Result<Option<serde_json::Value>, String> {
        self.reader.get(key)
    }

    fn put(&self, answer: llm_judge::CachedAnswer) -> Result<(), String> {
        (self.emit)(Event::Record(Record::JudgeAnswer(answer)));
        Ok(())
    }
}

/// A stored prediction whose example the evaluation data no longer has: the data changed
/// under a finished generation.
fn missing(ctx: &RunContext, p: &Prediction) -> RunError {
    RunError::Data(data::DataError::File {
        path: ctx.config.data.eval.to_string(),
        message: format!(
            "stored prediction {} of generation {} has no example here: did the file change \
             since it was generated?",
            p.example_id, ctx.stages.generation
        ),
    })
}
