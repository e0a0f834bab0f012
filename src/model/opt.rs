//! OPT (`OPTForCausalLM`) in candle, numerically equal to Hugging Face transformers.
//!
//! Every op here records a gradient: candle's fused `softmax_last_dim` and `layer_norm`
//! do not, so softmax, LayerNorm and the loss use the kernels of `ops` (fused, with a
//! backward pass of their own) or, off the CPU, differentiable primitives.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// HF `OPTConfig` (the fields that shape the network). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub ffn_dim: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "yes")]
    pub do_layer_norm_before: bool,
    #[serde(default = "yes")]
    pub enable_bias: bool,
    #[serde(default = "yes")]
    pub layer_norm_elementwise_affine: bool,
    #[serde(default = "relu")]
    pub activation_function: String,
    #[serde(default = "one")]
    pub pad_token_id: u32,
    #[serde(default = "two")]
    pub bos_token_id: u32,
    #[serde(default = "two")]
    pub eos_token_id: u32,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub _remove_final_layer_norm: bool,
    /// Residual dropout in training (see `dropout.rs`); HF's default and OPT's is 0.1.
    #[serde(default)]
    pub dropout: f64,
    /// Dropout of the attention probabilities; not implemented, so a checkpoint that sets
    /// it is refused rather than trained without it.
    #[serde(default)]
    pub attention_dropout: f64,
}

fn yes() -> bool {
    true
}
fn relu() -> String {
    "relu".into()
}
fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}

/// OPT's learned positions are offset by 2 rows.
pub const POSITION_OFFSET: usize = 2;
/// The additive mask value for disallowed pairs: finite, as in transformers, so that a
/// fully masked (padding) row gives uniform attention instead of NaN.
const MASK_MIN: f32 = f32::MIN;

impl OptConfig {
    pub fn proj_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Shapes of the study's models and small test configs. `vocab_size` of `tiny` and
    /// `small` is usually replaced by the tokenizer's.
    pub fn preset(name: &str) -> Option<OptConfig> {
        let mk = |vocab, hidden, proj, layers, heads, ffn, max_pos, pre| OptConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            word_embed_proj_dim: Some(proj),
            num_hidden_layers: layers,
            num_attention_heads: heads,
            ffn_dim: ffn,
            max_position_embeddings: max_pos,
            do_layer_norm_before: pre,
            enable_bias: true,
            layer_norm_elementwise_affine: true,
            activation_function: "relu".into(),
            pad_token_id: 1,
            bos_token_id: 2,
            eos_token_id: 2,
            tie_word_embeddings: true,
            _remove_final_layer_norm: false,
            // Presets are shapes for random-init runs: they carry no dropout of their own
            // (`train.dropout` sets one).
            dropout: 0.0,
            attention_dropout: 0.0,
        };
        Some(match name {
            "tiny" => mk(512, 128, 128, 2, 4, 512, 256, true),
            "small" => mk(8192, 256, 256, 4, 4, 1024, 512, true),
            "opt-125m" => mk(50272, 768, 768, 12, 12, 3072, 2048, true),
            "opt-350m" => mk(50272, 1024, 512, 24, 16, 4096, 2048, false),
            "opt-1.3b" => mk(50272, 2048, 2048, 24, 32, 8192, 2048, true),
            _ => return None,
        })
    }

    pub const PRESETS: &'static [&'static str] =
        &["tiny", "small", "opt-125m", "opt-350m", "opt-1.3b"];

    /// config.json in HF layout, loadable by transformers.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        let o = v.as_object_mut().expect("object");
        o.insert("model_type".into(), "opt".into());
        o.insert(
            "architectures".into(),
            serde_json::json!(["OPTForCausalLM"]),
        );
        o.insert("word_embed_proj_dim".into(), self.proj_dim().into());
        o.insert("torch_dtype".into(), "float32".into());
        o.insert("layerdrop".into(), 0.0.into());
        v
    }
}

/// LayerNorm over the last dim (biased variance, eps 1e-5): the fused kernel on CPU,
/// differentiable primitives elsewhere or without an affine transform.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    pub fn new(size: usize, affine: bool, vb: VarBuilder) -> Result<Self> {
        let (weight, bias) = if affine {
            (
                Some(vb.get_with_hints(size, "weight", Init::Const(1.0))?),
                Some(vb.get_with_hints(size, "bias", Init::Const(0.0))?),
            )
        } else {
            (None, None)
        };
        Ok(LayerNorm {
            weight,
            bias,
            eps: 1e-5,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some(w), Some(b)) = (&self.weight, &self.bias) {
            if let Some(y) = super::ops::layer_norm_cpu(x, w, b, self.eps as f32)? {
                return Ok(y);
            }
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let mut y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        if let Some(w) = &self.weight {
            y = y.broadcast_mul(w)?;
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }
}

/// HF's init: weights N(0, 0.02), biases 0.
fn linear(inp: usize, out: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints(
        (out, inp),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
    )?;
    let b = if bias {
        Some(vb.get_with_hints(out, "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

/// Key/value cache of one layer: `[B, H, T, head_dim]` each.
pub type LayerCache = Option<(Tensor, Tensor)>;

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
    /// The dtype of the matmuls (see `Opt::with_compute_dtype`).
    compute: DType,
}

impl Attention {
    fn new(cfg: &OptConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let b = cfg.enable_bias;
        Ok(Attention {
            q_proj: linear(h, h, b, vb.pp("q_proj"))?,
            k_proj: linear(h, h, b, vb.pp("k_proj"))?,
            v_proj: linear(h, h, b, vb.pp("v_proj"))?,
            out_proj: linear(h, h, b, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            scale: (cfg.head_dim() as f64).powf(-0.5),
            compute: DType::F32,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor| -> Result<Tensor> {
            y.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        // transformers scales q after adding its bias.
        let dt = self.compute;
        let q = split((project(&self.q_proj, x, dt)? * self.scale)?)?;
        let mut k = split(project(&self.k_proj, x, dt)?)?;
        let mut v = split(project(&self.v_proj, x, dt)?)?;
        if let Some(cache) = cache {
            if let Some((pk, pv)) = cache.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let scores = matmul_in(&q, &k.t()?, dt)?.broadcast_add(mask)?;
        let probs = super::ops::softmax_last_dim(&scores)?;
        let y = matmul_in(&probs, &v, dt)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?;
        project(&self.out_proj, &y, dt)
    }
}

/// `x·Wᵀ + b` with the product in `dt`, as torch's autocast: for bf16, inputs and weight
/// rounded to bf16, the product back in f32, the bias added in f32. Gradients flow back
/// through the casts to the f32 weights (the master copy).
fn project(l: &Linear, x: &Tensor, dt: DType) -> Result<Tensor> {
    if dt == DType::F32 {
        return l.forward(x);
    }
    let w = l.weight().to_dtype(dt)?;
    let y = x
        .to_dtype(dt)?
        .broadcast_matmul(&w.t()?)?
        .to_dtype(DType::F32)?;
    match l.bias() {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// `a·b` with the product in `dt` (see `project`).
fn matmul_in(a: &Tensor, b: &Tensor, dt: DType) -> Result<Tensor> {
    if dt == DType::F32 {
        return a.matmul(b);
    }
    a.to_dtype(dt)?
        .matmul(&b.to_dtype(dt)?)?
        .to_dtype(DType::F32)
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_layer_norm: LayerNorm,
    pre_norm: bool,
}

impl DecoderLayer {
    fn new(cfg: &OptConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let affine = cfg.layer_norm_elementwise_affine;
        Ok(DecoderLayer {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            self_attn_layer_norm: LayerNorm::new(h, affine, vb.pp("self_attn_layer_norm"))?,
            fc1: linear(h, cfg.ffn_dim, cfg.enable_bias, vb.pp("fc1"))?,
            fc2: linear(cfg.ffn_dim, h, cfg.enable_bias, vb.pp("fc2"))?,
            final_layer_norm: LayerNorm::new(h, affine, vb.pp("final_layer_norm"))?,
            pre_norm: cfg.do_layer_norm_before,
        })
    }

    /// `drop`: the scaled keep masks of the attention and feed-forward outputs, in
    /// training with dropout.
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        cache: Option<&mut LayerCache>,
        drop: Option<&[Tensor; 2]>,
    ) -> Result<Tensor> {
        let masked = |y: Tensor, site: usize| match drop {
            Some(m) => y * &m[site],
            None => Ok(y),
        };
        let dt = self.self_attn.compute;
        if self.pre_norm {
            let a = self
                .self_attn
                .forward(&self.self_attn_layer_norm.forward(x)?, mask, cache)?;
            let h = (x + masked(a, 0)?)?;
            let f = project(
                &self.fc2,
                &project(&self.fc1, &self.final_layer_norm.forward(&h)?, dt)?.relu()?,
                dt,
            )?;
            h + masked(f, 1)?
        } else {
            let a = self.self_attn.forward(x, mask, cache)?;
            let h = self.self_attn_layer_norm.forward(&(x + masked(a, 0)?)?)?;
            let f = project(&self.fc2, &project(&self.fc1, &h, dt)?.relu()?, dt)?;
            self.final_layer_norm.forward(&(h + masked(f, 1)?)?)
        }
    }
}

/// Intermediate activations, for parity debugging.
#[derive(Debug, Default)]
pub struct Activations {
    pub layer_input: Option<Tensor>,
    pub layer_outputs: Vec<Tensor>,
    pub lm_head_input: Option<Tensor>,
}

/// `OPTForCausalLM` with the LM head tied to the token embeddings.
#[derive(Debug, Clone)]
pub struct Opt {
    cfg: OptConfig,
    embed_tokens: Tensor,
    embed_positions: Tensor,
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    layers: Vec<DecoderLayer>,
    final_layer_norm: Option<LayerNorm>,
    lm_head: Linear,
    device: Device,
    compute: DType,
}

/// A batch's attention mask, kept on the host: 1 = real token, 0 = padding.
#[derive(Debug, Clone)]
pub struct PaddingMask {
    pub rows: Vec<Vec<u8>>,
}

impl PaddingMask {
    pub fn ones(b: usize, t: usize) -> Self {
        PaddingMask {
            rows: vec![vec![1; t]; b],
        }
    }

    /// `cumsum(mask) * mask - 1 + 2` for the last `t` positions: padding reads row 1.
    pub(crate) fn position_rows(&self, t: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.rows.len() * t);
        for row in &self.rows {
            let mut c: i64 = 0;
            let pos: Vec<u32> = row
                .iter()
                .map(|&m| {
                    c += m as i64;
                    (c * m as i64 - 1 + POSITION_OFFSET as i64) as u32
                })
                .collect();
            out.extend_from_slice(&pos[row.len() - t..]);
        }
        out
    }

    /// Additive mask `[B, 1, t, T]` for the last `t` queries over all `T` keys.
    fn additive(&self, t: usize, dev: &Device) -> Result<Tensor> {
        let b = self.rows.len();
        let tk = self.rows.first().map_or(0, Vec::len);
        Tensor::from_vec(self.additive_rows(t), (b, 1, t, tk), dev)
    }

    /// The additive mask's values, row-major `[B, t, T]`.
    pub(crate) fn additive_rows(&self, t: usize) -> Vec<f32> {
        let b = self.rows.len();
        let tk = self.rows.first().map_or(0, Vec::len);
        let past = tk - t;
        let mut data = vec![0f32; b * t * tk];
        for (bi, row) in self.rows.iter().enumerate() {
            for i in 0..t {
                let base = (bi * t + i) * tk;
                for (j, &m) in row.iter().enumerate() {
                    if j > past + i || m == 0 {
                        data[base + j] = MASK_MIN;
                    }
                }
            }
        }
        data
    }
}

impl Opt {
    pub fn new(cfg: &OptConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.activation_function != "relu" {
            candle_core::bail!(
                "activation {} is not supported (OPT uses relu)",
                cfg.activation_function
            );
        }
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            candle_core::bail!("hidden_size must be a multiple of num_attention_heads");
        }
        let d = vb.pp("model").pp("decoder");
        let proj = cfg.proj_dim();
        let embed_tokens = d.pp("embed_tokens").get_with_hints(
            (cfg.vocab_size, proj),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let embed_positions = d.pp("embed_positions").get_with_hints(
            (
                cfg.max_position_embeddings + POSITION_OFFSET,
                cfg.hidden_size,
            ),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let (project_in, project_out) = if proj != cfg.hidden_size {
            (
                Some(linear(proj, cfg.hidden_size, false, d.pp("project_in"))?),
                Some(linear(cfg.hidden_size, proj, false, d.pp("project_out"))?),
            )
        } else {
            (None, None)
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, d.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = if cfg.do_layer_norm_before && !cfg._remove_final_layer_norm {
            Some(LayerNorm::new(
                cfg.hidden_size,
                cfg.layer_norm_elementwise_affine,
                d.pp("final_layer_norm"),
            )?)
        } else {
            None
        };
        // An explicit lm_head.weight is used when a checkpoint has one and is untied.
        let lm_head = if !cfg.tie_word_embeddings && vb.contains_tensor("lm_head.weight") {
            Linear::new(vb.get((cfg.vocab_size, proj), "lm_head.weight")?, None)
        } else {
            Linear::new(embed_tokens.clone(), None)
        };
        Ok(Opt {
            cfg: cfg.clone(),
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers,
            final_layer_norm,
            lm_head,
            device: vb.device().clone(),
            compute: DType::F32,
        })
    }

    /// The same model (sharing its weights) with its matmuls in `dt`: `BF16` gives mixed
    /// precision as torch's autocast does, with the f32 weights as the master copy and
    /// LayerNorm, softmax and the loss in f32.
    pub fn with_compute_dtype(&self, dt: DType) -> Opt {
        let mut m = self.clone();
        m.compute = dt;
        for l in &mut m.layers {
            l.self_attn.compute = dt;
        }
        m
    }

    /// The dtype of the matmuls.
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    pub fn config(&self) -> &OptConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits `[B, T, vocab]` for `input_ids` `[B, T]`. With a cache, `mask` covers the
    /// cached keys and the new tokens; the new tokens are its last `T` columns.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        mask: &PaddingMask,
        cache: Option<&mut [LayerCache]>,
    ) -> Result<Tensor> {
        self.forward_inner(input_ids, mask, cache, None, None)
    }

    /// Training-mode logits: residual dropout with the masks of micro-batch `micro` (none
    /// when `dropout` is `None`).
    pub fn forward_train(
        &self,
        input_ids: &Tensor,
        mask: &PaddingMask,
        dropout: Option<(&super::Dropout, usize)>,
    ) -> Result<Tensor> {
        self.forward_inner(input_ids, mask, None, None, dropout)
    }

    pub fn forward_with_activations(
        &self,
        input_ids: &Tensor,
        mask: &PaddingMask,
        acts: &mut Activations,
    ) -> Result<Tensor> {
        self.forward_inner(input_ids, mask, None, Some(acts), None)
    }

    fn forward_inner(
        &self,
        input_ids: &Tensor,
        mask: &PaddingMask,
        mut cache: Option<&mut [LayerCache]>,
        mut acts: Option<&mut Activations>,
        dropout: Option<(&super::Dropout, usize)>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let tk = mask.rows.first().map_or(0, Vec::len);
        if mask.rows.len() != b || tk < t {
            candle_core::bail!("mask is {}x{tk}, input is {b}x{t}", mask.rows.len());
        }
        let positions = mask.position_rows(t);
        if let Some(&max) = positions.iter().max() {
            if max as usize >= self.cfg.max_position_embeddings + POSITION_OFFSET {
                candle_core::bail!(
                    "sequence of {} tokens exceeds max_position_embeddings {}",
                    max as usize - 1,
                    self.cfg.max_position_embeddings
                );
            }
        }
        let pos = Tensor::from_vec(positions, b * t, &self.device)?;
        let ids = input_ids.flatten_all()?;
        let mut x = self.embed_tokens.index_select(&ids, 0)?;
        if let Some(p) = &self.project_in {
            x = project(p, &x, self.compute)?;
        }
        let x = (x + self.embed_positions.index_select(&pos, 0)?)?;
        let mut x = x.reshape((b, t, self.cfg.hidden_size))?;
        if let Some(a) = acts.as_deref_mut() {
            a.layer_input = Some(x.clone());
        }
        let attn_mask = mask.additive(t, &self.device)?;
        let shape = (b, t, self.cfg.hidden_size);
        let n = b * t * self.cfg.hidden_size;
        for (i, layer) in self.layers.iter().enumerate() {
            let c = cache.as_deref_mut().map(|c| &mut c[i]);
            let drop = match dropout {
                Some((d, micro)) => {
                    let m = |site| Tensor::from_vec(d.mask(micro, i, site, n), shape, &self.device);
                    Some([m(super::Site::Attention)?, m(super::Site::FeedForward)?])
                }
                None => None,
            };
            x = layer.forward(&x, &attn_mask, c, drop.as_ref())?;
            if let Some(a) = acts.as_deref_mut() {
                a.layer_outputs.push(x.clone());
            }
        }
        if let Some(ln) = &self.final_layer_norm {
            x = ln.forward(&x)?;
        }
        if let Some(p) = &self.project_out {
            x = project(p, &x, self.compute)?;
        }
        if let Some(a) = acts {
            a.lm_head_input = Some(x.clone());
        }
        project(&self.lm_head, &x, self.compute)
    }

    pub fn empty_cache(&self) -> Vec<LayerCache> {
        vec![None; self.layers.len()]
    }
}

/// Causal-LM cross-entropy as transformers' `ForCausalLM` loss: position t predicts token
/// t+1, labels of -100 are ignored. Returns the **sum** over counted tokens and the count,
/// so callers can average over every token of an accumulated batch.
pub fn causal_lm_loss_sum(logits: &Tensor, labels: &[Vec<i64>]) -> Result<(Tensor, usize)> {
    let (b, t, v) = logits.dims3()?;
    if labels.len() != b || labels.iter().any(|r| r.len() != t) {
        candle_core::bail!("labels do not match logits {b}x{t}");
    }
    let (targets, weights) = shifted_targets(labels, v);
    let count = weights.iter().filter(|w| **w > 0.0).count();
    let rows = logits.reshape((b * t, v))?;
    let sum = super::ops::cross_entropy_rows(&rows, &targets, &weights)?.sum_all()?;
    Ok((sum, count))
}

/// The target of every position (the next token's label) and its weight, 1 or 0 (ignored
/// label, or the last position). Every position gets a row, so logits are used in place
/// instead of copied into a shifted tensor.
pub(crate) fn shifted_targets(labels: &[Vec<i64>], vocab: usize) -> (Vec<u32>, Vec<f32>) {
    let n = labels.iter().map(Vec::len).sum();
    let mut targets = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    for row in labels.iter().filter(|r| !r.is_empty()) {
        for &l in row.iter().skip(1).chain(std::iter::once(&-100)) {
            let keep = l != -100 && l >= 0 && (l as usize) < vocab;
            targets.push(if keep { l as u32 } else { 0 });
            weights.push(if keep { 1f32 } else { 0f32 });
        }
    }
    (targets, weights)
}
