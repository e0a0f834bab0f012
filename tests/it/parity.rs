//! Parity with Hugging Face transformers and torch, against the fixtures in
//! `$ABLATE_PARITY_DIR` (default `../shared/fixtures/opt-parity`): every variant directory
//! found there is tested, so a new variant needs no code change. Tolerances are the
//! fixture README's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ablate::config::{DecayGroups, Scheduler};
use ablate::data::Batch;
use ablate::model::{self, causal_lm_loss_sum, generate_greedy, ModelSource, PaddingMask};
use ablate::train::loss_and_grads;
use ablate::train::optim::{clip_grad_norm, AdamW, Schedule};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::max_abs_diff;

const FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "reference.safetensors",
    "reference.json",
    "tokenizer.json",
];

fn variants() -> Vec<PathBuf> {
    let out = crate::fixture_variants("ABLATE_PARITY_DIR", "opt-parity");
    for v in &out {
        for f in FILES {
            assert!(
                v.join(f).is_file(),
                "variant {} is missing {f}",
                v.display()
            );
        }
    }
    out
}

struct Fixture {
    refs: HashMap<String, Tensor>,
    json: Value,
    loaded: model::LoadedModel,
}

fn load(dir: &Path) -> Fixture {
    let src = ModelSource::Dir(dir.to_path_buf());
    let cfg = src.config().unwrap();
    let loaded = model::build(&cfg, &src.weight_files().unwrap(), 0, &Device::Cpu).unwrap();
    let refs =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let json = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
        .unwrap();
    Fixture { refs, json, loaded }
}

fn ids_u32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

fn mask_of(t: &Tensor) -> PaddingMask {
    let rows: Vec<Vec<i64>> = t.to_vec2().unwrap();
    PaddingMask {
        rows: rows
            .into_iter()
            .map(|r| r.into_iter().map(|m| m as u8).collect())
            .collect(),
    }
}

fn labels_of(t: &Tensor) -> Vec<Vec<i64>> {
    t.to_vec2().unwrap()
}

#[test]
fn logits_loss_and_generation_match_transformers() {
    for dir in variants() {
        let name = dir.display().to_string();
        let f = load(&dir);
        let m = &f.loaded.model;
        let logits = m
            .forward(
                &ids_u32(&f.refs["input_ids"]),
                &mask_of(&f.refs["attention_mask"]),
                None,
            )
            .unwrap();
        let d = max_abs_diff(&logits, &f.refs["logits"]);
        assert!(d <= 2e-5, "{name}: right-padded logits differ by {d}");

        // Left padding: compare only real-token positions.
        let mask = mask_of(&f.refs["attention_mask_leftpad"]);
        let left = m
            .forward(&ids_u32(&f.refs["input_ids_leftpad"]), &mask, None)
            .unwrap();
        let keep = f.refs["attention_mask_leftpad"]
            .to_dtype(DType::F32)
            .unwrap()
            .unsqueeze(2)
            .unwrap();
        let diff = (left - &f.refs["logits_leftpad"])
            .unwrap()
            .broadcast_mul(&keep)
            .unwrap();
        let d = diff
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d <= 2e-5, "{name}: left-padded logits differ by {d}");

        let labels = labels_of(&f.refs["labels"]);
        let (sum, n) = causal_lm_loss_sum(&logits, &labels).unwrap();
        let loss = sum.to_scalar::<f32>().unwrap() as f64 / n as f64;
        let want = f.json["loss"].as_f64().unwrap();
        assert!((loss - want).abs() <= 5e-6, "{name}: loss {loss} vs {want}");

        let prompt: Vec<u32> = f.refs["gen.prompt_ids"]
            .to_dtype(DType::U32)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let expected: Vec<u32> = f.refs["gen.output_ids"]
            .to_dtype(DType::U32)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let new = generate_greedy(m, std::slice::from_ref(&prompt), 8, u32::MAX).unwrap();
        assert_eq!(new[0][..], expected[prompt.len()..], "{name}: greedy ids");
    }
}

#[test]
fn every_parameter_gets_the_reference_gradient() {
    for dir in variants() {
        let name = dir.display().to_string();
        let f = load(&dir);
        let batch = batch_of(&f);
        let named = f.loaded.params.all();
        let (_, grads) =
            loss_and_grads(&f.loaded.model, &named, std::slice::from_ref(&batch), None).unwrap();
        assert_eq!(
            grads.len(),
            named.len(),
            "{name}: a parameter has no gradient"
        );
        for (p, _) in &named {
            if p.ends_with("self_attn.k_proj.bias") {
                continue; // exactly zero in exact arithmetic: pure rounding noise (README)
            }
            let r = &f.refs[&format!("grad_step0.{p}")];
            let g = &grads[p];
            let tol = ((r.abs().unwrap() * 1e-5).unwrap() + 2e-6).unwrap();
            let over = (g - r)
                .unwrap()
                .abs()
                .unwrap()
                .gt(&tol)
                .unwrap()
                .to_dtype(DType::U32)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<u32>()
                .unwrap();
            assert_eq!(over, 0, "{name}: gradient of {p} out of tolerance");
        }
    }
}

fn batch_of(f: &Fixture) -> Batch {
    let ids: Vec<Vec<u32>> = f.refs["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2()
        .unwrap();
    let mask = mask_of(&f.refs["attention_mask"]).rows;
    Batch {
        rows: ids.len(),
        len: ids[0].len(),
        ids: ids.concat(),
        mask,
        labels: labels_of(&f.refs["labels"]),
    }
}

#[test]
fn five_adamw_steps_match_torch() {
    let runs = [
        (
            "wd0.0",
            0.0,
            DecayGroups::All,
            "params_after_5_steps.safetensors",
        ),
        (
            "wd0.01",
            0.01,
            DecayGroups::All,
            "params_after_5_steps_wd0.01.safetensors",
        ),
        (
            "wd0.01_trainer_groups",
            0.01,
            DecayGroups::Trainer,
            "params_after_5_steps_wd0.01_trainer_groups.safetensors",
        ),
    ];
    for dir in variants() {
        let name = dir.display().to_string();
        let mut finals: HashMap<&str, HashMap<String, Tensor>> = HashMap::new();
        let init =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        for (run, wd, groups, file) in runs {
            let f = load(&dir);
            let batch = batch_of(&f);
            let named = f.loaded.params.all();
            let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
            let mut opt = AdamW::new(named.clone(), 0.9, 0.999, 1e-8, wd, groups).unwrap();
            if groups == DecayGroups::Trainer {
                let want: Vec<String> =
                    serde_json::from_value(f.json["trainer_groups_decayed_params"].clone())
                        .unwrap();
                let mut got: Vec<String> = opt.decayed().iter().map(|s| s.to_string()).collect();
                let mut want = want;
                got.sort();
                want.sort();
                assert_eq!(got, want, "{name}: decayed parameters");
            }
            let sched = Schedule {
                kind: Scheduler::Linear,
                base_lr: 1e-3,
                warmup_steps: 2,
                total_steps: 5,
            };
            let steps = f.json["train"][run]["steps"].as_array().unwrap().clone();
            for (i, s) in steps.iter().enumerate() {
                let (loss, mut grads) =
                    loss_and_grads(&f.loaded.model, &named, std::slice::from_ref(&batch), None)
                        .unwrap();
                let (norm, coef) = clip_grad_norm(&mut grads, &names, Some(0.3)).unwrap();
                let lr = sched.lr(i);
                let ctx = format!("{name} {run} step {i}");
                assert!(
                    (loss - s["loss"].as_f64().unwrap()).abs() <= 5e-6,
                    "{ctx}: loss {loss} vs {}",
                    s["loss"]
                );
                let want_norm = s["grad_norm_pre_clip"].as_f64().unwrap();
                assert!(
                    ((norm - want_norm) / want_norm).abs() <= 1e-5,
                    "{ctx}: norm {norm} vs {want_norm}"
                );
                let want_coef = s["clip_coef"].as_f64().unwrap();
                assert!(
                    ((coef - want_coef) / want_coef).abs() <= 1e-5,
                    "{ctx}: clip coef {coef} vs {want_coef}"
                );
                let want_lr = s["lr"].as_f64().unwrap();
                assert!(
                    (lr - want_lr).abs() <= 1e-12 * want_lr.abs().max(1e-3),
                    "{ctx}: lr {lr} vs {want_lr}"
                );
                opt.step(&grads, lr).unwrap();
            }
            let reference = candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap();
            let mut mine = HashMap::new();
            for (p, var) in &named {
                let got = var.as_tensor().clone();
                let r = &reference[p];
                if p.ends_with("self_attn.k_proj.bias") {
                    // Its update is amplified rounding noise: only bound the change (README).
                    let d = max_abs_diff(&got, &init[p]);
                    assert!(d <= 3e-3, "{name} {run}: {p} moved {d} from init");
                } else {
                    let d = max_abs_diff(&got, r);
                    assert!(d <= 1e-4, "{name} {run}: {p} differs by {d}");
                    let diffs: Vec<f32> = (&got - r)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    let within = diffs.iter().filter(|x| **x <= 2e-6).count();
                    assert!(
                        within as f64 >= 0.999 * diffs.len() as f64,
                        "{name} {run}: {p}: only {within}/{} within 2e-6",
                        diffs.len()
                    );
                }
                mine.insert(p.clone(), got);
            }
            finals.insert(run, mine);
        }
        // The weight-decay effect, compared as differences between runs (README).
        for (run, file) in [
            ("wd0.01", "params_after_5_steps_wd0.01.safetensors"),
            (
                "wd0.01_trainer_groups",
                "params_after_5_steps_wd0.01_trainer_groups.safetensors",
            ),
        ] {
            let r_wd = candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap();
            let r_0 = candle_core::safetensors::load(
                dir.join("params_after_5_steps.safetensors"),
                &Device::Cpu,
            )
            .unwrap();
            for (p, got) in &finals[run] {
                if p.ends_with("self_attn.k_proj.bias") {
                    continue;
                }
                let mine = (got - &finals["wd0.0"][p]).unwrap();
                let theirs = (&r_wd[p] - &r_0[p]).unwrap();
                let d = max_abs_diff(&mine, &theirs);
                assert!(
                    d <= 2e-6,
                    "{name} {run}: decay effect on {p} differs by {d}"
                );
            }
        }
    }
}

#[test]
fn tokenizer_probes_are_exact() {
    for dir in variants() {
        let tok = ablate::data::load_tokenizer(&dir.join("tokenizer.json")).unwrap();
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        for p in json["tokenizer"]["probes"].as_array().unwrap() {
            let text = p["text"].as_str().unwrap();
            let with: Vec<u32> =
                serde_json::from_value(p["ids_add_special_tokens"].clone()).unwrap();
            let without: Vec<u32> =
                serde_json::from_value(p["ids_no_special_tokens"].clone()).unwrap();
            assert_eq!(
                tok.encode(text, true).unwrap().get_ids(),
                &with[..],
                "{text:?}"
            );
            assert_eq!(
                tok.encode(text, false).unwrap().get_ids(),
                &without[..],
                "{text:?}"
            );
            assert_eq!(
                tok.decode(&with, false).unwrap(),
                p["decode_keep_special"].as_str().unwrap()
            );
            assert_eq!(
                tok.decode(&with, true).unwrap(),
                p["decode_skip_special"].as_str().unwrap()
            );
        }
    }
}
