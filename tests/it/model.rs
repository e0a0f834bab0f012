//! The model's life outside a sweep: saved in Hugging Face layout, found again by path or
//! through the local HF cache, and decoding the same way after the round trip.

use crate::WithoutAblateEnv;
use std::path::Path;
use std::process::{Command, Stdio};

use ablate::data::{self, synthetic};
use ablate::model::{self, Decoding, GenerateOptions, ModelSource, OptConfig, PaddingMask};
use candle_core::{Device, Tensor};

/// A tiny random OPT with a tokenizer trained on the synthetic task, saved to `dir`.
pub(crate) fn save_tiny(dir: &Path) -> (model::LoadedModel, tokenizers::Tokenizer) {
    let texts: Vec<String> = synthetic::generate(64, 1, "train")
        .iter()
        .map(|e| format!("{}{}", data::render_prompt(e), data::render_completion(e)))
        .collect();
    let tok = data::train_tokenizer(&texts, 320).unwrap();
    let mut cfg = OptConfig::preset("tiny").unwrap();
    cfg.vocab_size = tok.get_vocab_size(true);
    let m = model::build(&cfg, &[], 3, &Device::Cpu).unwrap();
    model::save_pretrained(dir, &cfg, &m.params).unwrap();
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    (m, tok)
}

fn prompts(tok: &tokenizers::Tokenizer) -> Vec<Vec<u32>> {
    synthetic::generate(3, 9, "test")
        .iter()
        .map(|e| data::encode_prompt(tok, e, data::Template::Compact).unwrap())
        .collect()
}

#[test]
fn saved_model_loads_back_identical_and_generates_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-opt");
    let (orig, tok) = save_tiny(&dir);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }

    let src = ModelSource::resolve(dir.to_str().unwrap()).unwrap();
    assert!(matches!(src, ModelSource::Dir(_)));
    let cfg = src.config().unwrap();
    assert_eq!(cfg, orig.config);
    let back = model::build(&cfg, &src.weight_files().unwrap(), 0, &Device::Cpu).unwrap();
    assert_eq!(back.params.len(), orig.params.len());

    let ps = prompts(&tok);
    let ids = Tensor::new(ps[0].as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = PaddingMask::ones(1, ps[0].len());
    let logits = |m: &model::Opt| -> Vec<f32> {
        m.forward(&ids, &mask, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b) = (logits(&orig.model), logits(&back.model));
    assert!(a == b, "logits differ after the round trip");

    let greedy = |m: &model::Opt| model::generate_greedy(m, &ps, 12, data::EOS_ID).unwrap();
    let g = greedy(&back.model);
    assert_eq!(greedy(&orig.model), g);
    assert!(g.iter().all(|r| !r.is_empty() && r.len() <= 12));

    // Sampling is reproducible from its seed and, at a high temperature, not greedy.
    let sample = |seed: u64| {
        let opts = GenerateOptions {
            max_new_tokens: 12,
            eos: data::EOS_ID,
            decoding: Decoding::Sample {
                temperature: 5.0,
                top_k: 0,
                top_p: 1.0,
                seed,
            },
        };
        model::generate(&back.model, &ps, &opts, &|_| false).unwrap()
    };
    assert_eq!(sample(1), sample(1));
    assert_ne!(sample(1), g);

    // A stop test ends each row as soon as it holds.
    let opts = GenerateOptions {
        max_new_tokens: 12,
        eos: data::EOS_ID,
        decoding: Decoding::Greedy,
    };
    let short = model::generate(&back.model, &ps, &opts, &|ids| ids.len() >= 3).unwrap();
    for (s, full) in short.iter().zip(&g) {
        assert_eq!(s[..], full[..full.len().min(3)]);
    }
}

fn plan(dir: &Path, model_name: &str, hub: &Path) -> std::process::Output {
    let f = dir.join("exp.toml");
    std::fs::write(
        &f,
        format!("[model]\nname = \"{model_name}\"\n[train]\nepochs = 0\n"),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_ablate"))
        .without_ablate_env()
        .current_dir(dir)
        .args(["plan", "exp.toml"])
        .env("HF_HUB_CACHE", hub)
        .env_remove("HF_HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn hf_repo_ids_resolve_through_the_local_cache_or_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    std::fs::create_dir_all(&hub).unwrap();

    let out = plan(tmp.path(), "facebook/opt-350m", &hub);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.name")
            && err.contains("not in the local Hugging Face cache")
            && err.contains("models--facebook--opt-350m"),
        "{err}"
    );

    // The same id, once the cache holds a snapshot (hf-hub's layout), plans fine.
    let repo = hub.join("models--facebook--opt-350m");
    save_tiny(&repo.join("snapshots/0123abcd"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    let out = plan(tmp.path(), "facebook/opt-350m", &hub);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A local directory without weights: named, with the reason.
    let empty = tmp.path().join("no-weights");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(
        repo.join("snapshots/0123abcd/config.json"),
        empty.join("config.json"),
    )
    .unwrap();
    let out = plan(tmp.path(), empty.to_str().unwrap(), &hub);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.name") && err.contains("no weights: looked for model.safetensors"),
        "{err}"
    );
}

#[test]
fn an_experiment_fine_tunes_a_saved_checkpoint_given_by_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-opt");
    let (orig, _) = save_tiny(&dir);
    let text = format!(
        "[model]\nname = \"{}\"\n[data]\nn_train = 16\nn_test = 4\n\
         [train]\nepochs = 1\nbatch_size = 8\n[eval]\nmax_new_tokens = 4\n",
        dir.display()
    );
    std::fs::write(tmp.path().join("exp.toml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .without_ablate_env()
        .current_dir(tmp.path())
        .args(["run", "exp.toml", "--no-report"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = rusqlite::Connection::open(tmp.path().join("results/ablate.db")).unwrap();
    let (status, params): (String, f64) = conn
        .query_row(
            "SELECT r.status, m.value FROM runs r JOIN metrics m ON m.run_id = r.id
             WHERE m.name = 'params'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "done");
    // The checkpoint's own shape (its vocabulary), not a preset's.
    assert_eq!(params as usize, orig.params.num_elements());
}
