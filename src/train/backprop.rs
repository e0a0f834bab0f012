//! OPT's training loss and every parameter's gradient, written out by hand for the CPU.
//!
//! candle's autograd builds a graph each step, allocates a zeroed gradient for every node
//! and adds into it, copies tensors around every head split and merge, and keeps the whole
//! `[tokens, vocab]` logits and their gradient alive at once. On the CPU that overhead cost
//! more than the matmuls themselves. This pass does the same arithmetic (the `gemm` crate
//! that candle's own matmul calls, the LayerNorm and cross-entropy row kernels of
//! `model::ops`) with none of it:
//!
//! - heads are read and written in place through strides, never split into copies;
//! - biases are the initial value of their matmul's output, not a separate pass;
//! - the vocabulary projection runs over row blocks of the scored positions only, so the
//!   logits never exist whole and prompt tokens of a completion-only loss cost nothing;
//! - gradients accumulate straight into one buffer per parameter across micro-batches.
//!
//! It covers the OPT layouts the study uses (pre- and post-LayerNorm, with or without
//! `project_in`/`project_out`, tied or untied head, biases and affine LayerNorms); other
//! configs and other devices keep candle's autograd. The tests below check it against
//! autograd, and the parity tests check it against PyTorch.

use std::collections::HashMap;

use candle_core::{Result, Storage, Tensor, Var};
use rayon::prelude::*;

use super::matmul::{matmul, matmul_serial, SharedMut, View};
use super::pool::{written_zeros, Buf};
use crate::data::Batch;
use crate::model::ops::{contiguous_f32, layer_norm_backward_rows, layer_norm_rows};
use crate::model::{shifted_targets, Dropout, OptConfig, PaddingMask, Site, POSITION_OFFSET};

const LN_EPS: f32 = 1e-5;
/// The vocabulary projection's logits are computed in row blocks of about this many bytes:
/// large enough for efficient matmuls, small enough that opt-125m's logits (200 MB for
/// 1,024 tokens) never exist whole.
const HEAD_BLOCK_BYTES: usize = 64 << 20;

/// Whether this path computes `cfg`'s gradients for parameters on this device.
pub fn applies(cfg: &OptConfig, params: &[(String, Var)]) -> bool {
    cfg.enable_bias
        && cfg.layer_norm_elementwise_affine
        && cfg.activation_function == "relu"
        && !params.is_empty()
        && params.iter().all(|(_, v)| {
            v.as_tensor().device().is_cpu() && v.as_tensor().dtype() == candle_core::DType::F32
        })
}

/// The mean loss over every scored token of the micro-batches, and each parameter's
/// gradient: the same contract as `train::loss_and_grads`.
pub fn loss_and_grads(
    cfg: &OptConfig,
    params: &[(String, Var)],
    micro: &[Batch],
    dropout: Option<Dropout>,
) -> Result<(f64, HashMap<String, Tensor>)> {
    let guards: Vec<_> = params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_tensor().storage_and_layout()))
        .collect();
    let mut weights: HashMap<&str, &[f32]> = HashMap::new();
    for (name, (storage, layout)) in &guards {
        let Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("{name} is not on the CPU");
        };
        weights.insert(name, contiguous_f32(cpu, layout)?);
    }
    let net = Net::new(cfg, &weights)?;
    let mut grads: HashMap<String, Vec<f32>> = weights
        .iter()
        .map(|(n, w)| (n.to_string(), written_zeros(w.len())))
        .collect();
    let total: usize = micro.iter().map(Batch::loss_tokens).sum::<usize>().max(1);
    let mut loss = 0f64;
    for (i, b) in micro.iter().enumerate() {
        let drop = dropout.as_ref().map(|d| (d, i));
        loss += net.step(b, total, drop, &mut Grads(&mut grads))? as f64;
    }
    drop(weights);
    let out = params
        .iter()
        .map(|(name, v)| {
            let g = grads.remove(name).expect("one buffer per parameter");
            Ok((
                name.clone(),
                Tensor::from_vec(g, v.as_tensor().shape(), &candle_core::Device::Cpu)?,
            ))
        })
        .collect::<Result<HashMap<_, _>>>()?;
    drop(guards);
    Ok((loss, out))
}

/// Gradient buffers by parameter name.
struct Grads<'a>(&'a mut HashMap<String, Vec<f32>>);

impl Grads<'_> {
    fn get(&mut self, name: &str) -> &mut [f32] {
        self.0
            .get_mut(name)
            .unwrap_or_else(|| panic!("no gradient buffer for {name}"))
    }

    fn pair(&mut self, a: &str, b: &str) -> [&mut Vec<f32>; 2] {
        let [a, b] = self.0.get_disjoint_mut([a, b]);
        [a.expect("gradient buffer"), b.expect("gradient buffer")]
    }
}

/// A linear layer's weight `[out, in]` and bias `[out]`, with its parameter names.
struct Lin<'a> {
    w: &'a [f32],
    b: Option<&'a [f32]>,
    w_name: String,
    b_name: String,
    inp: usize,
    out: usize,
}

struct Ln<'a> {
    w: &'a [f32],
    b: &'a [f32],
    w_name: String,
    b_name: String,
}

struct Layer<'a> {
    q: Lin<'a>,
    k: Lin<'a>,
    v: Lin<'a>,
    o: Lin<'a>,
    ln1: Ln<'a>,
    fc1: Lin<'a>,
    fc2: Lin<'a>,
    ln2: Ln<'a>,
}

struct Net<'a> {
    cfg: &'a OptConfig,
    embed: &'a [f32],
    embed_name: String,
    positions: &'a [f32],
    positions_name: String,
    project_in: Option<Lin<'a>>,
    project_out: Option<Lin<'a>>,
    layers: Vec<Layer<'a>>,
    final_ln: Option<Ln<'a>>,
    /// The untied head's weight; `None` reads the token embeddings.
    head: Option<(&'a [f32], String)>,
}

/// What a layer's backward pass needs from its forward pass.
struct Saved {
    /// The layer's input.
    x: Buf,
    /// The attention block's input: LayerNorm(x) before the block (pre-LN), else `None` (x).
    attn_in: Option<Buf>,
    q: Buf,
    k: Buf,
    v: Buf,
    /// Softmax probabilities, `[B, heads, T, T]`.
    probs: Buf,
    /// Attention output with heads merged, the input of `out_proj`.
    o: Buf,
    /// x + attention: LN2's input (pre-LN) or LN1's (post-LN).
    res1: Buf,
    /// The feed-forward block's input: LN2(res1) (pre-LN) or LN1(res1) (post-LN).
    ffn_in: Buf,
    /// relu(fc1(ffn_in)).
    r: Buf,
    /// Post-LN only: ffn_in + fc2(r), LN2's input.
    res2: Option<Buf>,
    /// The scaled keep masks of the attention and feed-forward outputs, with dropout.
    drop: Option<[Vec<f32>; 2]>,
}

impl<'a> Net<'a> {
    fn new(cfg: &'a OptConfig, w: &HashMap<&str, &'a [f32]>) -> Result<Self> {
        let get = |name: &str, len: usize| -> Result<&'a [f32]> {
            match w.get(name) {
                Some(s) if s.len() == len => Ok(*s),
                Some(s) => candle_core::bail!("{name} has {} values, expected {len}", s.len()),
                None => candle_core::bail!("parameter {name} is missing"),
            }
        };
        let lin = |prefix: &str, inp: usize, out: usize, bias: bool| -> Result<Lin<'a>> {
            let (w_name, b_name) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
            Ok(Lin {
                w: get(&w_name, inp * out)?,
                b: if bias { Some(get(&b_name, out)?) } else { None },
                w_name,
                b_name,
                inp,
                out,
            })
        };
        let ln = |prefix: &str, d: usize| -> Result<Ln<'a>> {
            let (w_name, b_name) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
            Ok(Ln {
                w: get(&w_name, d)?,
                b: get(&b_name, d)?,
                w_name,
                b_name,
            })
        };
        let (h, p, f) = (cfg.hidden_size, cfg.proj_dim(), cfg.ffn_dim);
        let d = "model.decoder";
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = format!("{d}.layers.{i}");
                Ok(Layer {
                    q: lin(&format!("{l}.self_attn.q_proj"), h, h, true)?,
                    k: lin(&format!("{l}.self_attn.k_proj"), h, h, true)?,
                    v: lin(&format!("{l}.self_attn.v_proj"), h, h, true)?,
                    o: lin(&format!("{l}.self_attn.out_proj"), h, h, true)?,
                    ln1: ln(&format!("{l}.self_attn_layer_norm"), h)?,
                    fc1: lin(&format!("{l}.fc1"), h, f, true)?,
                    fc2: lin(&format!("{l}.fc2"), f, h, true)?,
                    ln2: ln(&format!("{l}.final_layer_norm"), h)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (project_in, project_out) = if p != h {
            (
                Some(lin(&format!("{d}.project_in"), p, h, false)?),
                Some(lin(&format!("{d}.project_out"), h, p, false)?),
            )
        } else {
            (None, None)
        };
        let final_ln = if cfg.do_layer_norm_before && !cfg._remove_final_layer_norm {
            Some(ln(&format!("{d}.final_layer_norm"), h)?)
        } else {
            None
        };
        // As `Opt::new`: an explicit head only when untied and present.
        let head = if !cfg.tie_word_embeddings && w.contains_key("lm_head.weight") {
            Some((
                get("lm_head.weight", cfg.vocab_size * p)?,
                "lm_head.weight".into(),
            ))
        } else {
            None
        };
        let embed_name = format!("{d}.embed_tokens.weight");
        let positions_name = format!("{d}.embed_positions.weight");
        let net = Net {
            cfg,
            embed: get(&embed_name, cfg.vocab_size * p)?,
            embed_name,
            positions: get(
                &positions_name,
                (cfg.max_position_embeddings + POSITION_OFFSET) * h,
            )?,
            positions_name,
            project_in,
            project_out,
            layers,
            final_ln,
            head,
        };
        // Every parameter must be one this pass writes a gradient for.
        let used = net.names();
        if let Some(extra) = w.keys().find(|k| !used.contains(&k.to_string())) {
            candle_core::bail!("parameter {extra} is not part of the OPT graph");
        }
        Ok(net)
    }

    fn names(&self) -> Vec<String> {
        let mut out = vec![self.embed_name.clone(), self.positions_name.clone()];
        let lin = |l: &Lin, out: &mut Vec<String>| {
            out.push(l.w_name.clone());
            if l.b.is_some() {
                out.push(l.b_name.clone());
            }
        };
        let ln = |l: &Ln, out: &mut Vec<String>| {
            out.push(l.w_name.clone());
            out.push(l.b_name.clone());
        };
        for l in &self.layers {
            for x in [&l.q, &l.k, &l.v, &l.o, &l.fc1, &l.fc2] {
                lin(x, &mut out);
            }
            ln(&l.ln1, &mut out);
            ln(&l.ln2, &mut out);
        }
        for x in self.project_in.iter().chain(&self.project_out) {
            lin(x, &mut out);
        }
        if let Some(l) = &self.final_ln {
            ln(l, &mut out);
        }
        if let Some((_, n)) = &self.head {
            out.push(n.clone());
        }
        out
    }

    /// Forward and backward of one micro-batch: adds `∂(loss_sum / total)` to `grads` and
    /// returns `loss_sum / total`.
    fn step(
        &self,
        b: &Batch,
        total: usize,
        dropout: Option<(&Dropout, usize)>,
        grads: &mut Grads,
    ) -> Result<f32> {
        let cfg = self.cfg;
        let (rows, t) = (b.rows, b.len);
        let n = rows * t;
        let (h, p, vocab) = (cfg.hidden_size, cfg.proj_dim(), cfg.vocab_size);
        if b.ids.len() != n || b.mask.len() != rows || b.labels.len() != rows {
            candle_core::bail!("batch is not {rows}x{t}");
        }
        if let Some(&bad) = b.ids.iter().find(|&&i| i as usize >= vocab) {
            candle_core::bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let mask = PaddingMask {
            rows: b.mask.clone(),
        };
        let pos = mask.position_rows(t);
        if let Some(&max) = pos.iter().max() {
            if max as usize >= cfg.max_position_embeddings + POSITION_OFFSET {
                candle_core::bail!(
                    "sequence of {} tokens exceeds max_position_embeddings {}",
                    max as usize - 1,
                    cfg.max_position_embeddings
                );
            }
        }
        let additive = mask.additive_rows(t);

        // Embeddings.
        let mut e0 = Buf::scratch(n * p);
        e0.par_chunks_mut(p)
            .zip(b.ids.par_iter())
            .for_each(|(row, &id)| {
                row.copy_from_slice(&self.embed[id as usize * p..(id as usize + 1) * p]);
            });
        // project_in's backward needs its input; without it, e0 is the first activation.
        let (mut x, e0) = match &self.project_in {
            Some(l) => (linear(l, &e0, n), Some(e0)),
            None => (e0, None),
        };
        x.par_chunks_mut(h)
            .zip(pos.par_iter())
            .for_each(|(row, &q)| {
                let src = &self.positions[q as usize * h..(q as usize + 1) * h];
                for (a, b) in row.iter_mut().zip(src) {
                    *a += b;
                }
            });

        // Decoder layers.
        let mut saved = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let drop = dropout.map(|(d, micro)| {
                [Site::Attention, Site::FeedForward].map(|site| d.mask(micro, i, site, n * h))
            });
            let (out, s) = self.layer_forward(layer, x, rows, t, &additive, drop);
            saved.push(s);
            x = out;
        }
        let ln_in = x;
        let ln_out = self.final_ln.as_ref().map(|ln| layer_norm(&ln_in, ln));
        let proj_in = ln_out.as_ref().unwrap_or(&ln_in);
        let head_in = self.project_out.as_ref().map(|l| linear(l, proj_in, n));
        let xf = head_in.as_ref().unwrap_or(proj_in);

        // Head and loss, then the backward pass from its gradient.
        let (loss, dxf) = self.head_loss_and_grad(xf, &b.labels, total, grads);
        let mut dx = match &self.project_out {
            Some(l) => linear_backward(l, proj_in, &dxf, n, grads),
            None => dxf,
        };
        if let (Some(ln), Some(_)) = (&self.final_ln, &ln_out) {
            let [dw, db] = grads.pair(&ln.w_name, &ln.b_name);
            let g = std::mem::take(&mut dx);
            dx = Buf::scratch(n * h);
            layer_norm_backward_rows(&ln_in, ln.w, &g, LN_EPS, &mut dx, false, dw, db);
        }
        for (layer, s) in self.layers.iter().zip(saved).rev() {
            dx = self.layer_backward(layer, s, dx, rows, t, grads);
        }

        // Embedding gradients.
        scatter_add_rows(grads.get(&self.positions_name), &dx, &pos);
        let de0 = match (&self.project_in, &e0) {
            (Some(l), Some(e0)) => linear_backward(l, e0, &dx, n, grads),
            _ => dx,
        };
        scatter_add_rows(grads.get(&self.embed_name), &de0, &b.ids);
        Ok(loss)
    }

    fn layer_forward(
        &self,
        l: &Layer,
        x: Buf,
        rows: usize,
        t: usize,
        additive: &[f32],
        drop: Option<[Vec<f32>; 2]>,
    ) -> (Buf, Saved) {
        let pre = self.cfg.do_layer_norm_before;
        let n = rows * t;
        let attn_in = pre.then(|| layer_norm(&x, &l.ln1));
        let a_in = attn_in.as_ref().unwrap_or(&x);
        let scale = (self.cfg.head_dim() as f32).powf(-0.5);
        // transformers scales q after adding its bias.
        let mut q = linear(&l.q, a_in, n);
        q.par_iter_mut().for_each(|v| *v *= scale);
        let k = linear(&l.k, a_in, n);
        let v = linear(&l.v, a_in, n);
        let (probs, o) = self.attention(&q, &k, &v, rows, t, additive);
        let res1 = dropout_residual_linear(&l.o, &x, &o, n, drop.as_ref().map(|m| &m[0][..]));
        let ffn_in = layer_norm(&res1, if pre { &l.ln2 } else { &l.ln1 });
        let mut r = linear(&l.fc1, &ffn_in, n);
        r.par_iter_mut().for_each(|v| *v = v.max(0.0));
        let residual = if pre { &res1 } else { &ffn_in };
        let mut out =
            dropout_residual_linear(&l.fc2, residual, &r, n, drop.as_ref().map(|m| &m[1][..]));
        let res2 = if pre {
            None
        } else {
            let y = layer_norm(&out, &l.ln2);
            Some(std::mem::replace(&mut out, y))
        };
        let saved = Saved {
            x,
            attn_in,
            q,
            k,
            v,
            probs,
            o,
            res1,
            ffn_in,
            r,
            res2,
            drop,
        };
        (out, saved)
    }

    /// Returns `dx` for the layer's input, given `dout` for its output.
    fn layer_backward(
        &self,
        l: &Layer,
        s: Saved,
        dout: Buf,
        rows: usize,
        t: usize,
        grads: &mut Grads,
    ) -> Buf {
        let (n, h, f) = (rows * t, self.cfg.hidden_size, self.cfg.ffn_dim);
        let ln_back = |x: &[f32], ln: &Ln, g: &[f32], dx: &mut [f32], acc: bool, gr: &mut Grads| {
            let [dw, db] = gr.pair(&ln.w_name, &ln.b_name);
            layer_norm_backward_rows(x, ln.w, g, LN_EPS, dx, acc, dw, db);
        };
        // The gradient at the feed-forward block's output sum (pre-LN: the layer output;
        // post-LN: through LN2).
        let d2 = match &s.res2 {
            Some(res2) => {
                let mut d = Buf::scratch(n * h);
                ln_back(res2, &l.ln2, &dout, &mut d, false, grads);
                d
            }
            None => dout,
        };
        // relu(fc1) → fc2 → dropout
        let mut dr = linear_backward(
            &l.fc2,
            &s.r,
            &masked(&d2, s.drop.as_ref().map(|m| &m[1][..])),
            n,
            grads,
        );
        dr.par_iter_mut().zip(s.r.par_iter()).for_each(|(g, &r)| {
            if r <= 0.0 {
                *g = 0.0;
            }
        });
        debug_assert_eq!(dr.len(), n * f);
        let dffn_in = linear_backward(&l.fc1, &s.ffn_in, &dr, n, grads);
        drop(dr);
        // The gradient at res1.
        let mut d1 = d2;
        if s.res2.is_some() {
            // post-LN: ffn_in = LN1(res1), and the FFN's residual is ffn_in.
            add(&mut d1, &dffn_in);
            let g = std::mem::take(&mut d1);
            d1 = Buf::scratch(n * h);
            ln_back(&s.res1, &l.ln1, &g, &mut d1, false, grads);
        } else {
            // pre-LN: ffn_in = LN2(res1), and res1 is also the residual.
            ln_back(&s.res1, &l.ln2, &dffn_in, &mut d1, true, grads);
        }
        drop(dffn_in);
        // res1 = x + out_proj(attention(attn_in))
        let d_o = linear_backward(
            &l.o,
            &s.o,
            &masked(&d1, s.drop.as_ref().map(|m| &m[0][..])),
            n,
            grads,
        );
        let (dq, dk, dv) = self.attention_backward(&s, &d_o, rows, t);
        let a_in = s.attn_in.as_ref().unwrap_or(&s.x);
        let mut da = linear_backward(&l.q, a_in, &dq, n, grads);
        linear_backward_into(&l.k, a_in, &dk, n, grads, &mut da, true);
        linear_backward_into(&l.v, a_in, &dv, n, grads, &mut da, true);
        match &s.attn_in {
            // pre-LN: attn_in = LN1(x); x is the residual.
            Some(_) => ln_back(&s.x, &l.ln1, &da, &mut d1, true, grads),
            None => add(&mut d1, &da),
        }
        d1
    }

    /// Scaled-dot-product attention per (row, head), reading q, k, v `[n, hidden]` in
    /// place: the probabilities `[B, heads, T, T]` and the merged output `[n, hidden]`.
    fn attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        rows: usize,
        t: usize,
        additive: &[f32],
    ) -> (Buf, Buf) {
        let (h, heads, hd) = (
            self.cfg.hidden_size,
            self.cfg.num_attention_heads,
            self.cfg.head_dim(),
        );
        let mut probs = Buf::scratch(rows * heads * t * t);
        let mut o = Buf::scratch(rows * t * h);
        let o_ptr = SharedMut(o.as_mut_ptr(), o.len());
        probs.par_chunks_mut(t * t).enumerate().for_each(|(bh, p)| {
            let (bi, hi) = (bh / heads, bh % heads);
            let qb = View::block(q, h, bi * t, t, hi * hd, hd);
            let kb = View::block(k, h, bi * t, t, hi * hd, hd);
            matmul_serial(p, t, t, qb, kb.t(), false, 1.0);
            let mask = &additive[bi * t * t..(bi + 1) * t * t];
            for (row, m) in p.chunks_mut(t).zip(mask.chunks(t)) {
                for (a, &m) in row.iter_mut().zip(m) {
                    *a += m;
                }
                softmax_in_place(row);
            }
            let vb = View::block(v, h, bi * t, t, hi * hd, hd);
            // SAFETY: each (row, head) writes its own columns of its own rows of `o`.
            unsafe {
                o_ptr.matmul_block(h, bi * t, t, hi * hd, hd, View::of(p, t, t), vb, 1.0);
            }
        });
        (probs, o)
    }

    /// The attention core's backward: `dq` (for q before scaling), `dk`, `dv`, each
    /// `[n, hidden]`, from `d_o` for the merged output.
    fn attention_backward(&self, s: &Saved, d_o: &[f32], rows: usize, t: usize) -> (Buf, Buf, Buf) {
        let (h, heads, hd) = (
            self.cfg.hidden_size,
            self.cfg.num_attention_heads,
            self.cfg.head_dim(),
        );
        let n = rows * t;
        let scale = (hd as f32).powf(-0.5);
        let (mut dq, mut dk, mut dv) = (
            Buf::scratch(n * h),
            Buf::scratch(n * h),
            Buf::scratch(n * h),
        );
        let (pq, pk, pv) = (
            SharedMut(dq.as_mut_ptr(), dq.len()),
            SharedMut(dk.as_mut_ptr(), dk.len()),
            SharedMut(dv.as_mut_ptr(), dv.len()),
        );
        s.probs.par_chunks(t * t).enumerate().for_each_init(
            || Buf::scratch(t * t),
            |dp, (bh, p)| {
                let (bi, hi) = (bh / heads, bh % heads);
                let blk = |m: &[f32]| View::block(m, h, bi * t, t, hi * hd, hd);
                let (qb, kb, vb, gb) = (blk(&s.q), blk(&s.k), blk(&s.v), blk(d_o));
                let pm = View::of(p, t, t);
                // SAFETY: each (row, head) writes its own block of dq, dk and dv.
                unsafe {
                    pv.matmul_block(h, bi * t, t, hi * hd, hd, pm.t(), gb, 1.0);
                }
                matmul_serial(dp, t, t, gb, vb.t(), false, 1.0);
                // Softmax backward: ds = p ⊙ (dp − Σ dp⊙p), in place.
                for (d, pr) in dp.chunks_mut(t).zip(p.chunks(t)) {
                    let dot: f32 = d.iter().zip(pr).map(|(a, b)| a * b).sum();
                    for (d, &pr) in d.iter_mut().zip(pr) {
                        *d = pr * (*d - dot);
                    }
                }
                let ds = View::of(dp, t, t);
                // q was scaled after its projection, so its gradient is scaled too.
                unsafe {
                    pq.matmul_block(h, bi * t, t, hi * hd, hd, ds, kb, scale);
                    pk.matmul_block(h, bi * t, t, hi * hd, hd, ds.t(), qb, 1.0);
                }
            },
        );
        (dq, dk, dv)
    }

    /// The vocabulary projection and cross-entropy over the scored positions, in row
    /// blocks: returns `loss_sum / total` and the gradient for the head's input, and adds
    /// the head weight's gradient.
    fn head_loss_and_grad(
        &self,
        xf: &[f32],
        labels: &[Vec<i64>],
        total: usize,
        grads: &mut Grads,
    ) -> (f32, Buf) {
        let (p, vocab) = (self.cfg.proj_dim(), self.cfg.vocab_size);
        let (targets, weights) = shifted_targets(labels, vocab);
        let (head, head_name) = match &self.head {
            Some((w, n)) => (*w, n.as_str()),
            None => (self.embed, self.embed_name.as_str()),
        };
        let scored: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0.0).collect();
        let mut dxf = Buf::zeroed(xf.len());
        let mut loss_rows = Vec::with_capacity(scored.len());
        let scale = 1.0 / total as f32;
        let dhead = grads.get(head_name);
        let block = (HEAD_BLOCK_BYTES / (4 * vocab)).clamp(64, 4096) / 64 * 64;
        let mut x_blk = Buf::scratch(block.min(scored.len()) * p);
        let mut dx_blk = Buf::scratch(x_blk.len());
        let mut logits = Buf::scratch(block.min(scored.len()) * vocab);
        for blk in scored.chunks(block) {
            let m = blk.len();
            for (dst, &i) in x_blk.chunks_mut(p).zip(blk) {
                dst.copy_from_slice(&xf[i * p..(i + 1) * p]);
            }
            let xb = View::of(&x_blk[..m * p], m, p);
            let lg = &mut logits[..m * vocab];
            matmul(lg, m, vocab, xb, View::of(head, vocab, p).t(), false, 1.0);
            // Loss, then the logits become their gradient: scale · (softmax − onehot).
            let losses: Vec<f32> = lg
                .par_chunks_mut(vocab)
                .zip(blk.par_iter())
                .map(|(row, &i)| {
                    let tgt = targets[i] as usize;
                    // One exp per logit: e = exp(x − max) is kept, and both the loss
                    // (logsumexp) and the gradient (e / Σe) are read from it.
                    let picked = row[tgt];
                    let (max, sum) = exp_shifted(row);
                    let loss = weights[i] * (sum.ln() - (picked - max));
                    let s = weights[i] * scale / sum;
                    for x in row.iter_mut() {
                        *x *= s;
                    }
                    row[tgt] -= weights[i] * scale;
                    loss
                })
                .collect();
            loss_rows.extend(losses);
            let gl = View::of(lg, m, vocab);
            matmul(dhead, vocab, p, gl.t(), xb, true, 1.0);
            matmul(
                &mut dx_blk[..m * p],
                m,
                p,
                gl,
                View::of(head, vocab, p),
                false,
                1.0,
            );
            for (src, &i) in dx_blk.chunks(p).zip(blk) {
                dxf[i * p..(i + 1) * p].copy_from_slice(src);
            }
        }
        // Summed in f32 in row order, as the fused kernel's `sum_all` does.
        let sum: f32 = loss_rows.iter().sum();
        (sum / total as f32, dxf)
    }
}

/// `eˣ` for the softmaxes' `x ≤ 0`, within 2 ulp of libm's `expf` (Cephes' polynomial
/// after a Cody–Waite reduction). libm's is a scalar call per value and took a tenth of a
/// step; written out like this, the loops that call it vectorize. Below the smallest
/// normal result it gives 0, as masked attention needs.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer in the low mantissa bits, with plain adds.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ from n's bits: t's low mantissa bits hold n + 2²² (as 0x4B40_0000 + n).
    let pow2 = f32::from_bits((t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127)) << 23);
    if x < -87.0 {
        0.0
    } else {
        y * pow2
    }
}

/// LayerNorm of each row of `x`.
fn layer_norm(x: &[f32], ln: &Ln) -> Buf {
    let mut y = Buf::scratch(x.len());
    layer_norm_rows(x, ln.w, ln.b, LN_EPS, &mut y);
    y
}

/// `residual + dropout(x·Wᵀ + b)` with a scaled keep mask, or the fused
/// `residual_linear` without one.
fn dropout_residual_linear(
    l: &Lin,
    residual: &[f32],
    x: &[f32],
    n: usize,
    mask: Option<&[f32]>,
) -> Buf {
    let Some(mask) = mask else {
        return residual_linear(l, residual, x, n);
    };
    let mut y = linear(l, x, n);
    y.par_iter_mut()
        .zip(mask.par_iter())
        .zip(residual.par_iter())
        .for_each(|((v, &m), &r)| *v = r + *v * m);
    y
}

/// `g ⊙ mask` (a copy), or `g` itself without a mask: the gradient through dropout.
fn masked<'g>(g: &'g [f32], mask: Option<&[f32]>) -> std::borrow::Cow<'g, [f32]> {
    match mask {
        None => std::borrow::Cow::Borrowed(g),
        Some(m) => {
            std::borrow::Cow::Owned(g.par_iter().zip(m.par_iter()).map(|(a, b)| a * b).collect())
        }
    }
}

/// `residual + x·Wᵀ + b`: the residual and the bias are the matmul's starting value.
fn residual_linear(l: &Lin, residual: &[f32], x: &[f32], n: usize) -> Buf {
    let mut y = Buf::copy_of(residual);
    if let Some(b) = l.b {
        add_to_rows(&mut y, b);
    }
    let (xv, wt) = (View::of(x, n, l.inp), View::of(l.w, l.out, l.inp).t());
    matmul(&mut y, n, l.out, xv, wt, true, 1.0);
    y
}

/// `x·Wᵀ + b` for `n` rows.
fn linear(l: &Lin, x: &[f32], n: usize) -> Buf {
    let mut y = Buf::scratch(n * l.out);
    if let Some(b) = l.b {
        y.par_chunks_mut(b.len())
            .for_each(|row| row.copy_from_slice(b));
    }
    matmul(
        &mut y,
        n,
        l.out,
        View::of(x, n, l.inp),
        View::of(l.w, l.out, l.inp).t(),
        l.b.is_some(),
        1.0,
    );
    y
}

/// Adds `dyᵀ·x` and `Σ dy` to the layer's gradients and returns `dx = dy·W`.
fn linear_backward(l: &Lin, x: &[f32], dy: &[f32], n: usize, grads: &mut Grads) -> Buf {
    let mut dx = Buf::scratch(n * l.inp);
    linear_backward_into(l, x, dy, n, grads, &mut dx, false);
    dx
}

/// As `linear_backward`, writing `dx` into `dst`, or adding it there with `acc`.
fn linear_backward_into(
    l: &Lin,
    x: &[f32],
    dy: &[f32],
    n: usize,
    grads: &mut Grads,
    dst: &mut [f32],
    acc: bool,
) {
    linear_grads(l, x, dy, n, grads);
    let (dyv, w) = (View::of(dy, n, l.out), View::of(l.w, l.out, l.inp));
    matmul(dst, n, l.inp, dyv, w, acc, 1.0);
}

fn linear_grads(l: &Lin, x: &[f32], dy: &[f32], n: usize, grads: &mut Grads) {
    let dyv = View::of(dy, n, l.out);
    matmul(
        grads.get(&l.w_name),
        l.out,
        l.inp,
        dyv.t(),
        View::of(x, n, l.inp),
        true,
        1.0,
    );
    if l.b.is_some() {
        add_column_sums(grads.get(&l.b_name), dy);
    }
}

/// `db += Σ_rows dy`, in column blocks so each sum runs over the rows in order.
fn add_column_sums(db: &mut [f32], dy: &[f32]) {
    let d = db.len();
    const COLS: usize = 64;
    db.par_chunks_mut(COLS).enumerate().for_each(|(c, dst)| {
        let (c0, w) = (c * COLS, dst.len());
        for row in dy.chunks(d) {
            for (a, b) in dst.iter_mut().zip(&row[c0..c0 + w]) {
                *a += b;
            }
        }
    });
}

/// `dst[index[r]] += rows[r]` for each row `r`, in row order, so the sums are
/// deterministic (an index may repeat).
fn scatter_add_rows(dst: &mut [f32], rows: &[f32], index: &[u32]) {
    let w = rows.len() / index.len().max(1);
    for (row, &i) in rows.chunks(w).zip(index) {
        let d = &mut dst[i as usize * w..(i as usize + 1) * w];
        for (a, b) in d.iter_mut().zip(row) {
            *a += b;
        }
    }
}

fn add_to_rows(y: &mut [f32], b: &[f32]) {
    y.par_chunks_mut(b.len()).for_each(|row| {
        for (a, b) in row.iter_mut().zip(b) {
            *a += b;
        }
    });
}

fn add(a: &mut [f32], b: &[f32]) {
    a.par_iter_mut()
        .zip(b.par_iter())
        .for_each(|(a, b)| *a += b);
}

fn softmax_in_place(row: &mut [f32]) {
    let (_, sum) = exp_shifted(row);
    for x in row.iter_mut() {
        *x /= sum;
    }
}

/// `x ← exp(x − max x)` over a row; returns the max and the new sum. In separate passes, each with
/// eight independent lanes, so that they vectorize (a running float sum cannot).
fn exp_shifted(row: &mut [f32]) -> (f32, f32) {
    let mut m = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (m, &x) in m.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for x in row.iter_mut() {
        *x = exp(*x - max);
    }
    let mut s = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (s, &x) in s.iter_mut().zip(c) {
            *s += x;
        }
    }
    let sum = chunks.remainder().iter().sum::<f32>() + s.iter().sum::<f32>();
    (max, sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{build, OptConfig};
    use candle_core::Device;

    /// A model with every parameter moved off its init (biases and LayerNorm weights are
    /// 0 and 1 there, which would hide their gradients' mistakes).
    fn model(cfg: &OptConfig) -> crate::model::LoadedModel {
        let loaded = build(cfg, &[], 11, &Device::Cpu).unwrap();
        for (_, v) in loaded.params.all() {
            let t = v.as_tensor();
            let noise = Tensor::randn(0f32, 0.08, t.shape(), &Device::Cpu).unwrap();
            v.set(&(t + noise).unwrap()).unwrap();
        }
        loaded
    }

    /// Two micro-batches: right- and left-padded rows with prompt tokens masked out of
    /// the loss, then full rows scored everywhere.
    fn batches(vocab: u32) -> Vec<Batch> {
        let id = |i: usize| 3 + (i as u32 * 37) % (vocab - 3);
        let padded = Batch {
            ids: (0..14)
                .map(|i| if i == 5 || i == 6 || i == 7 { 1 } else { id(i) })
                .collect(),
            mask: vec![vec![1, 1, 1, 1, 1, 0, 0], vec![0, 1, 1, 1, 1, 1, 1]],
            labels: vec![
                vec![
                    -100,
                    -100,
                    id(2) as i64,
                    id(3) as i64,
                    id(4) as i64,
                    -100,
                    -100,
                ],
                vec![
                    -100,
                    -100,
                    -100,
                    id(10) as i64,
                    -100,
                    id(12) as i64,
                    id(13) as i64,
                ],
            ],
            rows: 2,
            len: 7,
        };
        let ids: Vec<u32> = (0..15).map(|i| id(100 + i)).collect();
        let full = Batch {
            labels: ids
                .chunks(5)
                .map(|r| r.iter().map(|&i| i as i64).collect())
                .collect(),
            mask: vec![vec![1; 5]; 3],
            ids,
            rows: 3,
            len: 5,
        };
        vec![padded, full]
    }

    fn agrees_with_autograd(cfg: OptConfig, dropout: Option<Dropout>) {
        let loaded = model(&cfg);
        let named = loaded.params.all();
        let micro = batches(cfg.vocab_size as u32);
        assert!(applies(&cfg, &named));
        let (loss, grads) = loss_and_grads(&cfg, &named, &micro, dropout).unwrap();
        let (want_loss, want) =
            crate::train::loss_and_grads_autograd(&loaded.model, &named, &micro, dropout).unwrap();
        assert!(
            (loss - want_loss).abs() < 2e-5,
            "loss {loss} vs {want_loss}"
        );
        assert_eq!(grads.len(), want.len());
        for (name, w) in &want {
            let g = &grads[name];
            assert_eq!(g.shape(), w.shape(), "{name}");
            let scale = w
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(scale > 0.0, "{name} has no gradient to compare");
            let diff = (g - w)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff <= 1e-6 + 1e-4 * scale,
                "{name}: max diff {diff}, scale {scale}"
            );
        }
    }

    /// A 2-layer OPT, hidden 32, with the given vocabulary, embedding width and layout.
    fn config(vocab: usize, proj: usize, ffn: usize, pre_norm: bool) -> OptConfig {
        OptConfig {
            vocab_size: vocab,
            hidden_size: 32,
            word_embed_proj_dim: Some(proj),
            ffn_dim: ffn,
            do_layer_norm_before: pre_norm,
            ..OptConfig::preset("tiny").unwrap()
        }
    }

    #[test]
    fn pre_layer_norm_gradients_match_autograd() {
        agrees_with_autograd(config(97, 32, 48, true), None);
    }

    /// With dropout both paths draw the same masks, so they still agree; the loss moves
    /// away from the dropout-free one, and a rate of 0 is exactly no dropout.
    #[test]
    fn dropout_gradients_match_autograd_in_both_layouts() {
        let d = Dropout::for_step(0.3, 11, 5);
        agrees_with_autograd(config(97, 32, 48, true), d);
        agrees_with_autograd(config(89, 16, 40, false), d);

        let cfg = config(97, 32, 48, true);
        let loaded = model(&cfg);
        let named = loaded.params.all();
        let micro = batches(cfg.vocab_size as u32);
        let (plain, _) = loss_and_grads(&cfg, &named, &micro, None).unwrap();
        let (dropped, _) = loss_and_grads(&cfg, &named, &micro, d).unwrap();
        assert_ne!(plain, dropped);
        // Inverted dropout keeps activations' expected scale: at this init the loss moves
        // by a few percent, not by orders of magnitude.
        assert!(
            (dropped - plain).abs() < 0.05 * plain,
            "{plain} vs {dropped}"
        );
        // Another step draws other masks.
        let (other, _) =
            loss_and_grads(&cfg, &named, &micro, Dropout::for_step(0.3, 11, 6)).unwrap();
        assert_ne!(other, dropped);
        assert_eq!(Dropout::for_step(0.0, 11, 5), None);
    }

    #[test]
    fn post_layer_norm_with_projections_matches_autograd() {
        agrees_with_autograd(config(89, 16, 40, false), None);
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_where_softmax_uses_it() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let (got, want) = (exp(x), x.exp());
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
            worst = worst.max(ulp);
            x += 0.000_731;
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1e30), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
    }

    #[test]
    fn a_parameter_outside_the_graph_is_refused() {
        let cfg = OptConfig::preset("tiny").unwrap();
        let loaded = build(&cfg, &[], 1, &Device::Cpu).unwrap();
        let mut named = loaded.params.all();
        let stray =
            Var::from_tensor(&Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap())
                .unwrap();
        named.push(("stray.weight".into(), stray));
        let err = loss_and_grads(&cfg, &named, &batches(cfg.vocab_size as u32), None).unwrap_err();
        assert!(err.to_string().contains("stray.weight"), "{err}");
    }
}

#[cfg(test)]
mod determinism {
    use super::*;
    use crate::model::{build, OptConfig};
    use candle_core::Device;

    /// Buffers come back from the pool holding an earlier step's values; nothing may
    /// read them, or a resumed run would not repeat an uninterrupted one.
    #[test]
    fn repeated_steps_are_bit_identical() {
        let cfg = OptConfig::preset("tiny").unwrap();
        let loaded = build(&cfg, &[], 5, &Device::Cpu).unwrap();
        let named = loaded.params.all();
        let (rows, len) = (6, 48);
        let ids: Vec<u32> = (0..rows * len).map(|i| 3 + (i as u32 * 7) % 400).collect();
        let mut mask = vec![vec![1u8; len]; rows];
        mask[1][40..].fill(0);
        let labels = ids
            .chunks(len)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(j, &i)| if j < 10 { -100 } else { i as i64 })
                    .collect()
            })
            .collect();
        let b = Batch {
            ids,
            mask,
            labels,
            rows,
            len,
        };
        let run = || {
            let (loss, g) = loss_and_grads(&cfg, &named, std::slice::from_ref(&b), None).unwrap();
            let mut v: Vec<(String, Vec<f32>)> = g
                .into_iter()
                .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            (loss, v)
        };
        let first = run();
        for _ in 0..3 {
            let again = run();
            assert_eq!(first.0.to_bits(), again.0.to_bits());
            for ((n, a), (_, b)) in first.1.iter().zip(&again.1) {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{n} differs between identical steps");
            }
        }
    }
}
