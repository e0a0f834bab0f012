//! Checkpoints in the Hub's own layout (`$ABLATE_HUB_FIXTURES`, default
//! `../shared/fixtures/opt-hub`): vocab.json + merges.txt without tokenizer.json, weights
//! as `pytorch_model.bin` with `decoder.` keys or as sharded safetensors. Every variant
//! folder found is checked against the token ids and logits transformers computed loading
//! that very folder (the fixture README is the spec).

use crate::WithoutAblateEnv;
use std::path::{Path, PathBuf};

use ablate::model::{self, ModelSource, PaddingMask};
use candle_core::{Device, Tensor};
use serde_json::Value;

fn variants() -> Vec<PathBuf> {
    let out = crate::fixture_variants("ABLATE_HUB_FIXTURES", "opt-hub");
    for v in &out {
        assert!(
            !v.join("tokenizer.json").exists(),
            "{}: the Hub layout has no tokenizer.json",
            v.display()
        );
    }
    out
}

fn reference(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn token_ids_equal_transformers_on_every_probe() {
    for dir in variants() {
        let name = dir.display();
        let tok = ModelSource::Dir(dir.clone()).tokenizer().unwrap().unwrap();
        let r = reference(&dir);
        let probes = r["probes"].as_array().unwrap();
        assert!(probes.len() >= 10, "{name}: {} probes", probes.len());
        for p in probes {
            let text = p["text"].as_str().unwrap();
            let enc = tok.encode(text, true).unwrap();
            assert_eq!(enc.get_ids(), ids_of(&p["ids"]), "{name}: ids of {text:?}");
            let back = tok.decode(enc.get_ids(), true).unwrap();
            assert_eq!(
                back,
                p["decoded"].as_str().unwrap(),
                "{name}: decode of {text:?}"
            );
        }
    }
}

/// The reference batch, encoded by ablate and right-padded with the model's pad id.
fn batch(dir: &Path, pad: u32) -> (Vec<Vec<u32>>, Vec<Vec<u8>>) {
    let tok = ModelSource::Dir(dir.to_path_buf())
        .tokenizer()
        .unwrap()
        .unwrap();
    let r = reference(dir);
    let rows: Vec<Vec<u32>> = r["batch"]["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            tok.encode(t.as_str().unwrap(), true)
                .unwrap()
                .get_ids()
                .to_vec()
        })
        .collect();
    let len = rows.iter().map(Vec::len).max().unwrap();
    let ids = rows
        .iter()
        .map(|r| {
            r.iter()
                .copied()
                .chain(std::iter::repeat(pad))
                .take(len)
                .collect()
        })
        .collect();
    let mask = rows
        .iter()
        .map(|r| (0..len).map(|i| (i < r.len()) as u8).collect())
        .collect();
    (ids, mask)
}

#[test]
fn logits_equal_transformers_from_the_hub_weight_layouts() {
    let mut layouts = Vec::new();
    for dir in variants() {
        let name = dir.display().to_string();
        let src = ModelSource::Dir(dir.clone());
        src.check(true).unwrap();
        let cfg = src.config().unwrap();
        let files = src.weight_files().unwrap();
        layouts.push(files[0].extension().unwrap().to_string_lossy().into_owned());
        let loaded = model::build(&cfg, &files, 0, &Device::Cpu).unwrap();

        let (ids, mask) = batch(&dir, cfg.pad_token_id);
        let r = reference(&dir);
        assert_eq!(
            serde_json::to_value(&ids).unwrap(),
            r["batch"]["input_ids"],
            "{name}: batch ids"
        );
        assert_eq!(
            serde_json::to_value(&mask).unwrap(),
            r["batch"]["attention_mask"],
            "{name}: attention mask"
        );
        let (b, t) = (ids.len(), ids[0].len());
        let flat: Vec<u32> = ids.concat();
        let input = Tensor::from_vec(flat, (b, t), &Device::Cpu).unwrap();
        let logits = loaded
            .model
            .forward(&input, &PaddingMask { rows: mask }, None)
            .unwrap();
        let refs = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .unwrap();
        let want = &refs["logits"];
        assert_eq!(logits.dims(), want.dims(), "{name}: logits shape");
        let d = crate::max_abs_diff(&logits, want);
        assert!(d <= 2e-5, "{name}: logits differ from transformers' by {d}");
    }
    // The shipped fixtures cover both layouts; a hidden variant may add more.
    if std::env::var_os("ABLATE_HUB_FIXTURES").is_none() {
        layouts.sort();
        assert_eq!(layouts, ["bin", "safetensors"]);
    }
}

/// Copies a fixture folder so a test can damage one file of it.
fn copy_variant(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/opt-hub")
        .join(name)
}

#[test]
fn a_damaged_merges_file_changes_the_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bin");
    copy_variant(&fixture("bin"), &dir);
    // Drop the first merge rule: every probe that used it tokenizes differently.
    let merges = std::fs::read_to_string(dir.join("merges.txt")).unwrap();
    let mut lines: Vec<&str> = merges.lines().collect();
    lines.remove(1);
    std::fs::write(dir.join("merges.txt"), lines.join("\n")).unwrap();
    let tok = ModelSource::Dir(dir.clone()).tokenizer().unwrap().unwrap();
    let r = reference(&dir);
    let differ = r["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            tok.encode(p["text"].as_str().unwrap(), true)
                .unwrap()
                .get_ids()
                != ids_of(&p["ids"])
        })
        .count();
    assert!(differ >= 3, "only {differ} probes changed");
}

#[test]
fn a_truncated_or_damaged_bin_is_refused_or_changes_the_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bin");
    copy_variant(&fixture("bin"), &dir);
    let bin = dir.join("pytorch_model.bin");
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() / 2]).unwrap();
    let err = ModelSource::Dir(dir.clone()).check(true).unwrap_err();
    assert!(err.to_string().contains("pytorch_model.bin"), "{err}");

    // Same length, one weight's bytes changed: loads, but the logits move.
    let mut damaged = bytes.clone();
    let name = b"/data/0";
    let at = damaged
        .windows(name.len())
        .position(|w| w == name)
        .expect("a pickle's first tensor record");
    for b in &mut damaged[at + 200..at + 400] {
        *b ^= 0x55;
    }
    std::fs::write(&bin, &damaged).unwrap();
    let src = ModelSource::Dir(dir.clone());
    let cfg = src.config().unwrap();
    let good = model::build(
        &cfg,
        &[fixture("bin").join("pytorch_model.bin")],
        0,
        &Device::Cpu,
    )
    .unwrap();
    // zip's CRC is checked only when an entry is read to its end, so a flipped byte either
    // fails the load or reaches the weights; it must never load as the original.
    let Ok(bad) = model::build(&cfg, &src.weight_files().unwrap(), 0, &Device::Cpu) else {
        return;
    };
    let differs = good
        .params
        .all()
        .iter()
        .zip(bad.params.all())
        .any(|((_, a), (_, b))| {
            a.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                != b.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
        });
    assert!(differs, "damaging the .bin changed no weight");
}

#[test]
fn a_checkpoint_without_a_tokenizer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bin");
    copy_variant(&fixture("bin"), &dir);
    std::fs::remove_file(dir.join("merges.txt")).unwrap();
    let err = ModelSource::Dir(dir.clone())
        .check(true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no tokenizer") && err.contains("merges.txt"),
        "{err}"
    );
    assert!(err.contains(&dir.display().to_string()), "{err}");
}

/// A micro sweep fine-tuning the Hub-layout checkpoint at `model` (pretrained weights).
fn hub_sweep(model: &Path) -> String {
    crate::cli::MICRO
        .replace(
            "name = \"tiny\"",
            &format!(
                "name = {:?}\ninit = \"pretrained\"",
                model.display().to_string()
            ),
        )
        .replace("vocab_size = 512\n", "")
        // The checkpoint's tokenizer (600 tokens) writes the synthetic task longer.
        .replace("max_seq_len = 128", "max_seq_len = 320")
        .replace("\"train.epochs\" = [1, 2]", "\"train.epochs\" = [1]")
        .replace(", \"none\"]", "]")
}

#[test]
fn plan_refuses_pretrained_weights_without_a_tokenizer_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("opt-no-tokenizer");
    copy_variant(&fixture("bin"), &model);
    std::fs::remove_file(model.join("vocab.json")).unwrap();
    let (dir, _) = crate::cli::setup(&hub_sweep(&model));
    let out = crate::cli::ablate(dir.path(), &["plan", "experiments/micro.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("model.name") && err.contains("no tokenizer"),
        "{err}"
    );
    assert!(err.contains("opt-no-tokenizer"), "{err}");
}

#[test]
fn a_hub_checkpoint_fine_tunes_with_its_own_tokenizer() {
    let (dir, _) = crate::cli::run_ok(&hub_sweep(&fixture("bin")));
    // The run's tokenizer is the checkpoint's (600 tokens), never a freshly trained one.
    let runs = dir.path().join("results/runs");
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let saved =
        tokenizers::Tokenizer::from_file(run.join("training/model/tokenizer.json")).unwrap();
    let own = ModelSource::Dir(fixture("bin"))
        .tokenizer()
        .unwrap()
        .unwrap();
    assert_eq!(saved.get_vocab(true), own.get_vocab(true));
    let r = reference(&fixture("bin"));
    for p in r["probes"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        assert_eq!(
            saved.encode(text, true).unwrap().get_ids(),
            ids_of(&p["ids"]),
            "{text:?}"
        );
    }
    // It trained with the checkpoint's dropout (0.1), recorded with the run.
    let db = rusqlite::Connection::open(dir.path().join("results/ablate.db")).unwrap();
    let rate: f64 = db
        .query_row(
            "SELECT json_extract(config_json, '$.train.dropout') FROM runs",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rate, 0.1);
}

/// Evaluation prompts longer than the checkpoint's positions (ToolBench's own prompts run
/// to thousands of tokens; this one has 512) get a `context_overflow` verdict: the run is
/// done, not aborted.
#[test]
fn prompts_beyond_the_checkpoints_positions_overflow_without_aborting_the_run() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/toolbench/ToolBench/toolllama/toolllama_G123_dfs_sample.json");
    let sweep = format!(
        "[model]\nname = {:?}\n[data]\ntrain = {sample:?}\neval = {sample:?}\n\
         template = \"toolllama\"\n[train]\nepochs = 0\n[eval]\nlimit = 3\nmax_new_tokens = 8\n",
        fixture("bin").display().to_string()
    );
    let (_dir, db) = crate::cli::run_ok(&sweep);
    let db = rusqlite::Connection::open(db).unwrap();
    let verdicts: Vec<String> = db
        .prepare("SELECT verdict FROM eval_results ORDER BY example_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(verdicts, ["context_overflow"; 3]);
    let status: String = db
        .query_row("SELECT status FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(status, "done");
}

/// A Hub-like HTTP server on 127.0.0.1 serving one model repository from a folder, as
/// huggingface.co answers hf-hub: the file list at `/api/models/<repo>/revision/main`, and
/// files at `/<repo>/resolve/main/<file>` with `Range` requests, `ETag`, `X-Repo-Commit`
/// and `Content-Range`. It stops when dropped.
struct HubServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HubServer {
    const COMMIT: &'static str = "0123456789abcdef0123456789abcdef01234567";

    fn start(repo: &str, dir: &Path) -> HubServer {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (repo, dir, flag) = (repo.to_string(), dir.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        Self::serve(stream, &repo, &dir);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        HubServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn serve(mut stream: std::net::TcpStream, repo: &str, dir: &Path) {
        use std::io::{BufRead, BufReader, Write};
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request = String::new();
        let mut range: Option<(usize, Option<usize>)> = None;
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
            if request.is_empty() {
                request = line.clone();
            } else if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                let (a, b) = v.trim().split_once('-').unwrap();
                range = Some((a.parse().unwrap(), b.parse().ok()));
            }
            line.clear();
        }
        let path = request.split(' ').nth(1).unwrap_or_default().to_string();
        let mut respond = |status: &str, headers: Vec<String>, body: &[u8]| {
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for h in headers {
                head.push_str(&h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        };
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        if path == format!("/api/models/{repo}/revision/main") {
            let siblings: Vec<Value> = files
                .iter()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            let body = serde_json::json!({ "sha": Self::COMMIT, "siblings": siblings }).to_string();
            return respond(
                "200 OK",
                vec!["Content-Type: application/json".into()],
                body.as_bytes(),
            );
        }
        let prefix = format!("/{repo}/resolve/main/");
        let Some(name) = path
            .strip_prefix(&prefix)
            .filter(|n| files.iter().any(|f| f == n))
        else {
            return respond("404 Not Found", vec![], b"not found");
        };
        let bytes = std::fs::read(dir.join(name)).unwrap();
        use sha2::Digest;
        let etag: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (start, end) = match range {
            Some((a, b)) => (a, b.unwrap_or(bytes.len() - 1).min(bytes.len() - 1)),
            None => (0, bytes.len() - 1),
        };
        respond(
            "206 Partial Content",
            vec![
                format!("ETag: \"{etag}\""),
                format!("X-Repo-Commit: {}", Self::COMMIT),
                format!("Content-Range: bytes {start}-{end}/{}", bytes.len()),
            ],
            &bytes[start..=end],
        );
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn fetch_downloads_a_hub_repository_that_plan_then_finds() {
    let server = HubServer::start("facebook/opt-tiny", &fixture("bin"));
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ablate"))
            .current_dir(tmp.path())
            .args(args)
            .without_ablate_env()
            .env_remove("HF_TOKEN")
            .env("HF_HUB_CACHE", &hub)
            .env("HF_HOME", tmp.path().join("hf-home"))
            .env("HF_ENDPOINT", format!("http://127.0.0.1:{}", server.port))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    std::fs::create_dir(tmp.path().join("experiments")).unwrap();
    std::fs::write(
        tmp.path().join("experiments/e.toml"),
        "[model]\nname = \"facebook/opt-tiny\"\n[data]\nmax_seq_len = 320\n[train]\nepochs = 1\n",
    )
    .unwrap();
    // plan never downloads: before the fetch, the model is missing.
    let out = run(&["plan", "experiments/e.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the local Hugging Face cache"));

    let out = run(&["fetch", "facebook/opt-tiny", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fetched: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files: Vec<&str> = fetched[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    // What ablate reads, and nothing else the repository has.
    assert_eq!(
        files,
        [
            "config.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.json",
            "merges.txt",
            "pytorch_model.bin"
        ]
    );
    let snapshot = Path::new(fetched[0]["snapshot"].as_str().unwrap());
    assert!(snapshot.starts_with(&hub) && snapshot.ends_with(HubServer::COMMIT));
    for f in &files {
        assert_eq!(
            std::fs::read(snapshot.join(f)).unwrap(),
            std::fs::read(fixture("bin").join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(!snapshot.join("reference.json").exists());

    let out = run(&["plan", "experiments/e.toml", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A repository the server does not have: one line naming it, exit 2.
    let out = run(&["fetch", "facebook/nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("facebook/nope") && last.contains("listing its files"),
        "{err}"
    );
}
