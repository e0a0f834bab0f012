//! The SFT loop: micro-batches accumulated into optimizer steps, loss averaged over every
//! counted token of the step (as HF with `num_items_in_batch`), torch's step order
//! (backward → clip → AdamW → schedule), events instead of printing.

pub mod backprop;
pub mod checkpoint;
pub mod matmul;
pub mod optim;
pub mod pool;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Tensor;

use crate::config::{Precision, TrainConfig};
use crate::data::{epoch_order, Batch, Encoded};
use crate::model::{causal_lm_loss_sum, Dropout, Opt, PaddingMask, Params};
use optim::{clip_grad_norm, AdamW, Schedule};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("interrupted")]
    Interrupted,
    #[error("diverged at step {step}: {what}")]
    Diverged { step: usize, what: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "training example {index} has no scored token (its target was cut away): it would \
         step the optimizer on nothing"
    )]
    Unscored { index: usize },
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// How a run trains beyond its config: none of this changes results, only what is logged
/// and what survives a crash.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Validation loss every this many optimizer steps, besides each epoch end (0: epoch
    /// ends only).
    pub val_every: usize,
    /// Checkpoints (and resume from the latest one); `None` trains from scratch every time.
    pub checkpoints: Option<checkpoint::CheckpointPolicy>,
}

/// What the loop reports; the executor turns these into store rows and progress.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum TrainEvent {
    Started {
        total_steps: usize,
    },
    /// Continuing from a checkpoint; the events before `step` are replayed after this.
    Resumed {
        step: usize,
        checkpoint: String,
    },
    Step(StepRecord),
    Validation {
        step: usize,
        loss: f64,
    },
    Checkpoint {
        step: usize,
    },
    /// An epoch ended (1-based), after its validation and before its checkpoint: the
    /// weights are the model after `epoch` epochs. Never replayed on resume.
    EpochEnd {
        epoch: usize,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
fn batch_loss_sum(
    model: &Opt,
    b: &Batch,
    dropout: Option<(&Dropout, usize)>,
) -> candle_core::Result<(Tensor, usize)> {
    let ids = Tensor::from_vec(b.ids.clone(), (b.rows, b.len), model.device())?;
    let mask = PaddingMask {
        rows: b.mask.clone(),
    };
    let logits = model.forward_train(&ids, &mask, dropout)?;
    causal_lm_loss_sum(&logits, &b.labels)
}

/// Forward + backward of one accumulated step: returns the mean loss and the gradients
/// by parameter name, summed over micro-batches with each loss divided by the step's
/// total token count. On the CPU the hand-written pass of `backprop`; elsewhere candle's
/// autograd. With `dropout`, in training mode (both paths draw the same masks).
pub fn loss_and_grads(
    model: &Opt,
    params: &[(String, candle_core::Var)],
    micro: &[Batch],
    dropout: Option<Dropout>,
) -> candle_core::Result<(f64, HashMap<String, Tensor>)> {
    if model.compute_dtype() == candle_core::DType::F32 && backprop::applies(model.config(), params)
    {
        return backprop::loss_and_grads(model.config(), params, micro, dropout);
    }
    loss_and_grads_autograd(model, params, micro, dropout)
}

/// `loss_and_grads` through candle's autograd: every device and config.
pub fn loss_and_grads_autograd(
    model: &Opt,
    params: &[(String, candle_core::Var)],
    micro: &[Batch],
    dropout: Option<Dropout>,
) -> candle_core::Result<(f64, HashMap<String, Tensor>)> {
    let total: usize = micro.iter().map(Batch::loss_tokens).sum::<usize>().max(1);
    let mut grads: HashMap<String, Tensor> = HashMap::new();
    let mut loss_sum = 0f64;
    for (i, b) in micro.iter().enumerate() {
        let (sum, _) = batch_loss_sum(model, b, dropout.as_ref().map(|d| (d, i)))?;
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
pub fn evaluate_loss(
    model: &Opt,
    data: &[Encoded],
    batch_size: usize,
) -> candle_core::Result<Option<f64>> {
    let mut sum = 0f64;
    let mut count = 0usize;
    for chunk in data.chunks(batch_size.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let b = Batch::from_examples(&refs);
        let (s, n) = batch_loss_sum(model, &b, None)?;
        sum += s.to_scalar::<f32>()? as f64;
        count += n;
    }
    // No scored token (every completion truncated away): there is no loss, not a loss of 0.
    Ok((count > 0).then(|| sum / count as f64))
}

/// Trains `model` in place on `train`, validating on `val` at each epoch end (and every
/// `val_every` steps). With a checkpoint policy, it first resumes from the latest
/// checkpoint, replaying the events logged before it, and checkpoints at epoch ends,
/// every `every_steps` steps and when cancelled.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &Opt,
    params: &Params,
    train: &[Encoded],
    val: &[Encoded],
    cfg: &TrainConfig,
    opts: &TrainOptions,
    cancel: &AtomicBool,
    emit: &mut dyn FnMut(TrainEvent),
) -> Result<(), TrainError> {
    let bf16;
    let model = match cfg.precision {
        Precision::F32 => model,
        // On the CPU this is slower than f32 (candle widens bf16 matmuls to f32 there), but
        // it computes what a GPU run computes, which is what CPU tests need.
        Precision::Bf16 => {
            bf16 = model.with_compute_dtype(candle_core::DType::BF16);
            &bf16
        }
        Precision::F16 => {
            // Refused rather than silently trained otherwise: a run must be what its
            // config says.
            return Err(TrainError::Unsupported(
                "train.precision = \"f16\" needs dynamic loss scaling, which is not \
                 implemented; use \"bf16\" (same speed on GPUs that have it, no scaling \
                 needed)"
                    .into(),
            ));
        }
    };
    // Every optimizer step must have something to learn from: an example whose target was
    // cut away would step AdamW on momentum alone (data::Encoding drops such examples).
    if let Some(index) = train.iter().position(|e| e.scored() == 0) {
        return Err(TrainError::Unscored { index });
    }
    // The backward pass's buffers are kept between steps only, however training ends.
    let _release = pool::ReleaseOnDrop;
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

    // Everything emitted from here on is kept, so that a resumed run logs it again.
    let mut history: Vec<TrainEvent> = Vec::new();
    let mut step = 0usize;
    if let Some(policy) = &opts.checkpoints {
        if let Some(ck) = checkpoint::restore_latest(&policy.dir, params, &mut opt)? {
            step = ck.state.step;
            emit(TrainEvent::Resumed {
                step,
                checkpoint: ck.path.display().to_string(),
            });
            for ev in &ck.state.history {
                emit(ev.clone());
            }
            history = ck.state.history;
        }
    }
    let save = |step: usize, opt: &AdamW, history: &[TrainEvent]| -> Result<bool, TrainError> {
        let Some(policy) = &opts.checkpoints else {
            return Ok(false);
        };
        checkpoint::save(policy, step, params, opt, history)?;
        Ok(true)
    };

    let micro_size = cfg.batch_size / cfg.grad_accum;
    let mut last_saved = step;
    while step < total {
        let epoch = step / steps_per_epoch;
        let order = epoch_order(train.len(), cfg.seed, epoch);
        let start = (step % steps_per_epoch) * cfg.batch_size;
        let chunk = &order[start..(start + cfg.batch_size).min(train.len())];
        if cancel.load(Ordering::Relaxed) {
            if step > last_saved {
                save(step, &opt, &history)?;
            }
            return Err(TrainError::Interrupted);
        }
        let t0 = Instant::now();
        let micro: Vec<Batch> = chunk
            .chunks(micro_size)
            .map(|c| Batch::from_examples(&c.iter().map(|&i| &train[i]).collect::<Vec<_>>()))
            .collect();
        let tokens: usize = micro.iter().map(Batch::tokens).sum();
        let dropout = Dropout::for_step(cfg.dropout.rate(), cfg.seed, step);
        let (loss, mut grads) = loss_and_grads(model, &named, &micro, dropout)?;
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
        let ev = TrainEvent::Step(StepRecord {
            step,
            loss,
            grad_norm: norm,
            clip_coef: coef,
            lr,
            tokens_per_s: tokens as f64 / dt.max(1e-9),
            step_time_s: dt,
        });
        history.push(ev.clone());
        emit(ev);
        let epoch_end = step.is_multiple_of(steps_per_epoch);
        let val_due = opts.val_every > 0 && step.is_multiple_of(opts.val_every);
        if (epoch_end || val_due) && !val.is_empty() {
            if let Some(loss) = evaluate_loss(model, val, micro_size)? {
                let ev = TrainEvent::Validation { step, loss };
                history.push(ev.clone());
                emit(ev);
            }
        }
        if epoch_end {
            emit(TrainEvent::EpochEnd {
                epoch: step / steps_per_epoch,
            });
        }
        let every = opts.checkpoints.as_ref().map_or(0, |p| p.every_steps);
        if epoch_end || (every > 0 && step.is_multiple_of(every)) {
            if save(step, &opt, &history)? {
                emit(TrainEvent::Checkpoint { step });
            }
            last_saved = step;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{build, OptConfig};
    use candle_core::{DType, Device};

    /// An example whose target was truncated away is refused before any step, and the
    /// weights stay as they were.
    #[test]
    fn an_example_without_a_scored_token_never_steps() {
        let cfg = OptConfig::preset("tiny").unwrap();
        let loaded = build(&cfg, &[], 3, &Device::Cpu).unwrap();
        let before = loaded.params.all()[0]
            .1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let scored = Encoded {
            ids: vec![2, 5, 6, 7],
            labels: vec![-100, -100, 6, 7],
        };
        // Its only label sits on the first position, which the shift never scores.
        let cut = Encoded {
            ids: vec![2, 5, 6],
            labels: vec![2, -100, -100],
        };
        let train_cfg = crate::config::TrainConfig {
            epochs: 1,
            batch_size: 2,
            ..crate::config::RunConfig::default().train
        };
        let err = train(
            &loaded.model,
            &loaded.params,
            &[scored, cut],
            &[],
            &train_cfg,
            &TrainOptions::default(),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, TrainError::Unscored { index: 1 }), "{err}");
        let after = loaded.params.all()[0]
            .1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(before, after);
    }

    /// Mixed precision: the matmuls run in bf16, every gradient still lands on the f32
    /// master weights in f32, and is close to the f32 computation's but not equal to it.
    #[test]
    fn bf16_gradients_reach_the_f32_weights_close_to_f32s() {
        let cfg = OptConfig::preset("tiny").unwrap();
        let loaded = build(&cfg, &[], 3, &Device::Cpu).unwrap();
        let named = loaded.params.all();
        let (rows, len) = (3, 20);
        let ids: Vec<u32> = (0..rows * len).map(|i| 3 + (i as u32 * 11) % 500).collect();
        let b = Batch {
            labels: ids
                .chunks(len)
                .map(|r| r.iter().map(|&i| i as i64).collect())
                .collect(),
            mask: vec![vec![1; len]; rows],
            ids,
            rows,
            len,
        };
        let micro = std::slice::from_ref(&b);
        let (l32, g32) = loss_and_grads(&loaded.model, &named, micro, None).unwrap();
        let bf16 = loaded.model.with_compute_dtype(DType::BF16);
        let (l16, g16) = loss_and_grads(&bf16, &named, micro, None).unwrap();
        assert_ne!(l32, l16);
        assert!((l32 - l16).abs() < 1e-2 * l32, "{l32} vs {l16}");
        let mut differ = 0;
        for (name, var) in &named {
            assert_eq!(var.dtype(), DType::F32);
            let (a, b) = (&g32[name], &g16[name]);
            assert_eq!(b.dtype(), DType::F32, "{name}");
            // Relative error in L2 norm: bf16 keeps 8 bits of mantissa (about 0.4% a
            // rounding), and through two layers of rounded products and sums that
            // cancel, gradients of this random-init model land 2-7% from f32's.
            let norm = |t: &Tensor| {
                let s = t.sqr().unwrap().sum_all().unwrap();
                s.to_scalar::<f32>().unwrap().sqrt()
            };
            let (d, scale) = (norm(&(a - b).unwrap()), norm(a));
            // k_proj.bias's true gradient is zero (softmax ignores a shift shared by
            // every key): only rounding noise is left to compare there.
            if !name.ends_with("k_proj.bias") {
                assert!(d <= 0.15 * scale, "{name}: {d} vs norm {scale}");
            }
            differ += usize::from(d > 0.0);
        }
        assert!(differ > named.len() / 2, "only {differ} gradients changed");
    }
}
