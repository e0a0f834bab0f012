//! Training-step throughput, the same work as `../shared/bench/torch_train_bench.py`:
//! forward (OPT, f32), mean CE over every token, backward, clip_grad_norm(1.0), AdamW, on
//! random full-length token ids. Prints one JSON object, like the PyTorch script, so the
//! two can be compared side by side in one run.
//!
//!   cargo bench --bench train_step -- --config small --batch 8 --seq 256 --steps 10
//!   (GPU build) cargo bench --features cuda --bench train_step -- --config opt-125m --device cuda:0

use std::time::Instant;

mod common;

use ablate::config::DecayGroups;
use ablate::data::Batch;
use ablate::model::{self, OptConfig};
use ablate::run::device_for;
use ablate::train::loss_and_grads;
use ablate::train::optim::{clip_grad_norm, AdamW};
use common::arg;
use rand::{Rng, SeedableRng};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let config = arg(&args, "--config", "small");
    let batch: usize = arg(&args, "--batch", "8").parse().expect("--batch");
    let seq: usize = arg(&args, "--seq", "256").parse().expect("--seq");
    let steps: usize = arg(&args, "--steps", "10").parse().expect("--steps");
    let warmup: usize = arg(&args, "--warmup", "2").parse().expect("--warmup");
    let device =
        device_for(arg(&args, "--device", "cpu").parse().expect("device")).expect("device");
    let cfg = OptConfig::preset(config.trim_end_matches("-shape"))
        .expect("preset: tiny, small, opt-125m, opt-350m, opt-1.3b");
    let loaded = model::build(&cfg, &[], 0, &device).expect("model");
    let named = loaded.params.all();
    let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let mut opt =
        AdamW::new(named.clone(), 0.9, 0.999, 1e-8, 0.0, DecayGroups::All).expect("optimizer");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.random_range(3..cfg.vocab_size as u32))
        .collect();
    let b = Batch {
        labels: ids
            .chunks(seq)
            .map(|r| r.iter().map(|&i| i as i64).collect())
            .collect(),
        mask: vec![vec![1; seq]; batch],
        ids,
        rows: batch,
        len: seq,
    };
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let (loss, mut grads) =
            loss_and_grads(&loaded.model, &named, std::slice::from_ref(&b), None).expect("step");
        clip_grad_norm(&mut grads, &names, Some(1.0)).expect("clip");
        opt.step(&grads, 5e-5).expect("adamw");
        device.synchronize().expect("sync");
        let dt = t0.elapsed().as_secs_f64();
        if i >= warmup {
            times.push(dt);
        }
        assert!(loss.is_finite());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    let params = loaded.params.num_elements();
    println!(
        "{}",
        serde_json::json!({
            "impl": "ablate", "config": config, "device": format!("{device:?}"), "params": params,
            "batch": batch, "seq": seq, "steps": steps, "step_ms_median": median * 1e3,
            "step_ms_min": times[0] * 1e3, "step_ms_max": times[times.len() - 1] * 1e3,
            "tokens_per_s": (batch * seq) as f64 / median,
            // 6 N flops per token (forward + backward), as the PyTorch script's MFU.
            "model_tflops": 6.0 * params as f64 * (batch * seq) as f64 / median / 1e12,
            "peak_rss_mb": peak_rss_mb(),
            // Which matmuls the CPU backward pass used (train::matmul).
            "blas": ablate::train::matmul::blas().map(|b| b.path.clone()),
        })
    );
}

/// The process's peak resident set size (VmHWM), comparable to the PyTorch script's
/// ru_maxrss.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
