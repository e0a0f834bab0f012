//! Training checkpoints: everything a run needs to continue as if it had never stopped.
//!
//! A checkpoint is a folder `step-NNNNNNNN/` holding the parameters (`model.safetensors`),
//! AdamW's moments (`optimizer.safetensors`) and `state.json` (step count and the metric
//! history so far, so a resumed run re-logs exactly what the first attempt logged). There
//! is no RNG state to save: the data order is a pure function of (seed, epoch) and
//! training runs without dropout. A folder is written under a temporary name and renamed
//! into place, so a crash mid-write leaves the previous checkpoint as the latest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use super::TrainEvent;
use crate::model::Params;

/// Bumped when the layout changes; an older checkpoint is ignored, not misread.
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: {source}")]
    Tensor {
        path: String,
        source: candle_core::Error,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |e| CheckpointError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn tensor_err(path: &Path) -> impl Fn(candle_core::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Tensor {
        path: path.display().to_string(),
        source,
    }
}

/// Where checkpoints go and how many to keep.
#[derive(Debug, Clone)]
pub struct CheckpointPolicy {
    pub dir: PathBuf,
    /// Also checkpoint every this many optimizer steps (0: at epoch ends only).
    pub every_steps: usize,
    /// Older checkpoints beyond this many are deleted (at least one is kept).
    pub keep_last: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub format: u32,
    /// Optimizer steps taken.
    pub step: usize,
    /// Every event the run has emitted up to `step`, replayed on resume.
    pub history: Vec<TrainEvent>,
}

/// A checkpoint read back: its state and the folder it came from.
pub struct Loaded {
    pub state: TrainState,
    pub path: PathBuf,
}

fn step_dir(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step:08}"))
}

/// Writes a checkpoint for `step` and prunes older ones beyond `keep_last`.
pub fn save(
    policy: &CheckpointPolicy,
    step: usize,
    params: &Params,
    opt: &AdamW,
    history: &[TrainEvent],
) -> Result<PathBuf, CheckpointError> {
    let dir = &policy.dir;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = dir.join(format!(".tmp-step-{step:08}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let model = tmp.join("model.safetensors");
    params.save(&model).map_err(tensor_err(&model))?;
    let optim = tmp.join("optimizer.safetensors");
    let state: HashMap<String, candle_core::Tensor> = opt.state_tensors().into_iter().collect();
    candle_core::safetensors::save(&state, &optim).map_err(tensor_err(&optim))?;
    let st = TrainState {
        format: FORMAT,
        step,
        history: history.to_vec(),
    };
    let json = tmp.join("state.json");
    std::fs::write(&json, serde_json::to_vec(&st).expect("state serializes"))
        .map_err(io_err(&json))?;
    for f in [&model, &optim, &json] {
        std::fs::File::open(f)
            .and_then(|h| h.sync_all())
            .map_err(io_err(f))?;
    }
    let dest = step_dir(dir, step);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io_err(&dest))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    prune(dir, policy.keep_last.max(1))?;
    Ok(dest)
}

/// Complete checkpoints in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<(usize, PathBuf)> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let n = p
                .file_name()?
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            p.join("state.json").is_file().then_some((n, p))
        })
        .collect();
    out.sort();
    out
}

fn prune(dir: &Path, keep: usize) -> Result<(), CheckpointError> {
    let all = list(dir);
    for (_, p) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(p).map_err(io_err(p))?;
    }
    // Leftovers of a write that crashed.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let ours = format!("-{}", std::process::id());
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-step-") && !name.ends_with(&ours) {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
    Ok(())
}

/// The newest checkpoint in `dir` that reads back, if any; its tensors are loaded into
/// `params` and `opt`. A checkpoint that does not read (an older format, a truncated
/// file) is skipped in favour of the one before it.
pub fn restore_latest(
    dir: &Path,
    params: &Params,
    opt: &mut AdamW,
) -> Result<Option<Loaded>, CheckpointError> {
    for (_, path) in list(dir).into_iter().rev() {
        match restore(&path, params, opt) {
            Ok(state) => return Ok(Some(Loaded { state, path })),
            Err(e) => tracing::warn!("skipping checkpoint: {e}"),
        }
    }
    Ok(None)
}

fn restore(path: &Path, params: &Params, opt: &mut AdamW) -> Result<TrainState, CheckpointError> {
    let json = path.join("state.json");
    let text = std::fs::read(&json).map_err(io_err(&json))?;
    let st: TrainState = serde_json::from_slice(&text).map_err(|e| CheckpointError::Io {
        path: json.display().to_string(),
        message: e.to_string(),
    })?;
    if st.format != FORMAT {
        return Err(CheckpointError::Io {
            path: json.display().to_string(),
            message: format!(
                "checkpoint format {} (this ablate reads {FORMAT})",
                st.format
            ),
        });
    }
    let optim = path.join("optimizer.safetensors");
    let device = params
        .all()
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let moments = candle_core::safetensors::load(&optim, &device).map_err(tensor_err(&optim))?;
    let model = path.join("model.safetensors");
    let weights = candle_core::safetensors::load(&model, &device).map_err(tensor_err(&model))?;
    // Check both files before changing anything, so a bad checkpoint leaves the run as
    // it was and the one before it can be tried.
    params.check_values(&weights).map_err(tensor_err(&model))?;
    opt.load_state(&moments, st.step as u64)
        .map_err(tensor_err(&optim))?;
    params.set_values(&weights).map_err(tensor_err(&model))?;
    Ok(st)
}
