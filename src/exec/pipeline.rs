//! One run, start to end: data → tokenizer → model → train → save → evaluate. It emits
//! events and returns; the executor decides what they mean for the store and the screen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::config::ModelInit;
use crate::data::{self, Example, Source};
use crate::eval::{judge, llm_judge};
use crate::model::{self, Decoding, GenerateOptions, ModelSource, Opt};
use crate::store::Record;
use crate::train::checkpoint::CheckpointPolicy;
use crate::train::{self, TrainError, TrainEvent, TrainOptions};

use super::Event;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Model(#[from] model::ModelError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("{0}")]
    Device(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error(transparent)]
    Judge(#[from] crate::eval::llm_judge::JudgeError),
}

impl From<candle_core::Error> for RunError {
    fn from(e: candle_core::Error) -> Self {
        RunError::Train(TrainError::Candle(e))
    }
}

pub fn device_for(spec: &str) -> Result<Device, RunError> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        s => {
            let n: usize = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| RunError::Device(format!("bad device {s}")))?;
            Device::new_cuda(n).map_err(|e| {
                RunError::Device(format!(
                    "model.device = \"{s}\": {e} (was ablate built with --features cuda?)"
                ))
            })
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RunError + '_ {
    move |e| RunError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn metric(run: &str, name: &str, split: &str, step: i64, value: f64) -> Event {
    Event::Record(Record::Metric {
        run_id: run.to_string(),
        name: name.to_string(),
        split: split.to_string(),
        step,
        value,
    })
}

/// Runs everything for one run; `dir` receives the tokenizer, the training checkpoints,
/// the final model (HF layout) and the resolved config.
pub fn run_one(ctx: &super::RunContext) -> Result<(), RunError> {
    let (run_id, cfg, run_opts, dir, cancel, emit) = (
        ctx.run_id,
        ctx.config,
        ctx.options,
        ctx.dir,
        ctx.cancel,
        ctx.emit,
    );
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cfg_path = dir.join("run_config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(cfg).expect("json"))
        .map_err(io(&cfg_path))?;
    let device = device_for(&cfg.model.device)?;

    // Validation never reads the evaluation set, and no training example shares a query
    // with it (the leak guard; the count left out is a metric of the run).
    let data::Splits {
        train: train_ex,
        val: test_ex,
        eval: eval_pool,
        left_out,
    } = data::splits(&cfg.data)?;
    emit(metric(
        run_id,
        "examples_left_out",
        "train",
        -1,
        left_out as f64,
    ));
    if train_ex.is_empty() && cfg.train.epochs > 0 {
        return Err(RunError::Data(data::DataError::File {
            path: cfg.data.train.clone(),
            message: format!(
                "no training example is left: the {left_out} there are share their queries \
                 with data.eval = \"{}\"",
                cfg.data.eval
            ),
        }));
    }
    let eval_source = Source::parse(&cfg.data.eval);
    let eval_ex: Vec<&Example> = if cfg.eval.limit > 0 {
        eval_pool.iter().take(cfg.eval.limit).collect()
    } else {
        eval_pool.iter().collect()
    };

    let source = ModelSource::resolve(&cfg.model.name)?;
    let template = cfg.data.template;
    // Tokenization is shared by the runs of a results folder (`<results>/cache/tokens`).
    let cache = match dir.parent().and_then(Path::parent) {
        Some(results) => data::cache::TokenCache::in_results(results, true),
        None => data::cache::TokenCache::none(),
    };
    // Only a preset gets a tokenizer trained on the data: a checkpoint brings its own
    // (`tokenizer()` fails when it has none).
    let tokenizer = match source.tokenizer()? {
        Some(t) => t,
        None => cache.preset_tokenizer(&train_ex, template, cfg.data.vocab_size)?,
    };
    let tok_path = dir.join("tokenizer.json");
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
        // A preset's positions cover the longest training sequence and the longest
        // evaluation prompt plus its decoding budget.
        let longest_prompt = eval_ex
            .iter()
            .map(|e| data::encode_prompt(&tokenizer, e, template).map(|p| p.len()))
            .try_fold(0, |m, n| n.map(|n| m.max(n)))?;
        mcfg.max_position_embeddings = mcfg
            .max_position_embeddings
            .max(cfg.data.max_seq_len.max(longest_prompt) + cfg.eval.max_new_tokens);
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
    let loaded = model::build(&mcfg, &weights, cfg.train.seed, &device)?;
    // The plan resolved `train.dropout = "checkpoint"`; a config from elsewhere is
    // resolved here the same way, so no run trains without the dropout it asked for.
    let train_cfg = crate::config::TrainConfig {
        dropout: cfg.train.dropout.resolved(mcfg.dropout),
        ..cfg.train.clone()
    };
    emit(metric(
        run_id,
        "params",
        "model",
        -1,
        loaded.params.num_elements() as f64,
    ));

    let encoding = data::Encoding {
        template,
        loss_on: cfg.train.loss_on,
        max_len: cfg.data.max_seq_len,
        truncation: cfg.data.truncation,
    };
    let train_enc = cache.split(&tokenizer, &train_ex, &encoding)?;
    let val_enc = cache.split(&tokenizer, &test_ex, &encoding)?;
    for (split, enc) in [("train", &train_enc), ("val", &val_enc)] {
        for (name, v) in fit_metrics(enc) {
            emit(metric(run_id, name, split, -1, v));
        }
    }
    if train_enc.examples.is_empty() && cfg.train.epochs > 0 {
        return Err(RunError::Data(data::DataError::File {
            path: cfg.data.train.clone(),
            message: format!(
                "all {} training examples were dropped by data.truncation = \"{}\" at \
                 data.max_seq_len = {}: raise max_seq_len",
                train_ex.len(),
                serde_json::to_value(cfg.data.truncation)
                    .expect("json")
                    .as_str()
                    .unwrap_or_default(),
                cfg.data.max_seq_len
            ),
        }));
    }

    let mut train_err = None;
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
                    emit(metric(run_id, name, "train", st, v));
                }
                emit(Event::Progress {
                    run_id: run_id.to_string(),
                    pos: s.step as u64,
                    message: format!("loss {:.4}", s.loss),
                });
            }
            TrainEvent::Validation { step, loss } => {
                emit(metric(run_id, "loss", "val", step as i64, loss))
            }
            TrainEvent::Resumed { step, checkpoint } => emit(Event::RunResumed {
                run_id: run_id.to_string(),
                step: step as u64,
                checkpoint,
            }),
            TrainEvent::Checkpoint { .. } => {}
        };
        let train_opts = TrainOptions {
            val_every: run_opts.val_every,
            checkpoints: (run_opts.keep_checkpoints > 0).then(|| CheckpointPolicy {
                dir: dir.join("checkpoints"),
                every_steps: run_opts.checkpoint_every,
                keep_last: run_opts.keep_checkpoints,
            }),
        };
        if let Err(e) = train::train(
            &loaded.model,
            &loaded.params,
            &train_enc.examples,
            &val_enc.examples,
            &train_cfg,
            &train_opts,
            cancel,
            &mut on_event,
        ) {
            train_err = Some(e);
        }
    }
    if let Some(e) = train_err {
        return Err(e.into());
    }
    model::save_pretrained(&dir.join("model"), &loaded.config, &loaded.params)?;
    std::fs::copy(&tok_path, dir.join("model/tokenizer.json")).map_err(io(&tok_path))?;

    emit(Event::Phase {
        run_id: run_id.to_string(),
        phase: "eval",
        total: eval_ex.len() as u64,
    });
    let judge = if cfg.eval.evaluators.iter().any(|e| e == "llm_judge") {
        Some(llm_judge::Judge::new(&cfg.eval.judge, ctx.db)?)
    } else {
        None
    };
    // With ToolBench episodes, the judge reads whole episodes (as ToolEval does), not steps.
    let episodes = cfg.eval.evaluators.iter().any(|e| e == "episode")
        && matches!(eval_source, Source::ToolBench(_));
    let step_judge = judge.as_ref().filter(|_| !episodes);
    let mut scores = evaluate(ctx, &loaded.model, &tokenizer, &eval_ex, step_judge)?;
    if cfg.eval.evaluators.iter().any(|e| e == "episode") {
        if let Source::ToolBench(dir) = &eval_source {
            let mut trajectories = data::toolbench::load_answers(dir)?;
            if cfg.eval.limit > 0 {
                trajectories.truncate(cfg.eval.limit);
            }
            let passed = super::episode::run_episodes(
                ctx,
                &loaded.model,
                &tokenizer,
                &trajectories,
                judge.as_ref(),
            )?;
            scores.insert("episode".into(), (passed.rules, trajectories.len()));
            if let Some(j) = passed.judged {
                scores.insert("llm_judge".into(), (j, trajectories.len()));
            }
        }
    }
    // The first evaluator's rate is `pass_rate` (what reports compare); each evaluator's
    // is also kept as `pass_rate_<name>`.
    for (i, ev) in cfg.eval.evaluators.iter().enumerate() {
        let (passed, total) = scores.get(ev).copied().unwrap_or((0, 0));
        let rate = passed as f64 / total.max(1) as f64;
        if i == 0 {
            emit(metric(run_id, "pass_rate", "test", -1, rate));
            emit(metric(run_id, "n_eval", "test", -1, total as f64));
        }
        emit(metric(run_id, &format!("pass_rate_{ev}"), "test", -1, rate));
    }
    Ok(())
}

/// Decoding of the test prompts and a verdict per example from each step-wise evaluator
/// (all but `episode`). Returns (passed, judged) by evaluator.
fn evaluate(
    ctx: &super::RunContext,
    model: &Opt,
    tok: &tokenizers::Tokenizer,
    examples: &[&Example],
    llm: Option<&llm_judge::Judge>,
) -> Result<BTreeMap<String, (usize, usize)>, RunError> {
    let (run_id, cfg, cancel, emit) = (ctx.run_id, ctx.config, ctx.cancel, ctx.emit);
    // Episodes are judged apart; so is the LLM judge when it reads episodes instead.
    let step_wise: Vec<&String> = cfg
        .eval
        .evaluators
        .iter()
        .filter(|e| *e != "episode" && (*e != "llm_judge" || llm.is_some()))
        .collect();
    let mut scores: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    if step_wise.is_empty() {
        return Ok(scores);
    }
    let mut done = 0u64;
    let dataset = Source::parse(&cfg.data.eval).name();
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
    for chunk in examples.chunks(cfg.eval.batch_size) {
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
        // its oldest earlier steps; one that still does not fit gets a `context_overflow`
        // verdict instead of a generation (the run goes on).
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
        for (e, fit) in chunk.iter().zip(&fitted) {
            let out = fit
                .as_ref()
                .map(|_| outs.next().expect("one output per fitted prompt"));
            let text = match &out {
                Some(ids) => data::decode(tok, ids)?,
                None => String::new(),
            };
            for ev in &step_wise {
                let v = match (ev.as_str(), llm) {
                    (_, _) if out.is_none() => crate::eval::Judgment {
                        passed: false,
                        verdict: "context_overflow".into(),
                    },
                    // The step's text is the answer judged; the path is that one step.
                    ("llm_judge", Some(j)) => {
                        let d = j.judge(&llm_judge::Item {
                            id: &e.id,
                            query: &e.query,
                            tools: &e.tools,
                            final_answer: Some(text.as_str()).filter(|t| !t.trim().is_empty()),
                            details: serde_json::json!([
                                {"role": "assistant", "message": text, "next": []}
                            ]),
                        })?;
                        crate::eval::Judgment {
                            passed: d.passed,
                            verdict: d.verdict,
                        }
                    }
                    _ => judge(ev, &text, e),
                };
                let score = scores.entry(ev.to_string()).or_default();
                score.0 += v.passed as usize;
                score.1 += 1;
                emit(Event::Record(Record::Verdict {
                    run_id: run_id.to_string(),
                    dataset: dataset.into(),
                    example_id: e.id.clone(),
                    category: e.category.clone(),
                    evaluator: ev.to_string(),
                    verdict: v.verdict,
                    passed: v.passed,
                    prediction: text.clone(),
                    gold: cfg.data.template.completion(e)?,
                }));
            }
        }
        done += chunk.len() as u64;
        let passed = scores[step_wise[0].as_str()].0;
        emit(Event::Progress {
            run_id: run_id.to_string(),
            pos: done,
            message: format!("pass {passed}/{done}"),
        });
    }
    Ok(scores)
}

/// How fitting a split to the length limit went, as run metrics: example counts, and
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

/// Where a run's files live, beside the database.
pub fn run_dir(results: &Path, run_id: &str) -> PathBuf {
    results.join("runs").join(run_id)
}
