//! The generation stage: the model's answers to the evaluation set, stored as predictions
//! (test steps, decoded in batches; ToolBench episodes, turn by turn), so that any
//! evaluator can judge them later without the model.

use super::answer::{Answerer, Fit};
use super::RunError;
use crate::data::{Example, Source};
use crate::eval::{Prediction, PredictionKind};
use crate::exec::{Event, RunContext};
use crate::plan::stages::Kinds;
use crate::store::Record;
use crate::train::TrainError;

/// The examples a run is evaluated on: the first `eval.limit` of the evaluation set.
pub fn limited<'a>(cfg: &crate::config::RunConfig, eval: &'a [Example]) -> &'a [Example] {
    if cfg.eval.limit > 0 {
        &eval[..cfg.eval.limit.min(eval.len())]
    } else {
        eval
    }
}

/// Generates what the run's evaluators read, emitting each prediction as it is made.
pub fn run(
    ctx: &RunContext,
    answerer: &mut dyn Answerer,
    eval: &[Example],
) -> Result<Vec<Prediction>, RunError> {
    let cfg = ctx.config;
    let kinds = Kinds::of(cfg);
    let mut out = Vec::new();
    if kinds.steps {
        out.extend(steps(ctx, answerer, limited(cfg, eval))?);
    }
    if kinds.episodes {
        let tasks = super::episode::tasks(cfg)?;
        out.extend(super::episode::run_episodes(ctx, answerer, &tasks)?);
    }
    Ok(out)
}

pub(super) fn emit_prediction(ctx: &RunContext, p: &Prediction) {
    (ctx.emit)(Event::Record(Record::Prediction {
        generation_id: ctx.stages.generation.clone(),
        prediction: p.clone(),
    }));
}

/// Answers the test prompts in batches.
fn steps(
    ctx: &RunContext,
    answerer: &mut dyn Answerer,
    examples: &[Example],
) -> Result<Vec<Prediction>, RunError> {
    let (run_id, cfg, cancel, emit) = (ctx.run_id, ctx.config, ctx.cancel, ctx.emit);
    emit(Event::Phase {
        run_id: run_id.to_string(),
        phase: "generate",
        total: examples.len() as u64,
    });
    let dataset = cfg.data.eval.source().map_or("", Source::name);
    let mut out = Vec::with_capacity(examples.len());
    let mut done = 0u64;
    for chunk in examples.chunks(answerer.batch()) {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(TrainError::Interrupted.into());
        }
        // Sampling is seeded per example position, so a result does not depend on
        // eval.batch_size beyond the batch's own composition. A prompt that does not fit
        // the model's positions with the decoding budget loses its oldest earlier steps;
        // one that still does not fit is stored as a `context_overflow` ending instead of
        // a generation (the run goes on).
        let seed = cfg.train.seed.wrapping_add(done);
        let answers = answerer.answer(chunk, seed, Fit::DropOldestSteps)?;
        for (ex, answer) in chunk.iter().zip(answers) {
            let (text, detail) = match answer {
                // What a router may read at inference time: the model's confidence, and
                // whether the answer is a call to an offered function.
                Some(a) => {
                    let signals = crate::eval::signals::of_step(&a.text, &ex.tools);
                    let detail = serde_json::json!({
                        "mean_logprob": a.mean_logprob(),
                        "signals": signals,
                    });
                    (a.text, Some(detail))
                }
                None => (
                    String::new(),
                    Some(serde_json::json!({"ending": "context_overflow"})),
                ),
            };
            let p = Prediction {
                kind: PredictionKind::Step,
                example_id: ex.id.clone(),
                dataset: dataset.to_string(),
                category: ex.category.clone(),
                prediction: text,
                gold: cfg.data.template.completion(ex)?,
                detail,
            };
            emit_prediction(ctx, &p);
            out.push(p);
        }
        done += chunk.len() as u64;
        emit(Event::Progress {
            run_id: run_id.to_string(),
            pos: done,
            message: format!("generated {done}"),
        });
    }
    Ok(out)
}
