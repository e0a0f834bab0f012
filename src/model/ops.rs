//! Fused, differentiable kernels for the two widest tensors of a training step: the
//! attention probabilities (`[B, H, T, T]`) and the vocabulary logits (`[B·T, V]`).
//!
//! Written from primitives, softmax and cross-entropy allocate five or six full-size
//! temporaries each way, and on CPU a step spent more time in page faults and
//! element-wise passes than in matmuls. candle's fused `softmax_last_dim` has no backward
//! pass, so it is wrapped here with one; cross-entropy gets a CPU kernel of its own (other
//! devices keep the composite path).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Softmax over the last dimension: candle's fused kernel forward, `y ⊙ (g − Σ g⊙y)`
/// backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::ops::softmax_last_dim(&x.detach())?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op2(&y, SoftmaxGrad)
}

/// Forward returns a copy of its second argument (the softmax, computed without a
/// graph); backward gives the softmax gradient with respect to the first (the logits).
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        ly: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dot = (grad * res)?.sum_keepdim(D::Minus1)?;
        let gx = (grad.broadcast_sub(&dot)? * res)?;
        Ok((Some(gx), None))
    }
}

/// Per-row cross-entropy `w_i · (logsumexp(x_i) − x_i[t_i])` of `[N, V]` logits: a fused
/// CPU kernel with its own backward; elsewhere the composite log-softmax.
pub fn cross_entropy_rows(logits: &Tensor, targets: &[u32], weights: &[f32]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n || weights.len() != n || targets.iter().any(|&t| t as usize >= v) {
        candle_core::bail!("cross_entropy: targets/weights do not match {n}x{v} logits");
    }
    let logits = logits.to_dtype(DType::F32)?;
    if logits.device().is_cpu() {
        let op = CrossEntropy {
            targets: targets.to_vec(),
            weights: weights.to_vec(),
        };
        return logits.contiguous()?.apply_op1(op);
    }
    let dev = logits.device();
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let t = Tensor::from_slice(targets, (n, 1), dev)?;
    let picked = logp.gather(&t, 1)?.squeeze(1)?;
    let w = Tensor::from_slice(weights, n, dev)?;
    (picked * w)?.neg()
}

struct CrossEntropy {
    targets: Vec<u32>,
    weights: Vec<f32>,
}

/// The f32 data of a contiguous CPU tensor (for CPU kernels).
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("expected f32 storage");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

/// The f32 data of a contiguous CPU tensor, writable (for in-place kernels).
pub(crate) fn contiguous_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("expected f32 storage");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut data[a..b]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

/// `(max, log Σ exp(x − max))` of one row, so `logsumexp = max + lse`.
fn row_lse(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    (max, sum.ln())
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let v = l.dims()[1];
        let out: Vec<f32> = x
            .par_chunks(v)
            .zip(self.targets.par_iter().zip(self.weights.par_iter()))
            .map(|(row, (&t, &w))| {
                if w == 0.0 {
                    return 0.0;
                }
                let (max, lse) = row_lse(row);
                w * (lse - (row[t as usize] - max))
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(l.dims()[0])))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g: Vec<f32> = grad.to_dtype(DType::F32)?.to_vec1()?;
        let op = CrossEntropyGrad {
            targets: self.targets.clone(),
            scale: g.iter().zip(&self.weights).map(|(g, w)| g * w).collect(),
        };
        Ok(Some(x.apply_op1_no_bwd(&op)?))
    }
}

/// `d/dx_ij = s_i · (softmax(x_i)_j − [j = t_i])`, in one pass.
struct CrossEntropyGrad {
    targets: Vec<u32>,
    scale: Vec<f32>,
}

impl CustomOp1 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "cross-entropy-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let v = l.dims()[1];
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .zip(self.targets.par_iter().zip(self.scale.par_iter()))
            .for_each(|((o, row), (&t, &s))| {
                if s == 0.0 {
                    return;
                }
                let (max, lse) = row_lse(row);
                for (o, &x) in o.iter_mut().zip(row) {
                    *o = s * (x - max - lse).exp();
                }
                o[t as usize] -= s;
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// LayerNorm over the last dimension (biased variance) with an affine weight and bias: a
/// fused CPU kernel forward and backward; elsewhere `None`, and the caller composes it.
pub fn layer_norm_cpu(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let d = x.dim(D::Minus1)?;
    let shape = x.shape().clone();
    let x2 = x.contiguous()?.reshape(((), d))?;
    let y = x2.apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNormOp { eps })?;
    Ok(Some(y.reshape(shape)?))
}

struct LayerNormOp {
    eps: f32,
}

/// `(mean, 1 / sqrt(var + eps))` of one row.
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm of each `w.len()`-wide row of `x` into `out`: `(x − mean) · rstd · w + b`.
pub(crate) fn layer_norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(o, row)| {
            let (mean, rstd) = row_stats(row, eps);
            for (((o, &v), &w), &b) in o.iter_mut().zip(row).zip(w).zip(b) {
                *o = (v - mean) * rstd * w + b;
            }
        });
}

/// LayerNorm's backward over rows: `dx = rstd · (g·w − mean(g·w) − x̂ · mean(g·w·x̂))`
/// written to `dx` (or added to it with `accumulate`), and `Σ g·x̂`, `Σ g` added to `dw`
/// and `db`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_backward_rows(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    dx: &mut [f32],
    accumulate: bool,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let d = w.len();
    // Blocks of rows in parallel, each summing its share of dw and db; the partial
    // sums are then added in block order, so the result does not depend on how rayon
    // split the work (exact resume needs bit-identical steps).
    const ROWS: usize = 32;
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(ROWS * d)
        .zip(x.par_chunks(ROWS * d).zip(g.par_chunks(ROWS * d)))
        .map(|(dxb, (xb, gb))| {
            let mut acc = vec![0f32; 2 * d];
            for ((dxr, xr), gr) in dxb.chunks_mut(d).zip(xb.chunks(d)).zip(gb.chunks(d)) {
                let (mean, rstd) = row_stats(xr, eps);
                let mut m1 = 0f32;
                let mut m2 = 0f32;
                for i in 0..d {
                    let xhat = (xr[i] - mean) * rstd;
                    let gw = gr[i] * w[i];
                    m1 += gw;
                    m2 += gw * xhat;
                    acc[i] += gr[i] * xhat;
                    acc[d + i] += gr[i];
                }
                let (m1, m2) = (m1 / d as f32, m2 / d as f32);
                let v = |i: usize| rstd * (gr[i] * w[i] - m1 - (xr[i] - mean) * rstd * m2);
                // Two loops rather than a branch per element, so each vectorizes.
                if accumulate {
                    for (i, dx) in dxr.iter_mut().enumerate() {
                        *dx += v(i);
                    }
                } else {
                    for (i, dx) in dxr.iter_mut().enumerate() {
                        *dx = v(i);
                    }
                }
            }
            acc
        })
        .collect();
    for p in &partials {
        for (a, b) in dw.iter_mut().zip(&p[..d]) {
            *a += b;
        }
        for (a, b) in db.iter_mut().zip(&p[d..]) {
            *a += b;
        }
    }
}

impl candle_core::CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            contiguous_f32(sx, lx)?,
            contiguous_f32(sw, lw)?,
            contiguous_f32(sb, lb)?,
        );
        let mut out = vec![0f32; x.len()];
        layer_norm_rows(x, w, b, self.eps, &mut out);
        Ok((CpuStorage::F32(out), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let n = x.dim(0)?;
        // One kernel gives dx (n rows) and, below it, the weight and bias gradients.
        let all = x.apply_op3_no_bwd(
            &w.contiguous()?,
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        let dx = all.narrow(0, 0, n)?;
        let dw = all.get(n)?;
        let db = all.get(n + 1)?;
        debug_assert_eq!(dw.dim(0)?, d);
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `dx = rstd · (g·w − mean(g·w) − x̂ · mean(g·w·x̂))`, `dw = Σ g·x̂`, `db = Σ g`, in one
/// pass over the rows; the output stacks dx, dw and db as `[n + 2, d]`.
struct LayerNormGrad {
    eps: f32,
}

impl candle_core::CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, g) = (
            contiguous_f32(sx, lx)?,
            contiguous_f32(sw, lw)?,
            contiguous_f32(sg, lg)?,
        );
        let d = w.len();
        let n = x.len() / d;
        let mut out = vec![0f32; (n + 2) * d];
        let (dx, sums) = out.split_at_mut(n * d);
        let (dw, db) = sums.split_at_mut(d);
        layer_norm_backward_rows(x, w, g, self.eps, dx, false, dw, db);
        Ok((CpuStorage::F32(out), Shape::from((n + 2, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn composite_softmax(x: &Tensor) -> Tensor {
        candle_nn::ops::softmax(x, D::Minus1).unwrap()
    }

    #[test]
    fn softmax_matches_the_composite_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 3.0, (2, 3, 7), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 3, 7), &dev).unwrap();
        let fused = softmax_last_dim(x.as_tensor()).unwrap();
        let plain = composite_softmax(x.as_tensor());
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(diff(&fused, &plain) < 1e-6);
        let g1 = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (g1, g2) = (g1.get(&x).unwrap(), g2.get(&x).unwrap());
        assert!(diff(g1, g2) < 1e-6, "{g1} vs {g2}");
        assert!(
            g1.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 1e-3
        );
    }

    #[test]
    fn layer_norm_matches_the_composite_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (3, 4, 16), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 16, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 16, &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (3, 4, 16), &dev).unwrap();
        let composite = || -> Tensor {
            let x = x.as_tensor();
            let mean = x.mean_keepdim(D::Minus1).unwrap();
            let xc = x.broadcast_sub(&mean).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let y = xc
                .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap();
            y.broadcast_mul(w.as_tensor())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap()
        };
        let fused = layer_norm_cpu(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)
            .unwrap()
            .unwrap();
        let plain = composite();
        let maxdiff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(maxdiff(&fused, &plain) < 1e-5);
        let g1 = (fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (plain * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w, &b] {
            let (a, c) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(maxdiff(a, c) < 1e-4, "{a} vs {c}");
        }
    }

    #[test]
    fn cross_entropy_matches_log_softmax_and_its_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 4.0, (5, 11), &dev).unwrap()).unwrap();
        let targets = [3u32, 0, 10, 7, 7];
        let weights = [1f32, 0.0, 1.0, 1.0, 0.5];
        let fused = cross_entropy_rows(x.as_tensor(), &targets, &weights).unwrap();
        let logp = candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1).unwrap();
        let t = Tensor::new(&targets, &dev).unwrap().unsqueeze(1).unwrap();
        let w = Tensor::new(&weights, &dev).unwrap();
        let plain = (logp.gather(&t, 1).unwrap().squeeze(1).unwrap() * &w)
            .unwrap()
            .neg()
            .unwrap();
        let a: Vec<f32> = fused.to_vec1().unwrap();
        let b: Vec<f32> = plain.to_vec1().unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(a[1], 0.0);
        let g1 = fused.sum_all().unwrap().backward().unwrap();
        let g2 = plain.sum_all().unwrap().backward().unwrap();
        let d = (g1.get(&x).unwrap() - g2.get(&x).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "gradient differs by {d}");
    }
}
