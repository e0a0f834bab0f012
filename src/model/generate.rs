//! Batched decoding with a KV cache: prompts are left-padded together, each row stops at
//! EOS or when the caller's stop test says so, and tokens are chosen greedily or sampled
//! through candle-transformers' `LogitsProcessor` (temperature, top-k, top-p).

use candle_core::{Result, Tensor, D};
use candle_transformers::generation::{LogitsProcessor, Sampling};

use super::{Opt, PaddingMask};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decoding {
    Greedy,
    /// Sampling; row `i` of a call draws from a generator seeded with `seed + i`.
    Sample {
        temperature: f64,
        /// 0: no top-k cut.
        top_k: usize,
        /// 1.0: no nucleus cut.
        top_p: f64,
        seed: u64,
    },
}

impl Decoding {
    fn sampling(&self) -> Sampling {
        match *self {
            Decoding::Greedy => Sampling::ArgMax,
            Decoding::Sample {
                temperature,
                top_k,
                top_p,
                ..
            } => match (top_k > 0, top_p < 1.0) {
                (false, false) => Sampling::All { temperature },
                (true, false) => Sampling::TopK {
                    k: top_k,
                    temperature,
                },
                (false, true) => Sampling::TopP {
                    p: top_p,
                    temperature,
                },
                (true, true) => Sampling::TopKThenTopP {
                    k: top_k,
                    p: top_p,
                    temperature,
                },
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub eos: u32,
    pub decoding: Decoding,
}

/// Decodes every prompt; returns only the new tokens of each row, without the EOS. A row
/// also stops once `stop(tokens so far)` is true (stop strings: the caller decodes).
pub fn generate(
    model: &Opt,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    stop: &dyn Fn(&[u32]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    Ok(generate_scored(model, prompts, opts, stop)?
        .into_iter()
        .map(|g| g.tokens)
        .collect())
}

/// One row's decoding: its new tokens and the model's confidence in them.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub tokens: Vec<u32>,
    /// The summed log-probability (natural log, under the model's own distribution before
    /// any sampling temperature) of the tokens chosen, the EOS included when it ended the
    /// row, and how many tokens that is.
    pub logprob_sum: f64,
    pub scored: usize,
}

/// [`generate`], with each row's mean token log-probability.
pub fn generate_scored(
    model: &Opt,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    stop: &dyn Fn(&[u32]) -> bool,
) -> Result<Vec<Generated>> {
    let b = prompts.len();
    if b == 0 {
        return Ok(vec![]);
    }
    let pad = model.config().pad_token_id;
    let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(b * len);
    let mut mask = PaddingMask {
        rows: Vec::with_capacity(b),
    };
    for p in prompts {
        let n = len - p.len();
        ids.extend(std::iter::repeat_n(pad, n).chain(p.iter().copied()));
        mask.rows.push(
            std::iter::repeat_n(0u8, n)
                .chain(std::iter::repeat_n(1u8, p.len()))
                .collect(),
        );
    }
    let mut samplers: Vec<LogitsProcessor> = match opts.decoding {
        Decoding::Greedy => vec![],
        Decoding::Sample { seed, .. } => (0..b as u64)
            .map(|i| LogitsProcessor::from_sampling(seed.wrapping_add(i), opts.decoding.sampling()))
            .collect(),
    };
    let dev = model.device();
    let mut cache = model.empty_cache();
    let mut input = Tensor::from_vec(ids, (b, len), dev)?;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut logprob = vec![(0.0f64, 0usize); b];
    let mut done = vec![false; b];
    for _ in 0..opts.max_new_tokens {
        let logits = model.forward(&input, &mask, Some(&mut cache))?;
        let t = logits.dim(1)?;
        let last = logits.narrow(1, t - 1, 1)?.squeeze(1)?;
        let next: Vec<u32> = if samplers.is_empty() {
            last.argmax(D::Minus1)?.to_vec1()?
        } else {
            let last = last.to_dtype(candle_core::DType::F32)?;
            samplers
                .iter_mut()
                .enumerate()
                .map(|(i, s)| s.sample(&last.get(i)?))
                .collect::<Result<_>>()?
        };
        let chosen =
            candle_nn::ops::log_softmax(&last.to_dtype(candle_core::DType::F32)?, D::Minus1)?
                .gather(&Tensor::from_vec(next.clone(), (b, 1), dev)?, D::Minus1)?
                .flatten_all()?
                .to_vec1::<f32>()?;
        for (i, &tok) in next.iter().enumerate() {
            if done[i] {
                continue;
            }
            logprob[i].0 += chosen[i] as f64;
            logprob[i].1 += 1;
            if tok == opts.eos {
                done[i] = true;
            } else {
                out[i].push(tok);
                done[i] = stop(&out[i]);
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        for row in &mut mask.rows {
            row.push(1);
        }
        input = Tensor::from_vec(next, (b, 1), dev)?;
    }
    Ok(out
        .into_iter()
        .zip(logprob)
        .map(|(tokens, (logprob_sum, scored))| Generated {
            tokens,
            logprob_sum,
            scored,
        })
        .collect())
}

/// Greedy decoding to EOS or `max_new_tokens`.
pub fn generate_greedy(
    model: &Opt,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    eos: u32,
) -> Result<Vec<Vec<u32>>> {
    let opts = GenerateOptions {
        max_new_tokens,
        eos,
        decoding: Decoding::Greedy,
    };
    generate(model, prompts, &opts, &|_| false)
}
