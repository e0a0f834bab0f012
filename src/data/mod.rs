//! Tool-calling data: examples, the chat template shared by training and inference,
//! tokenization (a BPE trained on the corpus, or a checkpoint's own), and batching.

pub mod bfcl;
pub mod cache;
pub mod pyliteral;
pub mod synthetic;
pub mod toolbench;
pub mod toolllama;

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
    /// The conversation exactly as ToolBench's SFT file has it, for the `toolllama`
    /// template; `None` for sources that have no such text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawConversation>,
}

/// An SFT entry's turns before the target (system with the API list, user, then
/// assistant / function turns and DFS's later user turns), and the target itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawConversation {
    pub turns: Vec<toolbench::ConversationTurn>,
    pub target: String,
}

/// How an example becomes text: one template for training and inference (`data.template`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// ablate's own: explicit `<|role|>` delimiters, each tool as `name(params)`, the call
    /// re-serialized as compact JSON.
    #[default]
    Compact,
    /// ToolLLaMA's: the file's turns as `System: …`, `User: …`, `Assistant: …`,
    /// `Function: …` lines (ToolBench's system prompt and API documentation as in the
    /// file), the target byte for byte. Needs ToolBench's SFT files.
    Toolllama,
}

impl Template {
    pub fn name(self) -> &'static str {
        match self {
            Template::Compact => "compact",
            Template::Toolllama => "toolllama",
        }
    }

    fn raw(self, e: &Example) -> Result<&RawConversation, DataError> {
        e.raw.as_ref().ok_or_else(|| DataError::Template {
            template: self.name(),
            message: format!(
                "example {} has no ToolBench conversation: this template needs ToolBench's \
                 SFT files (toolllama_G123_dfs_*.json)",
                e.id
            ),
        })
    }

    /// The text before the model's turn.
    pub fn prompt(self, e: &Example) -> Result<String, DataError> {
        match self {
            Template::Compact => Ok(render_prompt(e)),
            Template::Toolllama => {
                let mut text = String::new();
                for t in &self.raw(e)?.turns {
                    let role = match t.from.as_str() {
                        "system" => "System",
                        "user" => "User",
                        "function" => "Function",
                        _ => "Assistant",
                    };
                    text.push_str(&format!("{role}: {}\n", t.value));
                }
                text.push_str("Assistant: ");
                Ok(text)
            }
        }
    }

    /// The model's turn (the training target, and the gold text beside predictions).
    pub fn completion(self, e: &Example) -> Result<String, DataError> {
        match self {
            Template::Compact => Ok(render_completion(e)),
            Template::Toolllama => Ok(self.raw(e)?.target.clone()),
        }
    }
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
    /// ToolBench's / StableToolBench's test queries (`test_instruction/<group>.json`, or a
    /// folder of them): no gold steps, evaluated as agent episodes only.
    Queries(std::path::PathBuf),
    /// A JSON file in ToolBench's SFT format (`toolllama_G123_dfs_*.json`): one example
    /// per entry, the entry's last assistant turn as its target.
    Conversations(std::path::PathBuf),
}

impl Source {
    pub fn parse(spec: &str) -> Source {
        let p = Path::new(spec);
        if spec == "synthetic" {
            Source::Synthetic
        } else if p.is_dir() {
            let is_queries = p.join("test_instruction").is_dir()
                || p.file_name().is_some_and(|n| n == "test_instruction");
            if is_queries {
                Source::Queries(p.to_path_buf())
            } else {
                Source::ToolBench(p.to_path_buf())
            }
        } else if toolbench::looks_like_query_set(p) {
            Source::Queries(p.to_path_buf())
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
            Source::ToolBench(_) | Source::Conversations(_) | Source::Queries(_) => "toolbench",
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
            Source::Conversations(f) => Some(toolllama::load(f)?),
            // Queries have no gold steps: their evaluation is the agent's episodes.
            Source::Queries(_) => Some(Vec::new()),
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

/// The compact template: explicit delimiters, the same text for training and inference.
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

/// The gold assistant turn in ReAct form (the compact template's).
pub fn render_completion(e: &Example) -> String {
    format!(
        "Thought: {}\nAction: {}\nAction Input: {}",
        e.thought,
        e.gold.name,
        serde_json::to_string(&e.gold.arguments).expect("json")
    )
}

/// A call in the compact template's ReAct form; an input that is JSON is re-serialized
/// compactly, anything else kept as written.
pub fn react_text(thought: &str, action: &str, input: &str) -> String {
    let input = serde_json::from_str::<Value>(input)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| input.to_string());
    format!("Thought: {thought}\nAction: {action}\nAction Input: {input}")
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("data.template = \"{template}\": {message}")]
    Template {
        template: &'static str,
        message: String,
    },
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
pub fn encode_prompt(
    tok: &Tokenizer,
    e: &Example,
    template: Template,
) -> Result<Vec<u32>, DataError> {
    let mut ids = vec![EOS_ID];
    ids.extend(encode(tok, &template.prompt(e)?)?);
    Ok(ids)
}

/// The prompt's ids if they fit in `room` tokens, leaving out the oldest earlier steps
/// (after the system turn and the query) as far as needed; `None` when even the bare
/// prompt does not fit.
pub fn fit_prompt(
    tok: &Tokenizer,
    e: &Example,
    template: Template,
    room: usize,
) -> Result<Option<Vec<u32>>, DataError> {
    first_fitting(e, 0, room, |x| encode_prompt(tok, x, template), Vec::len)
}

/// The encoding of `e` less its `skip`, `skip + 1`, … oldest earlier steps (the first with
/// fewer that fits in `room` tokens), or `None` when even the bare one does not fit.
fn first_fitting<T>(
    e: &Example,
    skip: usize,
    room: usize,
    encode: impl Fn(&Example) -> Result<T, DataError>,
    len: impl Fn(&T) -> usize,
) -> Result<Option<T>, DataError> {
    for k in skip..=e.history.len() {
        let enc = if k == 0 {
            encode(e)?
        } else {
            encode(&e.without_oldest_steps(k))?
        };
        if len(&enc) <= room {
            return Ok(Some(enc));
        }
    }
    Ok(None)
}

/// BOS + prompt + completion + EOS, whole, with its labels.
pub fn encode_example(
    tok: &Tokenizer,
    e: &Example,
    template: Template,
    loss_on: LossOn,
) -> Result<Encoded, DataError> {
    // Prompt and completion are encoded apart so no BPE merge crosses the boundary, and
    // inference sees exactly the prompt ids that training did.
    let prompt = encode_prompt(tok, e, template)?;
    let mut completion = encode(tok, &template.completion(e)?)?;
    completion.push(EOS_ID);
    let mut ids = prompt.clone();
    ids.extend(&completion);
    let mut labels: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    if loss_on == LossOn::Completion {
        for l in labels.iter_mut().take(prompt.len()) {
            *l = -100;
        }
    }
    Ok(Encoded { ids, labels })
}

impl Encoded {
    /// Positions that count in the loss (labels after the shift, as `Batch` counts them).
    pub fn scored(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != -100).count()
    }
}

/// What to do with an example longer than `data.max_seq_len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Cut from the right (TRL's default): the end of the target goes first.
    #[default]
    KeepStart,
    /// Keep the system turn, the query and the target; leave out the oldest earlier
    /// steps until it fits.
    KeepEnd,
    /// Leave the example out.
    Drop,
}

impl Truncation {
    pub fn name(self) -> &'static str {
        match self {
            Truncation::KeepStart => "keep_start",
            Truncation::KeepEnd => "keep_end",
            Truncation::Drop => "drop",
        }
    }
}

/// What fitting one example into the length limit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    Whole,
    Truncated,
    /// Left out: `drop`, or nothing scored would remain.
    Dropped,
}

/// A split's tokenized examples and what fitting them to the length limit did.
#[derive(Debug, Clone, Default)]
pub struct EncodedSplit {
    pub examples: Vec<Encoded>,
    pub truncated: usize,
    pub dropped: usize,
    /// Each example's length in tokens before any cut, in input order.
    pub lengths: Vec<usize>,
}

/// Token lengths of a split before any cut, for choosing `data.max_seq_len`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LengthStats {
    pub min: usize,
    pub median: usize,
    pub p95: usize,
    pub max: usize,
}

impl EncodedSplit {
    pub fn length_stats(&self) -> LengthStats {
        let mut lens = self.lengths.clone();
        lens.sort_unstable();
        let q = |p: f64| -> usize {
            if lens.is_empty() {
                return 0;
            }
            lens[((lens.len() - 1) as f64 * p).round() as usize]
        };
        LengthStats {
            min: q(0.0),
            median: q(0.5),
            p95: q(0.95),
            max: q(1.0),
        }
    }
}

/// Settings that turn examples into training sequences.
#[derive(Debug, Clone, Copy)]
pub struct Encoding {
    pub template: Template,
    pub loss_on: LossOn,
    pub max_len: usize,
    pub truncation: Truncation,
}

impl Encoding {
    /// Tokenizes a split in parallel, fitting each example to `max_len`. An example whose
    /// scored tokens would all be cut is dropped, never trained as a zero loss.
    pub fn split(&self, tok: &Tokenizer, examples: &[Example]) -> Result<EncodedSplit, DataError> {
        use rayon::prelude::*;
        let fitted: Vec<(Option<Encoded>, Fit, usize)> = examples
            .par_iter()
            .map(|e| self.fit(tok, e))
            .collect::<Result<_, _>>()?;
        let mut out = EncodedSplit::default();
        for (enc, fit, len) in fitted {
            out.lengths.push(len);
            match fit {
                Fit::Whole => {}
                Fit::Truncated => out.truncated += 1,
                Fit::Dropped => out.dropped += 1,
            }
            out.examples.extend(enc);
        }
        Ok(out)
    }

    /// One example fitted to `max_len`, how, and its whole length.
    pub fn fit(
        &self,
        tok: &Tokenizer,
        e: &Example,
    ) -> Result<(Option<Encoded>, Fit, usize), DataError> {
        let mut enc = encode_example(tok, e, self.template, self.loss_on)?;
        let len = enc.ids.len();
        if len <= self.max_len {
            return Ok((Some(enc), Fit::Whole, len));
        }
        let fitted = match self.truncation {
            Truncation::Drop => None,
            Truncation::KeepStart => {
                enc.ids.truncate(self.max_len);
                enc.labels.truncate(self.max_len);
                Some(enc)
            }
            Truncation::KeepEnd => first_fitting(
                e,
                1,
                self.max_len,
                |x| encode_example(tok, x, self.template, self.loss_on),
                |enc| enc.ids.len(),
            )?,
        };
        Ok(match fitted.filter(|f| f.scored() > 0) {
            Some(f) => (Some(f), Fit::Truncated, len),
            None => (None, Fit::Dropped, len),
        })
    }
}

impl Example {
    /// The example without its `k` oldest earlier steps (calls with their observations,
    /// and any user turns between them), in every template's text.
    pub fn without_oldest_steps(&self, k: usize) -> Example {
        let mut e = self.clone();
        e.history.drain(..k.min(e.history.len()));
        if let Some(raw) = &mut e.raw {
            // History starts after the first user turn; each step ends before the next
            // assistant turn.
            let start = raw
                .turns
                .iter()
                .position(|t| t.from == "user")
                .map_or(0, |p| p + 1);
            let mut end = start;
            let mut seen = 0;
            while end < raw.turns.len() {
                if raw.turns[end].from == "assistant" {
                    if seen == k {
                        break;
                    }
                    seen += 1;
                }
                end += 1;
            }
            raw.turns.drain(start..end);
        }
        e
    }
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

/// A run's examples: what it trains on (the leak guard and any held-out validation
/// applied), validates on and is evaluated on.
#[derive(Debug, Clone)]
pub struct Splits {
    pub train: Vec<Example>,
    /// Never drawn from the evaluation set (see `DataConfig::val`).
    pub val: Vec<Example>,
    pub eval: Vec<Example>,
    /// Training examples left out because their query is in the evaluation set.
    pub left_out: usize,
}

/// Seeds of the synthetic task's splits, apart from its training split's `data.seed`.
const SYNTHETIC_TEST: u64 = 0x5eed_7e57;
const SYNTHETIC_VAL: u64 = 0x5eed_7a11;

/// Which tokens of an example carry the loss (`train.loss_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossOn {
    /// Loss on the assistant's completion only (TRL's completion-only collator).
    Completion,
    /// Loss on every token.
    All,
}

/// Where a run's examples come from: the data keys of `[data]` that choose examples, with
/// their sources parsed (the config builds one; data never reads the config).
#[derive(Debug, Clone, Copy)]
pub struct SplitSpec<'a> {
    pub train: &'a Source,
    pub eval: &'a Source,
    /// A validation source, or None (see `val_fraction`).
    pub val: Option<&'a Source>,
    pub val_fraction: f64,
    pub n_train: usize,
    pub n_test: usize,
    pub seed: u64,
}

fn train_and_eval(d: &SplitSpec) -> Result<(Vec<Example>, Vec<Example>), DataError> {
    let train = d
        .train
        .load()?
        .unwrap_or_else(|| synthetic::generate(d.n_train, d.seed, "train"));
    Ok((train, eval_examples(d)?))
}

/// The evaluation set alone (the leak guard changes only the training split), for the
/// stages that generate or judge without training.
pub fn eval_examples(d: &SplitSpec) -> Result<Vec<Example>, DataError> {
    Ok(d.eval
        .load()?
        .unwrap_or_else(|| synthetic::generate(d.n_test, d.seed ^ SYNTHETIC_TEST, "test")))
}

/// The distinct training queries the leak guard leaves out (they are evaluation queries),
/// sorted: what a training's identity needs to know of its evaluation set.
pub fn left_out_queries(d: &SplitSpec) -> Result<Vec<String>, DataError> {
    let (train, eval) = train_and_eval(d)?;
    let asked = query_set_queries(d.eval)?;
    let evaluated = evaluated_queries(&eval, &asked);
    let out: std::collections::BTreeSet<String> = train
        .iter()
        .filter(|e| evaluated.contains(e.query.as_str()))
        .map(|e| e.query.clone())
        .collect();
    Ok(out.into_iter().collect())
}

/// The queries of a query set (which has no examples, only queries to answer).
fn query_set_queries(eval: &Source) -> Result<Vec<String>, DataError> {
    Ok(match eval {
        Source::Queries(p) => toolbench::load_query_set(p)?
            .into_iter()
            .map(|(_, q)| q.query)
            .collect(),
        _ => Vec::new(),
    })
}

/// The queries a run is evaluated on: its examples' and its query set's (as written and
/// trimmed, since the SFT files trim them).
fn evaluated_queries<'a>(
    eval: &'a [Example],
    asked: &'a [String],
) -> std::collections::HashSet<&'a str> {
    eval.iter()
        .map(|e| e.query.as_str())
        .chain(asked.iter().flat_map(|q| [q.as_str(), q.trim()]))
        .collect()
}

/// Loads a run's splits as its data config says.
pub fn splits(d: &SplitSpec) -> Result<Splits, DataError> {
    let (train, eval) = train_and_eval(d)?;
    let asked = query_set_queries(d.eval)?;
    let evaluated = evaluated_queries(&eval, &asked);
    let (train, left_out) = leave_out_queries(train, &evaluated);
    let synthetic_val = || synthetic::generate(d.n_test, d.seed ^ SYNTHETIC_VAL, "val");
    let (train, val) = if let Some(v) = d.val {
        (train, v.load()?.unwrap_or_else(synthetic_val))
    } else if d.val_fraction > 0.0 {
        hold_out_by_query(train, d.val_fraction, d.seed)
    } else if *d.train == Source::Synthetic {
        (train, synthetic_val())
    } else {
        (train, Vec::new())
    };
    Ok(Splits {
        train,
        val,
        eval,
        left_out,
    })
}

/// Holds out about `fraction` of the distinct queries (at least one when there are two or
/// more), chosen by a shuffle seeded by `seed`: every step of a held-out query goes to the
/// second list, so training and validation never share a query.
pub fn hold_out_by_query(
    examples: Vec<Example>,
    fraction: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let mut queries: Vec<&str> = examples.iter().map(|e| e.query.as_str()).collect();
    queries.sort_unstable();
    queries.dedup();
    let n = ((queries.len() as f64 * fraction).round() as usize)
        .max(usize::from(fraction > 0.0 && queries.len() > 1))
        .min(queries.len().saturating_sub(1));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x7a11_da7e);
    queries.shuffle(&mut rng);
    let held: std::collections::HashSet<String> =
        queries[..n].iter().map(|q| q.to_string()).collect();
    examples.into_iter().partition(|e| !held.contains(&e.query))
}

/// Leaves out the training examples whose query is one of `evaluated` (a query the run
/// is tested on must not be trained on); returns the kept ones and how many were left out.
pub fn leave_out_queries(
    examples: Vec<Example>,
    evaluated: &std::collections::HashSet<&str>,
) -> (Vec<Example>, usize) {
    let before = examples.len();
    let kept: Vec<Example> = examples
        .into_iter()
        .filter(|e| !evaluated.contains(e.query.as_str()))
        .collect();
    let left_out = before - kept.len();
    (kept, left_out)
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

    /// A three-step ToolBench example (two earlier calls with long observations) and a
    /// tokenizer trained on it.
    fn long_example() -> (Tokenizer, Example) {
        let mut e = synthetic::generate(1, 7, "train").remove(0);
        e.history = (0..2)
            .map(|k| Turn {
                assistant: format!("Thought: step {k}\nAction: lookup\nAction Input: {{}}"),
                observation: "observation text ".repeat(40),
            })
            .collect();
        let texts = vec![format!("{}{}", render_prompt(&e), render_completion(&e))];
        (train_tokenizer(&texts, 400).unwrap(), e)
    }

    #[test]
    fn a_prompt_that_does_not_fit_loses_its_oldest_steps_or_overflows() {
        let (tok, e) = long_example();
        let c = Template::Compact;
        let whole = encode_prompt(&tok, &e, c).unwrap();
        assert_eq!(
            fit_prompt(&tok, &e, c, whole.len()).unwrap(),
            Some(whole.clone())
        );
        let one_less = encode_prompt(&tok, &e.without_oldest_steps(1), c).unwrap();
        assert!(one_less.len() < whole.len());
        assert_eq!(
            fit_prompt(&tok, &e, c, whole.len() - 1).unwrap(),
            Some(one_less)
        );
        let bare = encode_prompt(&tok, &e.without_oldest_steps(2), c).unwrap();
        assert_eq!(fit_prompt(&tok, &e, c, bare.len() - 1).unwrap(), None);
    }

    #[test]
    fn validation_and_training_never_share_a_query_and_eval_queries_are_left_out() {
        let mut ex = synthetic::generate(40, 3, "train");
        // Two steps per query, as a ToolBench trajectory has.
        for (i, e) in ex.iter_mut().enumerate() {
            e.query = format!("query {}", i / 2);
        }
        let (train, val) = hold_out_by_query(ex.clone(), 0.25, 9);
        assert_eq!(train.len() + val.len(), 40);
        assert_eq!(val.len(), 10, "5 of 20 queries, 2 steps each");
        let held: std::collections::HashSet<&str> = val.iter().map(|e| e.query.as_str()).collect();
        assert!(train.iter().all(|e| !held.contains(e.query.as_str())));
        assert_eq!(hold_out_by_query(ex.clone(), 0.25, 9).1, val, "seeded");
        assert_ne!(hold_out_by_query(ex.clone(), 0.25, 10).1, val);

        let evaluated: std::collections::HashSet<&str> = ["query 0", "query 7"].into();
        let (kept, left_out) = leave_out_queries(ex, &evaluated);
        assert_eq!((kept.len(), left_out), (36, 4));
        assert!(kept.iter().all(|e| !evaluated.contains(e.query.as_str())));
    }

    #[test]
    fn an_example_whose_target_is_cut_away_is_dropped_not_trained() {
        let (tok, e) = long_example();
        let c = Template::Compact;
        let whole = encode_example(&tok, &e, c, LossOn::Completion).unwrap();
        let prompt = encode_prompt(&tok, &e, c).unwrap().len();
        let enc = |max_len, truncation| Encoding {
            template: c,
            loss_on: LossOn::Completion,
            max_len,
            truncation,
        };
        // Room for the prompt only: keep_start would keep no scored token.
        let (kept, fit, len) = enc(prompt, Truncation::KeepStart).fit(&tok, &e).unwrap();
        assert_eq!((kept, fit, len), (None, Fit::Dropped, whole.ids.len()));
        // A little more: cut, with a part of the target still scored.
        let (kept, fit, _) = enc(prompt + 3, Truncation::KeepStart)
            .fit(&tok, &e)
            .unwrap();
        assert_eq!(fit, Fit::Truncated);
        assert_eq!(kept.unwrap().scored(), 3);
        // keep_end leaves out the oldest step and keeps the whole target.
        let without_one =
            encode_example(&tok, &e.without_oldest_steps(1), c, LossOn::Completion).unwrap();
        let (kept, fit, _) = enc(without_one.ids.len(), Truncation::KeepEnd)
            .fit(&tok, &e)
            .unwrap();
        assert_eq!((kept.as_ref(), fit), (Some(&without_one), Fit::Truncated));
        assert_eq!(kept.unwrap().scored(), whole.scored());
        // drop leaves out whatever does not fit; what fits is untouched.
        let (kept, fit, _) = enc(whole.ids.len() - 1, Truncation::Drop)
            .fit(&tok, &e)
            .unwrap();
        assert_eq!((kept, fit), (None, Fit::Dropped));
        let split = enc(prompt, Truncation::KeepStart)
            .split(&tok, &[e.clone(), e.clone()])
            .unwrap();
        assert_eq!(
            (split.examples.len(), split.dropped, split.truncated),
            (0, 2, 0)
        );
        let split = enc(whole.ids.len(), Truncation::KeepStart)
            .split(&tok, &[e])
            .unwrap();
        assert_eq!(
            (split.examples, split.dropped, split.truncated),
            (vec![whole], 0, 0)
        );
    }

    #[test]
    fn tokenizer_roundtrips_and_masks_the_prompt() {
        let ex = synthetic::generate(200, 1, "train");
        let texts: Vec<String> = ex
            .iter()
            .map(|e| format!("{}{}", render_prompt(e), render_completion(e)))
            .collect();
        let tok = train_tokenizer(&texts, 400).unwrap();
        assert_eq!(tok.get_vocab_size(true), 400);
        let c = Template::Compact;
        let enc = encode_example(&tok, &ex[0], c, LossOn::Completion).unwrap();
        let prompt = encode_prompt(&tok, &ex[0], c).unwrap();
        assert_eq!(enc.ids[..prompt.len()], prompt[..]);
        assert!(enc.labels[..prompt.len()].iter().all(|&l| l == -100));
        assert_eq!(*enc.ids.last().unwrap(), EOS_ID);
        let text = decode(&tok, &enc.ids[prompt.len()..]).unwrap();
        assert_eq!(text, render_completion(&ex[0]));
        let all = encode_example(&tok, &ex[0], c, LossOn::All).unwrap();
        assert!(all.labels.iter().all(|&l| l >= 0));
        let b = Batch::from_examples(&[&enc, &all]);
        assert_eq!(
            b.loss_tokens(),
            (enc.ids.len() - prompt.len()) + all.ids.len() - 1
        );
    }
}
