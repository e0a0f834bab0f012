//! AdamW, global-norm clipping and LR schedules, written to do what PyTorch and HF do,
//! operation for operation (candle has no scheduler or clipping, and its AdamW has a
//! single parameter group).

use std::collections::HashMap;

use candle_core::{
    CpuStorage, InplaceOp1, InplaceOp2, InplaceOp3, Layout, Result, Storage, Tensor, Var,
};
use rayon::prelude::*;

use crate::config::{DecayGroups, Scheduler};
use crate::model::ops::{contiguous_f32, contiguous_f32_mut};

/// HF `Trainer.get_decay_parameter_names`: everything but LayerNorm parameters and biases.
pub fn trainer_decays(name: &str) -> bool {
    !(name.contains("bias") || name.contains("layer_norm"))
}

struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// `torch.optim.AdamW` (single-tensor path), with per-parameter decay groups.
pub struct AdamW {
    slots: Vec<Slot>,
    step: u64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    pub fn new(
        params: Vec<(String, Var)>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        groups: DecayGroups,
    ) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                // Two buffers, not two handles on one: the CPU step updates them in place.
                Ok(Slot {
                    decay: match groups {
                        DecayGroups::All => true,
                        DecayGroups::Trainer => trainer_decays(&name),
                    },
                    name,
                    m: var.as_tensor().zeros_like()?,
                    v: var.as_tensor().zeros_like()?,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            slots,
            step: 0,
            beta1,
            beta2,
            eps,
            weight_decay,
        })
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The moment estimates by name (`exp_avg.<param>`, `exp_avg_sq.<param>`), for
    /// checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("exp_avg.{}", s.name), s.m.clone()),
                    (format!("exp_avg_sq.{}", s.name), s.v.clone()),
                ]
            })
            .collect()
    }

    /// Restores the moments and the step count saved by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        // Validate every tensor first: a half-restored optimizer would be silently wrong.
        let mut restored = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let mut pair = Vec::with_capacity(2);
            for (key, slot) in [("exp_avg", &s.m), ("exp_avg_sq", &s.v)] {
                let name = format!("{key}.{}", s.name);
                let t = tensors.get(&name).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state has no tensor {name}"))
                })?;
                if t.shape() != slot.shape() {
                    candle_core::bail!(
                        "optimizer state {name} has shape {:?}, expected {:?}",
                        t.shape(),
                        slot.shape()
                    );
                }
                pair.push(t.to_device(slot.device())?.to_dtype(slot.dtype())?);
            }
            restored.push(pair);
        }
        for (s, mut pair) in self.slots.iter_mut().zip(restored) {
            s.v = pair.pop().expect("two moments");
            s.m = pair.pop().expect("two moments");
        }
        self.step = step;
        Ok(())
    }

    /// Names of the parameters that decay.
    pub fn decayed(&self) -> Vec<&str> {
        self.slots
            .iter()
            .filter(|s| s.decay)
            .map(|s| s.name.as_str())
            .collect()
    }

    /// One update with learning rate `lr`. Gradients are looked up by parameter name; a
    /// parameter without one is an error (a silently frozen weight is a bug).
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for s in &mut self.slots {
            let g = grads
                .get(&s.name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for {}", s.name)))?;
            let p = s.var.as_tensor();
            if p.device().is_cpu() && p.dtype() == candle_core::DType::F32 {
                // One pass per buffer, in place: the same f32 operations as the tensor
                // code below, without its temporaries (for 125M parameters, gigabytes of
                // fresh pages a step).
                let g = g.contiguous()?;
                let (m, v) = (&s.m, &s.v);
                m.inplace_op2(&g, &Lerp((1.0 - self.beta1) as f32))?;
                v.inplace_op2(
                    &g,
                    &SquareAverage(self.beta2 as f32, (1.0 - self.beta2) as f32),
                )?;
                let decay = if s.decay && self.weight_decay != 0.0 {
                    Some((1.0 - lr * self.weight_decay) as f32)
                } else {
                    None
                };
                p.inplace_op3(
                    m,
                    v,
                    &AdamUpdate {
                        decay,
                        inv_bc2_sqrt: (1.0 / bc2_sqrt) as f32,
                        eps: self.eps as f32,
                        neg_step_size: (-step_size) as f32,
                    },
                )?;
                continue;
            }
            let mut p = p.clone();
            if s.decay && self.weight_decay != 0.0 {
                p = (p * (1.0 - lr * self.weight_decay))?;
            }
            // exp_avg.lerp_(grad, 1 - beta1)
            s.m = ((g - &s.m)? * (1.0 - self.beta1))?.add(&s.m)?;
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            s.v = ((&s.v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((s.v.sqrt()? / bc2_sqrt)? + self.eps)?;
            let upd = ((&s.m / denom)? * (-step_size))?;
            s.var.set(&(p + upd)?)?;
        }
        Ok(())
    }
}

/// `exp_avg.lerp_(grad, w)`, as `(g - m) * w + m`.
struct Lerp(f32);

impl InplaceOp2 for Lerp {
    fn name(&self) -> &'static str {
        "adamw-lerp"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        let (m, g) = (contiguous_f32_mut(dst, dl)?, contiguous_f32(g, gl)?);
        m.par_iter_mut()
            .zip(g.par_iter())
            .for_each(|(m, &g)| *m += (g - *m) * self.0);
        Ok(())
    }
}

/// `exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)`.
struct SquareAverage(f32, f32);

impl InplaceOp2 for SquareAverage {
    fn name(&self) -> &'static str {
        "adamw-square-average"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        let (v, g) = (contiguous_f32_mut(dst, dl)?, contiguous_f32(g, gl)?);
        v.par_iter_mut()
            .zip(g.par_iter())
            .for_each(|(v, &g)| *v = *v * self.0 + (g * g) * self.1);
        Ok(())
    }
}

/// `p = p·(1 − lr·wd) − step_size · m / (sqrt(v) / sqrt(bc2) + eps)`.
struct AdamUpdate {
    decay: Option<f32>,
    inv_bc2_sqrt: f32,
    eps: f32,
    neg_step_size: f32,
}

impl InplaceOp3 for AdamUpdate {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        let (p, m, v) = (
            contiguous_f32_mut(dst, dl)?,
            contiguous_f32(m, ml)?,
            contiguous_f32(v, vl)?,
        );
        p.par_iter_mut()
            .zip(m.par_iter().zip(v.par_iter()))
            .for_each(|(p, (&m, &v))| {
                let decayed = match self.decay {
                    Some(f) => *p * f,
                    None => *p,
                };
                let denom = v.sqrt() * self.inv_bc2_sqrt + self.eps;
                *p = decayed + (m / denom) * self.neg_step_size;
            });
        Ok(())
    }
}

/// `torch.nn.utils.clip_grad_norm_`: returns the pre-clip global L2 norm and the
/// coefficient applied (`min(max_norm / (norm + 1e-6), 1)`). Without `max_norm` the norm is
/// still measured and the coefficient is 1.
pub fn clip_grad_norm(
    grads: &mut HashMap<String, Tensor>,
    names: &[String],
    max_norm: Option<f64>,
) -> Result<(f64, f64)> {
    // Per-tensor norms, then the norm of the norms, in f32 as torch does.
    let mut sq = 0f32;
    for n in names {
        if let Some(g) = grads.get(n) {
            let norm = match cpu_sum_of_squares(g) {
                Some(s) => (s as f32).sqrt(),
                None => g.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt(),
            };
            sq += norm * norm;
        }
    }
    let total = sq.sqrt();
    let Some(max) = max_norm else {
        return Ok((total as f64, 1.0));
    };
    let coef = (max as f32 / (total + 1e-6)).min(1.0);
    if coef < 1.0 {
        for g in grads.values_mut() {
            if g.device().is_cpu() && g.dtype() == candle_core::DType::F32 && g.is_contiguous() {
                // In place: the map owns its gradients (a copy was 500 MB a step on
                // opt-125m).
                g.inplace_op1(&Scale(coef))?;
            } else {
                *g = (&*g * coef as f64)?;
            }
        }
    }
    Ok((total as f64, coef as f64))
}

/// `Σ g²` of a contiguous f32 CPU tensor without a temporary: fixed blocks summed in f64
/// and added in block order, so the result does not depend on the thread count.
fn cpu_sum_of_squares(g: &Tensor) -> Option<f64> {
    let (storage, layout) = g.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let x = contiguous_f32(cpu, layout).ok()?;
    let parts: Vec<f64> = x
        .par_chunks(1 << 14)
        .map(|c| c.iter().map(|&v| v as f64 * v as f64).sum())
        .collect();
    Some(parts.iter().sum())
}

/// `g *= coef`.
struct Scale(f32);

impl InplaceOp1 for Scale {
    fn name(&self) -> &'static str {
        "clip-scale"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dl: &Layout) -> Result<()> {
        contiguous_f32_mut(dst, dl)?
            .par_iter_mut()
            .for_each(|g| *g *= self.0);
        Ok(())
    }
}

/// HF's LambdaLR schedules: `lr(step) = base * lambda(step)`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub kind: Scheduler,
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// Warm-up from a ratio as HF's `get_warmup_steps`: `ceil(total * ratio)`.
    pub fn new(kind: Scheduler, base_lr: f64, warmup_ratio: f64, total_steps: usize) -> Self {
        Schedule {
            kind,
            base_lr,
            warmup_steps: (total_steps as f64 * warmup_ratio).ceil() as usize,
            total_steps,
        }
    }

    pub fn lr(&self, step: usize) -> f64 {
        let (s, w, n) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        let factor = if step < self.warmup_steps {
            s / w.max(1.0)
        } else {
            match self.kind {
                Scheduler::Constant => 1.0,
                Scheduler::Linear => ((n - s) / (n - w).max(1.0)).max(0.0),
                Scheduler::Cosine => {
                    let progress = (s - w) / (n - w).max(1.0);
                    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
                }
            }
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_as_hf() {
        let s = Schedule {
            kind: Scheduler::Linear,
            base_lr: 1e-3,
            warmup_steps: 2,
            total_steps: 5,
        };
        let lrs: Vec<f64> = (0..5).map(|i| s.lr(i)).collect();
        let want = [0.0, 5e-4, 1e-3, 1e-3 * 2.0 / 3.0, 1e-3 / 3.0];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() <= 1e-15, "{lrs:?}");
        }
        assert_eq!(
            Schedule::new(Scheduler::Linear, 1.0, 0.1, 95).warmup_steps,
            10
        );
        let c = Schedule::new(Scheduler::Cosine, 1.0, 0.0, 10);
        assert!((c.lr(5) - 0.5).abs() < 1e-12 && c.lr(0) == 1.0);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let dev = candle_core::Device::Cpu;
        let mut g = HashMap::new();
        g.insert("a".to_string(), Tensor::new(&[3f32, 0.0], &dev).unwrap());
        g.insert("b".to_string(), Tensor::new(&[4f32], &dev).unwrap());
        let names = vec!["a".to_string(), "b".to_string()];
        let (norm, coef) = clip_grad_norm(&mut g, &names, Some(1.0)).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((coef - 1.0 / (5.0 + 1e-6)).abs() < 1e-6);
        let b: Vec<f32> = g["b"].to_vec1().unwrap();
        assert!((b[0] - 0.8).abs() < 1e-5);
        let (_, coef) = clip_grad_norm(&mut g, &names, Some(10.0)).unwrap();
        assert_eq!(coef, 1.0);
    }

    #[test]
    fn trainer_groups_skip_biases_and_layer_norms() {
        assert!(trainer_decays("model.decoder.layers.0.fc1.weight"));
        assert!(trainer_decays("model.decoder.embed_tokens.weight"));
        assert!(!trainer_decays("model.decoder.layers.0.fc1.bias"));
        assert!(!trainer_decays(
            "model.decoder.layers.0.self_attn_layer_norm.weight"
        ));
        assert!(!trainer_decays("model.decoder.final_layer_norm.weight"));
    }
}
