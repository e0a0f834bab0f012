//! Tool-calling data: examples, the chat template shared by training and inference,
//! tokenization (a BPE trained on the corpus, or a checkpoint's own), and batching.

pub mod bfcl;
pub mod synthetic;
pub mod toolbench;

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::config::LossOn;

/// A tool offered to the model, with JSON-schema parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

impl ToolSpec {
    /// From an OpenAI-style function object (`name`, `description`, `parameters`), as
    /// ToolBench and BFCL write them.
    pub fn from_json(f: &Value) -> ToolSpec {
        ToolSpec {
            name: f["name"].as_str().unwrap_or_default().to_string(),
            description: f["description"].as_str().unwrap_or_default().to_string(),
            parameters: f["parameters"].clone(),
        }
    }

    pub fn required(&self) -> Vec<String> {
        self.parameters["required"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn properties(&self) -> Vec<String> {
        self.parameters["properties"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldCall {
    pub name: String,
    pub arguments: Value,
}

/// One single-step tool-calling example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub category: String,
    pub tools: Vec<ToolSpec>,
    pub query: String,
    pub thought: String,
    pub gold: GoldCall,
    /// BFCL's function documents and possible answers, for the `bfcl` evaluator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfcl: Option<BfclTruth>,
    /// Earlier steps of a multi-step episode (ToolBench), with their observations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Turn>,
}

/// One earlier assistant turn (ReAct text) and the function's answer to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub assistant: String,
    pub observation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BfclTruth {
    pub functions: Vec<Value>,
    /// `[{function_name: {param: [allowed values]}}]`; empty for irrelevance.
    pub ground_truth: Vec<serde_json::Map<String, Value>>,
}

/// Where a split's examples come from, by `data.train` / `data.eval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in synthetic task.
    Synthetic,
    /// A BFCL question file (evaluation only).
    Bfcl(std::path::PathBuf),
    /// A directory of ToolBench DFS answer files: one example per assistant step.
    ToolBench(std::path::PathBuf),
    /// A JSON file in ToolBench's `conversations` SFT format: one example per assistant step.
    Conversations(std::path::PathBuf),
}

impl Source {
    pub fn parse(spec: &str) -> Source {
        let p = Path::new(spec);
        if spec == "synthetic" {
            Source::Synthetic
        } else if p.is_dir() {
            Source::ToolBench(p.to_path_buf())
        } else if starts_with_bracket(p) {
            // A JSON list; BFCL's files are JSON Lines of objects.
            Source::Conversations(p.to_path_buf())
        } else {
            Source::Bfcl(p.to_path_buf())
        }
    }

    /// The `dataset` column of the verdicts it produces.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Synthetic => "synthetic",
            Source::Bfcl(_) => "bfcl",
            Source::ToolBench(_) | Source::Conversations(_) => "toolbench",
        }
    }

    /// The examples of a file source (`None` for the synthetic task, which is generated
    /// with a size and seed).
    pub fn load(&self) -> Result<Option<Vec<Example>>, DataError> {
        Ok(match self {
            Source::Synthetic => None,
            Source::Bfcl(p) => Some(bfcl::load(p)?),
            Source::ToolBench(d) => Some(
                toolbench::load_answers(d)?
                    .iter()
                    .flat_map(toolbench::Trajectory::step_examples)
                    .collect(),
            ),
            Source::Conversations(f) => Some(
                toolbench::load_conversations(f)?
                    .iter()
                    .flat_map(toolbench::Trajectory::step_examples)
                    .collect(),
            ),
        })
    }
}

/// Whether a file's first non-blank byte is `[` (read from its first 4 KiB).
fn starts_with_bracket(p: &Path) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    let n = std::fs::File::open(p)
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    buf[..n]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'[')
}

pub const BOS: &str = "</s>";
pub const EOS_ID: u32 = 2;
pub const PAD_ID: u32 = 1;
pub const SPECIALS: [&str; 4] = ["<s>", "<pad>", "</s>", "<unk>"];

/// The chat template: explicit delimiters, the same text for training and inference.
pub fn render_prompt(e: &Example) -> String {
    let tools: Vec<String> = e
        .tools
        .iter()
        .map(|t| format!("{}({})", t.name, t.properties().join(", ")))
        .collect();
    let mut text = format!(
        "<|system|>\nTools: {}\n<|user|>\n{}\n",
        tools.join("; "),
        e.query
    );
    for t in &e.history {
        text.push_str(&format!(
            "<|assistant|>\n{}\n<|function|>\n{}\n",
            t.assistant, t.observation
        ));
    }
    text.push_str("<|assistant|>\n");
    text
}

/// The gold assistant turn in ReAct form.
pub fn render_completion(e: &Example) -> String {
    format!(
        "Thought: {}\nAction: {}\nAction Input: {}",
        e.thought,
        e.gold.name,
        serde_json::to_string(&e.gold.arguments).expect("json")
    )
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

fn tok_err(e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer(e.to_string())
}

/// Trains a byte-level BPE on `texts` with OPT's special tokens at ids 0..=3 and OPT's
/// post-processor (BOS `</s>` prepended when special tokens are added).
pub fn train_tokenizer(texts: &[String], vocab_size: usize) -> Result<Tokenizer, DataError> {
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tok.train(&mut trainer, texts.iter()).map_err(tok_err)?;
    let post = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A"))
        .map_err(tok_err)?
        .special_tokens(vec![(BOS, EOS_ID)])
        .build()
        .map_err(tok_err)?;
    tok.with_post_processor(Some(post));
    for (i, s) in SPECIALS.iter().enumerate() {
        if tok.token_to_id(s) != Some(i as u32) {
            return Err(DataError::Tokenizer(format!(
                "special token {s} is not at id {i}"
            )));
        }
    }
    Ok(tok)
}

pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, DataError> {
    Tokenizer::from_file(path).map_err(|e| DataError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, DataError> {
    Ok(tok.encode(text, false).map_err(tok_err)?.get_ids().to_vec())
}

pub fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String, DataError> {
    tok.decode(ids, true).map_err(tok_err)
}

/// A tokenized training sequence: BOS + prompt + completion + EOS, with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// -100 where no loss is taken.
    pub labels: Vec<i64>,
}

/// The prompt's ids as the model sees them at inference: BOS + prompt.
pub fn encode_prompt(tok: &Tokenizer, e: &Example) -> Result<Vec<u32>, DataError> {
    let mut ids = vec![EOS_ID];
    ids.extend(encode(tok, &render_prompt(e))?);
    Ok(ids)
}

pub fn encode_example(
    tok: &Tokenizer,
    e: &Example,
    loss_on: LossOn,
    max_len: usize,
) -> Result<Encoded, DataError> {
    // Prompt and completion are encoded apart so no BPE merge crosses the boundary, and
    // inference sees exactly the prompt ids that training did.
    let prompt = encode_prompt(tok, e)?;
    let mut completion = encode(tok, &render_completion(e))?;
    completion.push(EOS_ID);
    let mut ids = prompt.clone();
    ids.extend(&completion);
    let mut labels: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    if loss_on == LossOn::Completion {
        for l in labels.iter_mut().take(prompt.len()) {
            *l = -100;
        }
    }
    ids.truncate(max_len);
    labels.truncate(max_len);
    Ok(Encoded { ids, labels })
}

/// A right-padded batch (TRL's default).
#[derive(Debug, Clone)]
pub struct Batch {
    pub ids: Vec<u32>,
    pub mask: Vec<Vec<u8>>,
    pub labels: Vec<Vec<i64>>,
    pub rows: usize,
    pub len: usize,
}

impl Batch {
    pub fn from_examples(items: &[&Encoded]) -> Batch {
        let len = items.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(items.len() * len);
        let mut mask = Vec::with_capacity(items.len());
        let mut labels = Vec::with_capacity(items.len());
        for e in items {
            let pad = len - e.ids.len();
            ids.extend(
                e.ids
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(PAD_ID, pad)),
            );
            mask.push(
                std::iter::repeat_n(1u8, e.ids.len())
                    .chain(std::iter::repeat_n(0, pad))
                    .collect(),
            );
            labels.push(
                e.labels
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(-100, pad))
                    .collect(),
            );
        }
        Batch {
            ids,
            mask,
            labels,
            rows: items.len(),
            len,
        }
    }

    /// Label positions that count in the loss (after the shift).
    pub fn loss_tokens(&self) -> usize {
        self.labels
            .iter()
            .map(|r| r.iter().skip(1).filter(|&&l| l != -100).count())
            .sum()
    }

    pub fn tokens(&self) -> usize {
        self.mask
            .iter()
            .map(|r| r.iter().filter(|&&m| m == 1).count())
            .sum()
    }
}

/// The order of training examples in an epoch: a shuffle seeded by (seed, epoch), so a
/// resumed run sees the same order.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
    idx.shuffle(&mut rng);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_roundtrips_and_masks_the_prompt() {
        let ex = synthetic::generate(200, 1, "train");
        let texts: Vec<String> = ex
            .iter()
            .map(|e| format!("{}{}", render_prompt(e), render_completion(e)))
            .collect();
        let tok = train_tokenizer(&texts, 400).unwrap();
        assert_eq!(tok.get_vocab_size(true), 400);
        let enc = encode_example(&tok, &ex[0], LossOn::Completion, 512).unwrap();
        let prompt = encode_prompt(&tok, &ex[0]).unwrap();
        assert_eq!(enc.ids[..prompt.len()], prompt[..]);
        assert!(enc.labels[..prompt.len()].iter().all(|&l| l == -100));
        assert_eq!(*enc.ids.last().unwrap(), EOS_ID);
        let text = decode(&tok, &enc.ids[prompt.len()..]).unwrap();
        assert_eq!(text, render_completion(&ex[0]));
        let all = encode_example(&tok, &ex[0], LossOn::All, 512).unwrap();
        assert!(all.labels.iter().all(|&l| l >= 0));
        let b = Batch::from_examples(&[&enc, &all]);
        assert_eq!(
            b.loss_tokens(),
            (enc.ids.len() - prompt.len()) + all.ids.len() - 1
        );
    }
}
