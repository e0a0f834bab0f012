//! Forward and generation throughput of the OPT presets on CPU (or a GPU build):
//! forward tokens/s over a full batch, and greedy decoding tokens/s with the KV cache.
//! Prints one JSON object per config.
//!
//!   cargo bench --bench forward_generate -- --configs tiny,small,opt-125m

use std::time::Instant;

mod common;

use ablate::model::{self, generate, Decoding, GenerateOptions, OptConfig, PaddingMask};
use ablate::run::device_for;
use candle_core::Tensor;
use common::arg;
use rand::{Rng, SeedableRng};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let configs = arg(&args, "--configs", "tiny,small,opt-125m");
    let batch: usize = arg(&args, "--batch", "8").parse().expect("--batch");
    let seq: usize = arg(&args, "--seq", "128").parse().expect("--seq");
    let prompt: usize = arg(&args, "--prompt", "32").parse().expect("--prompt");
    let new: usize = arg(&args, "--new", "32").parse().expect("--new");
    let reps: usize = arg(&args, "--reps", "3").parse().expect("--reps");
    let device =
        device_for(arg(&args, "--device", "cpu").parse().expect("device")).expect("device");
    for name in configs.split(',') {
        let cfg = OptConfig::preset(name).expect("preset: tiny, small, opt-125m, ...");
        let m = model::build(&cfg, &[], 0, &device).expect("model");
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let mut ids = |n: usize| -> Vec<u32> {
            (0..n)
                .map(|_| rng.random_range(3..cfg.vocab_size as u32))
                .collect()
        };
        let x = Tensor::from_vec(ids(batch * seq), (batch, seq), &device).expect("ids");
        let mask = PaddingMask::ones(batch, seq);
        let mut fwd = Vec::new();
        for i in 0..=reps {
            let t0 = Instant::now();
            m.model.forward(&x, &mask, None).expect("forward");
            device.synchronize().expect("sync");
            if i > 0 {
                fwd.push(t0.elapsed().as_secs_f64());
            }
        }
        let prompts: Vec<Vec<u32>> = (0..batch).map(|_| ids(prompt)).collect();
        // No EOS (u32::MAX never comes), so every row decodes exactly `new` tokens.
        let opts = GenerateOptions {
            max_new_tokens: new,
            eos: u32::MAX,
            decoding: Decoding::Greedy,
        };
        let mut gen = Vec::new();
        for i in 0..=reps {
            let t0 = Instant::now();
            let out = generate(&m.model, &prompts, &opts, &|_| false).expect("generate");
            assert!(out.iter().all(|r| r.len() == new));
            if i > 0 {
                gen.push(t0.elapsed().as_secs_f64());
            }
        }
        let (f, g) = (median(fwd), median(gen));
        println!(
            "{}",
            serde_json::json!({
                "config": name, "device": format!("{device:?}"),
                "params": m.params.num_elements(), "batch": batch,
                "forward_seq": seq, "forward_ms": f * 1e3,
                "forward_tokens_per_s": (batch * seq) as f64 / f,
                "prompt": prompt, "new_tokens": new, "generate_ms": g * 1e3,
                "generate_tokens_per_s": (batch * new) as f64 / g,
            })
        );
    }
}
