//! The generation stage: the model's answers to the evaluation set, stored as predictions
//! (test steps, decoded in batches; ToolBench episodes, turn by turn), so that any
//! evaluator can judge them later without the model.

use super::train::Loaded;
use super::RunError;
use crate::data::{self, Example, Source};
use crate::eval::{Prediction, PredictionKind};
use crate::exec::{Event, RunContext};
use crate::model::{self, Decoding, GenerateOptions};
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
pub fn run(ctx: &RunContext, m: &Loaded, eval: &[Example]) -> Result<Vec<Prediction>, RunError> {
    let cfg = ctx.config;
    let kinds = Kinds::of(cfg);
    let mut out = Vec::new();
    if kinds.steps {
        out.extend(steps(ctx, m, limited(cfg, eval))?);
    }
    if kinds.episodes {
        let tasks = super::episode::tasks(cfg)?;
        out.extend(super::episode::run_episodes(ctx, m, &tasks)?);
    }
    Ok(out)
}

pub(super) fn emit_prediction(ctx: &RunContext, p: &Prediction) {
    (ctx.emit)(Event::Record(Record::Prediction {
        generation_id: ctx.stages.generation.clone(),
        prediction: p.clone(),
    }));
}

/// Decodes the test prompts in batches of `eval.batch_size`.
fn steps(ctx: &RunContext, m: &Loaded, examples: &[Example]) -> Result<Vec<Prediction>, RunError> {
    let (run_id, cfg, cancel, emit) = (ctx.run_id, ctx.config, ctx.cancel, ctx.emit);
    let (model, tok) = (&m.model, &m.tokenizer);
    emit(Event::Phase {
        run_id: run_id.to_string(),
        phase: "generate",
        total: examples.len() as u64,
    });
    let dataset = cfg.data.eval.source().map_or("", Source::name);
    let e = &cfg.eval;
    let mut opts = GenerateOptions {
        max_new_tokens: e.max_new_tokens,
        eos: data::EOS_ID,
        decoding: Decoding::Greedy,
    };
    // Stop strings are matched on the decoded text of the new tokens.
    let stop = |ids: &[u32]| -> bool {
        !e.stop.is_empty()
            && data::decode(tok, ids).is_ok_and(|t| e.stop.iter().any(|s| t.contains(s.as_str())))
    };
    let mut out = Vec::with_capacity(examples.len());
    let mut done = 0u64;
    for chunk in examples.chunks(e.batch_size) {
        if e.temperature > 0.0 {
            // Seeded per example position, so a result does not depend on eval.batch_size
            // beyond the batch's own composition.
            opts.decoding = Decoding::Sample {
                temperature: e.temperature,
                top_k: e.top_k,
                top_p: e.top_p,
                seed: cfg.train.seed.wrapping_add(done),
            };
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(TrainError::Interrupted.into());
        }
        // A prompt that does not fit the model's positions with the decoding budget loses
        // its oldest earlier steps; one that still does not fit is stored as a
        // `context_overflow` ending instead of a generation (the run goes on).
        let room = model
            .config()
            .max_position_embeddings
            .saturating_sub(e.max_new_tokens);
        let fitted = chunk
            .iter()
            .map(|ex| data::fit_prompt(tok, ex, cfg.data.template, room))
            .collect::<Result<Vec<_>, _>>()?;
        let prompts: Vec<Vec<u32>> = fitted.iter().flatten().cloned().collect();
        let mut outs = if prompts.is_empty() {
            Vec::new()
        } else {
            model::generate(model, &prompts, &opts, &stop)?
        }
        .into_iter();
        for (ex, fit) in chunk.iter().zip(&fitted) {
            let ids = fit
                .as_ref()
                .map(|_| outs.next().expect("one output per fitted prompt"));
            let (text, detail) = match &ids {
                Some(ids) => (data::decode(tok, ids)?, None),
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
