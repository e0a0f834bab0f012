//! Tokenizing ToolBench's SFT data: ablate against Python `tokenizers` (the fast tokenizer
//! TRL's SFTTrainer uses, `encode_batch`), same machine, same threads, same texts.
//!
//! The shared toolllama sample (41 entries, as ToolBench's preprocessing writes them) is
//! replicated to `--examples`, written with the toolllama template, and tokenized by the
//! Hub fixture's tokenizer (vocab.json + merges.txt, built as AutoTokenizer builds it).
//! ablate's time covers rendering the template and tokenizing prompt and completion apart
//! (`data::Encoding::split`, parallel); nothing is cut (the limit is above every length).
//! The tokenizer and the 41 distinct (prompt, completion) pairs go to `--out` for
//! scripts/bench_tokenize.py, which replicates them the same way and encodes prompts and
//! completions with `encode_batch`. Both print a checksum of the ids, which must agree.
//!
//!   cargo bench --bench tokenize -- --examples 200000 --out results/bench/tokenize

use std::path::PathBuf;
use std::time::Instant;

mod common;

use ablate::config::LossOn;
use ablate::data::{Encoding, Source, Template, Truncation};
use ablate::model::ModelSource;
use common::arg;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = arg(&args, "--examples", "200000")
        .parse()
        .expect("--examples");
    let out = PathBuf::from(arg(&args, "--out", "results/bench/tokenize"));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let sample = root.join("data/toolbench/ToolBench/toolllama/toolllama_G123_dfs_sample.json");
    let distinct = Source::parse(sample.to_str().unwrap())
        .load()
        .expect("sample")
        .expect("a file source");
    let tok = ModelSource::Dir(root.join("fixtures/opt-hub/bin"))
        .tokenizer()
        .expect("tokenizer")
        .expect("the fixture has one");
    let template = Template::Toolllama;

    std::fs::create_dir_all(&out).expect("--out");
    tok.save(out.join("tokenizer.json"), false)
        .expect("save tokenizer");
    let pairs: Vec<[String; 2]> = distinct
        .iter()
        .map(|e| [template.prompt(e).unwrap(), template.completion(e).unwrap()])
        .collect();
    std::fs::write(
        out.join("texts.json"),
        serde_json::to_string(&pairs).unwrap(),
    )
    .unwrap();

    let examples: Vec<_> = distinct.iter().cycle().take(n).cloned().collect();
    let encoding = Encoding {
        template,
        loss_on: LossOn::Completion,
        max_len: usize::MAX,
        truncation: Truncation::KeepStart,
    };
    let t0 = Instant::now();
    let split = encoding.split(&tok, &examples).expect("tokenize");
    let seconds = t0.elapsed().as_secs_f64();

    // Without BOS and EOS, which `encode_batch` of the bare texts does not add.
    let mut tokens = 0usize;
    let mut checksum = 0u64;
    for e in &split.examples {
        let body = &e.ids[1..e.ids.len() - 1];
        tokens += body.len();
        checksum = checksum.wrapping_add(weighted(body));
    }
    assert_eq!((split.truncated, split.dropped), (0, 0));
    println!(
        "{}",
        serde_json::json!({
            "tool": "ablate",
            "examples": n,
            "tokens": tokens,
            "seconds": seconds,
            "examples_per_s": n as f64 / seconds,
            "tokens_per_s": tokens as f64 / seconds,
            "threads": rayon::current_num_threads(),
            "checksum": checksum,
        })
    );
}

/// A position-weighted sum of one sequence's ids (scripts/bench_tokenize.py computes the
/// same), so equal checksums mean equal tokenizations in all likelihood.
fn weighted(ids: &[u32]) -> u64 {
    ids.iter()
        .enumerate()
        .map(|(i, &id)| id as u64 * (i as u64 % 7919 + 1))
        .fold(0u64, u64::wrapping_add)
}
