//! The training stage: tokenizer, model, SFT loop, and the trained model saved in Hugging
//! Face layout in the training's folder (`model/`, and `epochs/<k>/` after each epoch a
//! shorter run of the sweep can take as its model).

use std::path::Path;

use candle_core::Device;

use super::{io, RunError};
use crate::config::{ModelInit, TrainConfig};
use crate::data;
use crate::exec::{Event, RunContext};
use crate::model::{self, ModelSource, Opt};
use crate::store::Record;
use crate::train::checkpoint::CheckpointPolicy;
use crate::train::{self, TrainEvent, TrainOptions};

/// A model ready to generate, with its tokenizer.
pub struct Loaded {
    pub model: Opt,
    pub tokenizer: tokenizers::Tokenizer,
}

/// Loads a trained model folder (`config.json`, `model.safetensors`, `tokenizer.json`).
pub fn load(dir: &Path, device: &Device) -> Result<Loaded, RunError> {
    let source = ModelSource::Dir(dir.to_path_buf());
    let tokenizer = source.tokenizer()?.ok_or_else(|| RunError::Io {
        path: dir.display().to_string(),
        message: "the trained model has no tokenizer.json".into(),
    })?;
    let loaded = model::build(&source.config()?, &source.weight_files()?, 0, device)?;
    Ok(Loaded {
        model: loaded.model,
        tokenizer,
    })
}

/// Trains the run's training and saves it under `out`.
pub fn run(
    ctx: &RunContext,
    splits: &data::Splits,
    out: &Path,
    device: &Device,
) -> Result<Loaded, RunError> {
    let (cfg, run_opts, cancel, emit) = (ctx.config, ctx.options, ctx.cancel, ctx.emit);
    let training = ctx.stages.training.as_str();
    let metric = |name: &str, split: &str, step: i64, value: f64| {
        emit(Event::Record(Record::TrainingMetric {
            training_id: training.to_string(),
            name: name.to_string(),
            split: split.to_string(),
            step,
            value,
        }))
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    // The training's own length: a longer run's under epoch-prefix sharing.
    let epochs = ctx.stages.train_epochs;
    let (train_ex, val_ex) = (&splits.train, &splits.val);
    metric("examples_left_out", "train", -1, splits.left_out as f64);
    if train_ex.is_empty() && epochs > 0 {
        return Err(RunError::Data(data::DataError::File {
            path: cfg.data.train.to_string(),
            message: format!(
                "no training example is left: the {} there are share their queries \
                 with data.eval = \"{}\"",
                splits.left_out, cfg.data.eval
            ),
        }));
    }

    let source = ModelSource::resolve(&cfg.model.name)?;
    let template = cfg.data.template;
    // Tokenization is shared by the trainings of a results folder (`<results>/cache/tokens`).
    let cache = data::cache::TokenCache::in_results(ctx.results, true);
    // Only a preset gets a tokenizer trained on the data: a checkpoint brings its own
    // (`tokenizer()` fails when it has none).
    let tokenizer = match source.tokenizer()? {
        Some(t) => t,
        None => cache.preset_tokenizer(train_ex, template, cfg.data.vocab_size)?,
    };
    let tok_path = out.join("tokenizer.json");
    tokenizer.save(&tok_path, false).map_err(|e| RunError::Io {
        path: tok_path.display().to_string(),
        message: e.to_string(),
    })?;

    let mut mcfg = source.config()?;
    let weights = match (&source, cfg.model.init) {
        (ModelSource::Preset(p), ModelInit::Pretrained) => {
            return Err(RunError::Model(model::ModelError::NotFound {
                name: p.clone(),
                message:
                    "a preset has no pretrained weights; use init = \"random\" or a checkpoint"
                        .into(),
            }))
        }
        (ModelSource::Preset(_), _) | (_, ModelInit::Random) => vec![],
        (ModelSource::Dir(_), _) => source.weight_files()?,
    };
    if matches!(source, ModelSource::Preset(_)) {
        mcfg.vocab_size = tokenizer.get_vocab_size(true);
        // A preset's positions cover the longest training sequence. They come from the
        // training's keys only, so one training serves every evaluation: prompts that
        // do not fit with their decoding budget are fitted at generation.
        mcfg.max_position_embeddings = mcfg.max_position_embeddings.max(cfg.data.max_seq_len);
    } else if tokenizer.get_vocab_size(true) > mcfg.vocab_size {
        return Err(RunError::Model(model::ModelError::BadCheckpoint {
            path: tok_path.display().to_string(),
            message: format!(
                "tokenizer has {} tokens but the model's vocab_size is {}",
                tokenizer.get_vocab_size(true),
                mcfg.vocab_size
            ),
        }));
    }
    let loaded = model::build(&mcfg, &weights, cfg.train.seed, device)?;
    // The plan resolved `train.dropout = "checkpoint"`; a config from elsewhere is
    // resolved here the same way, so no run trains without the dropout it asked for.
    let train_cfg = TrainConfig {
        dropout: cfg.train.dropout.resolved(mcfg.dropout),
        epochs,
        ..cfg.train.clone()
    };
    metric("params", "model", -1, loaded.params.num_elements() as f64);

    let encoding = data::Encoding {
        template,
        loss_on: cfg.train.loss_on,
        max_len: cfg.data.max_seq_len,
        truncation: cfg.data.truncation,
    };
    let train_enc = cache.split(&tokenizer, train_ex, &encoding)?;
    let val_enc = cache.split(&tokenizer, val_ex, &encoding)?;
    for (split, enc) in [("train", &train_enc), ("val", &val_enc)] {
        for (name, v) in fit_metrics(enc) {
            metric(name, split, -1, v);
        }
    }
    if train_enc.examples.is_empty() && epochs > 0 {
        return Err(RunError::Data(data::DataError::File {
            path: cfg.data.train.to_string(),
            message: format!(
                "all {} training examples were dropped by data.truncation = \"{}\" at \
                 data.max_seq_len = {}: raise max_seq_len",
                train_ex.len(),
                cfg.data.truncation.name(),
                cfg.data.max_seq_len
            ),
        }));
    }
    let steps_per_epoch = train_enc.examples.len().div_ceil(cfg.train.batch_size);
    metric("steps_per_epoch", "train", -1, steps_per_epoch as f64);

    let run_id = ctx.run_id;
    // Models after each epoch, for the shorter runs of a sweep that share this training
    // (only where a prefix is exact: a constant schedule).
    let keep_epochs = epochs > 1 && crate::plan::stages::prefix_exact(cfg).is_ok();
    let mut save_err = None;
    {
        let mut on_event = |ev: TrainEvent| match ev {
            TrainEvent::Started { total_steps } => emit(Event::Phase {
                run_id: run_id.to_string(),
                phase: "train",
                total: total_steps as u64,
            }),
            TrainEvent::Step(s) => {
                let st = s.step as i64;
                for (name, v) in [
                    ("loss", s.loss),
                    ("grad_norm", s.grad_norm),
                    ("clip_coef", s.clip_coef),
                    ("lr", s.lr),
                    ("tokens_per_s", s.tokens_per_s),
                    ("step_time_s", s.step_time_s),
                ] {
                    metric(name, "train", st, v);
                }
                emit(Event::Progress {
                    run_id: run_id.to_string(),
                    pos: s.step as u64,
                    message: format!("loss {:.4}", s.loss),
                });
            }
            TrainEvent::Validation { step, loss } => metric("loss", "val", step as i64, loss),
            TrainEvent::Resumed { step, checkpoint } => emit(Event::RunResumed {
                run_id: run_id.to_string(),
                step: step as u64,
                checkpoint,
            }),
            TrainEvent::EpochEnd { epoch } if keep_epochs && epoch < epochs => {
                let dir = super::model_dir(out, Some(epoch));
                if let Err(e) = save_model(&dir, &loaded, &tok_path) {
                    save_err.get_or_insert(e);
                }
            }
            TrainEvent::EpochEnd { .. } | TrainEvent::Checkpoint { .. } => {}
        };
        let train_opts = TrainOptions {
            val_every: run_opts.val_every,
            checkpoints: (run_opts.keep_checkpoints > 0).then(|| CheckpointPolicy {
                dir: out.join("checkpoints"),
                every_steps: run_opts.checkpoint_every,
                keep_last: run_opts.keep_checkpoints,
            }),
        };
        train::train(
            &loaded.model,
            &loaded.params,
            &train_enc.examples,
            &val_enc.examples,
            &train_cfg,
            &train_opts,
            cancel,
            &mut on_event,
        )?;
    }
    if let Some(e) = save_err {
        return Err(e);
    }
    save_model(&super::model_dir(out, None), &loaded, &tok_path)?;
    Ok(Loaded {
        model: loaded.model,
        tokenizer,
    })
}

/// Saves a model folder whole or not at all: written beside, then renamed into place, so
/// a crash never leaves a half-written model that a later generation would load.
fn save_model(dir: &Path, m: &model::LoadedModel, tokenizer: &Path) -> Result<(), RunError> {
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    model::save_pretrained(&tmp, &m.config, &m.params)?;
    std::fs::copy(tokenizer, tmp.join("tokenizer.json")).map_err(io(tokenizer))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))
}

/// How fitting a split to the length limit went, as training metrics: example counts, and
/// token lengths before any cut (so a user can choose `data.max_seq_len`).
fn fit_metrics(enc: &data::EncodedSplit) -> Vec<(&'static str, f64)> {
    let len = enc.length_stats();
    vec![
        ("examples", enc.lengths.len() as f64),
        ("examples_truncated", enc.truncated as f64),
        ("examples_dropped", enc.dropped as f64),
        ("seq_len_min", len.min as f64),
        ("seq_len_median", len.median as f64),
        ("seq_len_p95", len.p95 as f64),
        ("seq_len_max", len.max as f64),
    ]
}
