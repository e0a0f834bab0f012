//! The SFT loop: micro-batches accumulated into optimizer steps, loss averaged over every
//! counted token of the step (as HF with `num_items_in_batch`), torch's step order
//! (backward → clip → AdamW → schedule), events instead of printing.

pub mod optim;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::config::{Precision, TrainConfig};
use crate::data::{epoch_order, Batch, Encoded};
use crate::model::{causal_lm_loss_sum, Opt, PaddingMask, Params};
use optim::{clip_grad_norm, AdamW, Schedule};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("interrupted")]
    Interrupted,
    #[error("diverged at step {step}: {what}")]
    Diverged { step: usize, what: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// What the loop reports; the executor turns these into store rows and progress.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    Started { total_steps: usize },
    Step(StepRecord),
    Validation { step: usize, loss: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// 1-based optimizer step.
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub clip_coef: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
    pub step_time_s: f64,
}

/// Forward pass of one batch: the summed loss over its counted tokens, and their count.
fn batch_loss_sum(model: &Opt, b: &Batch) -> candle_core::Result<(Tensor, usize)> {
    let ids = Tensor::from_vec(b.ids.clone(), (b.rows, b.len), model.device())?;
    let mask = PaddingMask {
        rows: b.mask.clone(),
    };
    let logits = model.forward(&ids, &mask, None)?;
    causal_lm_loss_sum(&logits, &b.labels)
}

/// Forward + backward of one accumulated step: returns the mean loss and the gradients
/// by parameter name, summed over micro-batches with each loss divided by the step's
/// total token count.
pub fn loss_and_grads(
    model: &Opt,
    params: &[(String, candle_core::Var)],
    micro: &[Batch],
) -> candle_core::Result<(f64, HashMap<String, Tensor>)> {
    let total: usize = micro.iter().map(Batch::loss_tokens).sum::<usize>().max(1);
    let mut grads: HashMap<String, Tensor> = HashMap::new();
    let mut loss_sum = 0f64;
    for b in micro {
        let (sum, _) = batch_loss_sum(model, b)?;
        let loss = (sum / total as f64)?;
        loss_sum += loss.to_scalar::<f32>()? as f64;
        let g = loss.backward()?;
        for (name, var) in params {
            if let Some(t) = g.get(var.as_tensor()) {
                let t = t.detach();
                let acc = match grads.remove(name) {
                    Some(prev) => (prev + t)?,
                    None => t,
                };
                grads.insert(name.clone(), acc);
            }
        }
    }
    for (name, _) in params {
        if !grads.contains_key(name) {
            candle_core::bail!("parameter {name} received no gradient");
        }
    }
    Ok((loss_sum, grads))
}

/// Mean loss over a dataset, no gradients.
pub fn evaluate_loss(model: &Opt, data: &[Encoded], batch_size: usize) -> candle_core::Result<f64> {
    let mut sum = 0f64;
    let mut count = 0usize;
    for chunk in data.chunks(batch_size.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let b = Batch::from_examples(&refs);
        let (s, n) = batch_loss_sum(model, &b)?;
        sum += s.to_scalar::<f32>()? as f64;
        count += n;
    }
    Ok(sum / count.max(1) as f64)
}

/// Trains `model` in place on `train`, validating on `val` at each epoch end.
pub fn train(
    model: &Opt,
    params: &Params,
    train: &[Encoded],
    val: &[Encoded],
    cfg: &TrainConfig,
    cancel: &AtomicBool,
    emit: &mut dyn FnMut(TrainEvent),
) -> Result<(), TrainError> {
    if cfg.precision != Precision::F32 && matches!(model.device(), Device::Cpu) {
        return Err(TrainError::Unsupported(format!(
            "train.precision = {:?} needs a CUDA device; CPU training is f32",
            cfg.precision
        )));
    }
    let named = params.all();
    let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let mut opt = AdamW::new(
        named.clone(),
        cfg.beta1,
        cfg.beta2,
        cfg.eps,
        cfg.weight_decay,
        cfg.decay_groups,
    )?;
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let schedule = Schedule::new(cfg.scheduler, cfg.lr, cfg.warmup_ratio, total);
    emit(TrainEvent::Started { total_steps: total });
    let micro_size = cfg.batch_size / cfg.grad_accum;
    let mut step = 0usize;
    for epoch in 0..cfg.epochs {
        let order = epoch_order(train.len(), cfg.seed, epoch);
        for chunk in order.chunks(cfg.batch_size) {
            if cancel.load(Ordering::Relaxed) {
                return Err(TrainError::Interrupted);
            }
            let t0 = Instant::now();
            let micro: Vec<Batch> = chunk
                .chunks(micro_size)
                .map(|c| Batch::from_examples(&c.iter().map(|&i| &train[i]).collect::<Vec<_>>()))
                .collect();
            let tokens: usize = micro.iter().map(Batch::tokens).sum();
            let (loss, mut grads) = loss_and_grads(model, &named, &micro)?;
            let (norm, coef) = clip_grad_norm(&mut grads, &names, cfg.clip_norm)?;
            if !loss.is_finite() || !norm.is_finite() {
                let what = if !loss.is_finite() {
                    format!("loss is {loss}")
                } else {
                    format!("gradient norm is {norm}")
                };
                return Err(TrainError::Diverged {
                    step: step + 1,
                    what,
                });
            }
            let lr = schedule.lr(step);
            opt.step(&grads, lr)?;
            step += 1;
            let dt = t0.elapsed().as_secs_f64();
            emit(TrainEvent::Step(StepRecord {
                step,
                loss,
                grad_norm: norm,
                clip_coef: coef,
                lr,
                tokens_per_s: tokens as f64 / dt.max(1e-9),
                step_time_s: dt,
            }));
        }
        if !val.is_empty() {
            let loss = evaluate_loss(model, val, micro_size)?;
            emit(TrainEvent::Validation { step, loss });
        }
    }
    Ok(())
}
