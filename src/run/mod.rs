//! One run's stages: [`train`] (weights), [`generate`] (predictions: test steps and
//! ToolBench episodes) and [`judge`] (a verdict set per evaluator), each run only when the
//! executor found its identity not done. A stage emits events and returns; the executor
//! decides what they mean for the store and the screen.

mod answer;
mod episode;
mod generate;
mod judge;
pub mod provenance;
pub mod rescore;
mod train;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;

use crate::config::DeviceSpec;
use crate::data;
use crate::eval::Prediction;
use crate::exec::{Event, RunContext};
use crate::model;
use crate::store::Stage;
use crate::train::TrainError;

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
    /// A tool backend could not answer episodes' calls.
    #[error("{0}")]
    Backend(String),
    /// The endpoint of an `openai:<model>` could not answer.
    #[error("{0}")]
    Endpoint(String),
}

impl From<candle_core::Error> for RunError {
    fn from(e: candle_core::Error) -> Self {
        RunError::Train(TrainError::Candle(e))
    }
}

/// The device a run computes on. `auto` is the first GPU when ablate was built with CUDA
/// and one is present, else the CPU (the plan says which before anything runs).
pub fn device_for(spec: DeviceSpec) -> Result<Device, RunError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| {
            RunError::Device(format!(
                "model.device = \"cuda:{n}\": {e} (was ablate built with --features cuda?)"
            ))
        }),
    }
}

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> RunError + '_ {
    move |e| RunError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Where a run's own files live (its resolved config and stages), beside the database.
pub fn run_dir(results: &Path, run_id: &str) -> PathBuf {
    results.join("runs").join(run_id)
}

/// The folder of the model a run evaluates: the training's final model, or its checkpoint
/// after the run's epochs when the training is a longer run's.
pub fn model_dir(training_dir: &Path, checkpoint_epoch: Option<usize>) -> PathBuf {
    match checkpoint_epoch {
        Some(e) => training_dir.join("epochs").join(e.to_string()),
        None => training_dir.join("model"),
    }
}

/// `runs/<id>/training` points at the run's training folder (shared trainings live in
/// `trainings/<id>/`), so a run's model and checkpoints are found from the run.
fn link_training(run_dir: &Path, training_dir: &str) {
    let link = run_dir.join("training");
    if Path::new(training_dir).starts_with("runs") {
        return; // the training lives in a run's folder already (migrated, or Slurm)
    }
    let target = Path::new("../..").join(training_dir);
    if std::fs::read_link(&link).is_ok_and(|t| t == target) {
        return;
    }
    let _ = std::fs::remove_file(&link);
    #[cfg(unix)]
    let _ = std::os::unix::fs::symlink(&target, &link);
}

/// Runs the stages the executor found not done, in order: train, generate, judge. Each
/// stage that completes is reported at once (`StageFinished`), so a crash in a later stage
/// keeps it.
pub fn run_stages(ctx: &RunContext) -> Result<(), RunError> {
    let (cfg, dir) = (ctx.config, ctx.dir);
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cfg_path = dir.join("run_config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(cfg).expect("json"))
        .map_err(io(&cfg_path))?;
    let stages_path = dir.join("stages.json");
    std::fs::write(
        &stages_path,
        serde_json::to_string_pretty(ctx.stages).expect("json"),
    )
    .map_err(io(&stages_path))?;
    // An endpoint's model is neither trained nor loaded here.
    let endpoint = cfg.model.endpoint_model();
    // Judging needs no model: a re-score runs wherever ablate runs.
    let device = if endpoint.is_none() && (ctx.needs.train || ctx.needs.generate) {
        device_for(cfg.model.device)?
    } else {
        Device::Cpu
    };
    let prov = provenance::Provenance::current(&device);
    let finished = |stage: Stage, id: &str, t0: Instant| {
        (ctx.emit)(Event::StageFinished {
            run_id: ctx.run_id.to_string(),
            stage,
            id: id.to_string(),
            duration_s: t0.elapsed().as_secs_f64(),
            provenance: prov.to_json(),
        })
    };

    // The training split is read only to train; the evaluation set is the same either way.
    let spec = cfg.data.split_spec()?;
    let splits = (ctx.needs.train && endpoint.is_none())
        .then(|| data::splits(&spec))
        .transpose()?;
    let eval_only;
    let eval: &[data::Example] = match &splits {
        Some(s) => &s.eval,
        None => {
            eval_only = data::eval_examples(&spec)?;
            &eval_only
        }
    };
    let training_dir = ctx.results.join(&ctx.needs.training_dir);
    link_training(dir, &ctx.needs.training_dir);
    let mut trained = None;
    if let Some(splits) = &splits {
        let t0 = Instant::now();
        trained = Some(train::run(ctx, splits, &training_dir, &device)?);
        finished(Stage::Train, &ctx.stages.training, t0);
    } else if ctx.needs.train {
        // An endpoint's model: its training stage is done with nothing to do (the config
        // refuses train.epochs > 0 for it).
        finished(Stage::Train, &ctx.stages.training, Instant::now());
    }
    let predictions: Vec<Prediction> = if ctx.needs.generate {
        let t0 = Instant::now();
        let out = match endpoint {
            Some(name) => generate::run(ctx, &mut answer::Endpoint::new(cfg, name), eval)?,
            None => {
                // The model just trained when it is the run's own; else the stored one.
                let loaded = match trained {
                    Some(m) if ctx.stages.checkpoint_epoch.is_none() => m,
                    _ => train::load(
                        &model_dir(&training_dir, ctx.stages.checkpoint_epoch),
                        &device,
                    )?,
                };
                generate::run(ctx, &mut answer::Local { m: &loaded, cfg }, eval)?
            }
        };
        finished(Stage::Generate, &ctx.stages.generation, t0);
        out
    } else {
        ctx.predictions.to_vec()
    };
    for set in &ctx.needs.judge {
        let t0 = Instant::now();
        judge::run(ctx, set, &predictions, eval)?;
        finished(Stage::Judge, &set.id, t0);
    }
    Ok(())
}

/// [`run_stages`] as the executor's runner: errors become the run's status.
pub fn runner(ctx: &RunContext) -> Result<(), crate::exec::RunFailure> {
    use crate::exec::RunFailure;
    run_stages(ctx).map_err(|e| match e {
        RunError::Train(TrainError::Interrupted) => RunFailure::Interrupted,
        RunError::Train(e @ TrainError::Diverged { .. }) => RunFailure::Diverged(e.to_string()),
        e => RunFailure::Failed(e.to_string()),
    })
}
