//! The resolved configuration of one run. Everything in here feeds the run id, so a
//! field that does not change results (a display name, a path for output) does not belong.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::data::LossOn;
use crate::data::{Source, SplitSpec, Template, Truncation};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A preset (`tiny`, `small`, `opt-125m`, `opt-350m`, `opt-1.3b`), a local HF model
    /// directory, an HF repo id resolved through the local Hugging Face cache, or
    /// `openai:<model>`: a model behind an OpenAI-compatible endpoint (`[model.endpoint]`),
    /// which is only evaluated, never trained.
    pub name: String,
    /// `auto`: random for presets, pretrained weights otherwise.
    pub init: ModelInit,
    /// `cpu`, `cuda:N` or `auto`.
    pub device: DeviceSpec,
    /// `[model.endpoint]`: where an `openai:<model>` is served.
    #[serde(default)]
    pub endpoint: EndpointConfig,
}

/// The prefix of a `model.name` served by an OpenAI-compatible endpoint.
pub const ENDPOINT_PREFIX: &str = "openai:";

impl ModelConfig {
    /// The endpoint's model name, when `model.name` is `openai:<model>`.
    pub fn endpoint_model(&self) -> Option<&str> {
        self.name.strip_prefix(ENDPOINT_PREFIX)
    }
}

/// `[model.endpoint]`: an OpenAI-compatible chat-completions server. The API key is read
/// from the environment variable named here, at run time; it is never written anywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    /// Base URL, e.g. "https://api.openai.com/v1"; `/chat/completions` is appended.
    pub url: String,
    /// The environment variable holding the API key (unset: no Authorization header).
    pub api_key_env: String,
    /// Seconds per request before it is retried (3 attempts in all).
    pub timeout_s: u64,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            url: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            timeout_s: 120,
        }
    }
}

/// `model.device`, spelled `cpu`, `auto` or `cuda:N` in files, ids and the database.
/// `auto` means one thing everywhere: the first GPU when ablate was built with CUDA and
/// one is present, else the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceSpec {
    Cpu,
    Auto,
    Cuda(usize),
}

impl DeviceSpec {
    /// Whether the run computes on a GPU (what `auto` resolves to on this machine).
    pub fn is_gpu(self) -> bool {
        match self {
            DeviceSpec::Cpu => false,
            DeviceSpec::Cuda(_) => true,
            DeviceSpec::Auto => candle_core::utils::cuda_is_available(),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("expected \"cpu\", \"auto\" or \"cuda:N\", found \"{s}\"")),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelInit {
    Auto,
    Random,
    Pretrained,
}

/// A data source as written in a file (`synthetic`, a file or a folder), parsed once when
/// the configuration is read: what kind of source it is depends on the file system (a
/// folder of answer files, a JSON list, JSON Lines), so it is decided once and carried.
/// Spelled as written in ids and the database.
#[derive(Debug, Clone)]
pub struct DataSource {
    spec: String,
    /// None for an empty spec (no such source).
    source: Option<Source>,
}

impl DataSource {
    pub fn new(spec: &str) -> DataSource {
        DataSource {
            spec: spec.to_string(),
            source: (!spec.is_empty()).then(|| Source::parse(spec)),
        }
    }

    /// What it is; None when the key is empty.
    pub fn source(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    pub fn is_synthetic(&self) -> bool {
        matches!(self.source, Some(Source::Synthetic))
    }

    pub fn is_toolbench(&self) -> bool {
        matches!(self.source, Some(Source::ToolBench(_)))
    }

    pub fn is_bfcl(&self) -> bool {
        matches!(self.source, Some(Source::Bfcl(_)))
    }

    /// ToolBench's test queries (`test_instruction/<group>.json` or a folder of them).
    pub fn is_query_set(&self) -> bool {
        matches!(self.source, Some(Source::Queries(_)))
    }
}

impl std::ops::Deref for DataSource {
    type Target = str;
    fn deref(&self) -> &str {
        &self.spec
    }
}

impl PartialEq for DataSource {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl PartialEq<&str> for DataSource {
    fn eq(&self, other: &&str) -> bool {
        self.spec == *other
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.spec)
    }
}

impl From<&str> for DataSource {
    fn from(s: &str) -> DataSource {
        DataSource::new(s)
    }
}

impl Serialize for DataSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.spec)
    }
}

impl<'de> Deserialize<'de> for DataSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(DataSource::new(&String::deserialize(d)?))
    }
}

impl Default for DataSource {
    fn default() -> DataSource {
        DataSource::new("")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `synthetic` (the built-in tool-calling task) or a path.
    pub train: DataSource,
    /// `synthetic` or a path.
    pub eval: DataSource,
    /// Size of the synthetic training split.
    pub n_train: usize,
    /// Size of the synthetic test split.
    pub n_test: usize,
    /// Seed of the synthetic generator (independent of the training seed, so that seeds
    /// vary the model, not the task).
    pub seed: u64,
    /// Vocabulary size of the BPE tokenizer trained on the corpus (presets only).
    pub vocab_size: usize,
    /// Examples longer than this (in tokens) are fitted by `truncation`.
    pub max_seq_len: usize,
    /// How examples become text, in training and inference: `compact` or `toolllama`.
    #[serde(default)]
    pub template: Template,
    /// `keep_start` (TRL's: cut from the right), `keep_end` (leave out the oldest earlier
    /// steps) or `drop`. An example left with no scored token is dropped in every mode.
    #[serde(default)]
    pub truncation: Truncation,
    /// Where validation loss comes from: a data source (`synthetic` or a file), or empty
    /// for `val_fraction` (or, without it, a synthetic split for synthetic training data
    /// and no validation loss otherwise). Never the evaluation set.
    #[serde(default)]
    pub val: DataSource,
    /// Share of the training queries held out for validation (all steps of a query on
    /// the same side), when `val` is empty.
    #[serde(default)]
    pub val_fraction: f64,
}

impl DataConfig {
    /// The keys that choose a run's examples, for `data::splits` (an empty `data.train`
    /// or `data.eval` names no source: validation refuses it, and so does this).
    pub fn split_spec(&self) -> Result<SplitSpec<'_>, crate::data::DataError> {
        fn named<'a>(key: &str, d: &'a DataSource) -> Result<&'a Source, crate::data::DataError> {
            d.source().ok_or_else(|| crate::data::DataError::File {
                path: key.to_string(),
                message: "names no source (\"synthetic\" or a path)".into(),
            })
        }
        Ok(SplitSpec {
            train: named("data.train", &self.train)?,
            eval: named("data.eval", &self.eval)?,
            val: self.val.source(),
            val_fraction: self.val_fraction,
            n_train: self.n_train,
            n_test: self.n_test,
            seed: self.seed,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Linear,
    Constant,
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecayGroups {
    /// As HF's Trainer: no decay on biases and LayerNorm parameters.
    Trainer,
    /// Every parameter decays (plain `torch.optim.AdamW(model.parameters())`).
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub lr: f64,
    /// Passes over the training split; 0 evaluates the untrained model (a baseline row).
    pub epochs: usize,
    /// Effective batch size (sequences per optimizer step).
    pub batch_size: usize,
    /// Micro-batches per optimizer step; `batch_size` must divide by it.
    pub grad_accum: usize,
    /// Maximum global L2 norm of the gradients; `"none"` disables clipping.
    #[serde(
        serialize_with = "ser_clip",
        deserialize_with = "de_clip",
        default = "default_clip"
    )]
    pub clip_norm: Option<f64>,
    pub seed: u64,
    pub scheduler: Scheduler,
    pub warmup_ratio: f64,
    pub precision: Precision,
    pub weight_decay: f64,
    pub decay_groups: DecayGroups,
    pub loss_on: LossOn,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Residual dropout in training: `"checkpoint"` (the model's `dropout`, resolved
    /// when the plan is made; presets have none) or a rate in [0, 1).
    #[serde(default)]
    pub dropout: DropoutRate,
}

/// `train.dropout`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum DropoutRate {
    #[default]
    Checkpoint,
    Rate(f64),
}

impl DropoutRate {
    /// The rate to train with; a `Checkpoint` that was never resolved trains without
    /// dropout, which the run records (the plan resolves every run it makes).
    pub fn rate(self) -> f64 {
        match self {
            DropoutRate::Rate(r) => r,
            DropoutRate::Checkpoint => 0.0,
        }
    }

    /// The checkpoint's rate in place of `Checkpoint`.
    pub fn resolved(self, checkpoint: f64) -> DropoutRate {
        match self {
            DropoutRate::Checkpoint => DropoutRate::Rate(checkpoint),
            r => r,
        }
    }
}

impl Serialize for DropoutRate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DropoutRate::Checkpoint => s.serialize_str("checkpoint"),
            DropoutRate::Rate(r) => s.serialize_f64(*r),
        }
    }
}

impl<'de> Deserialize<'de> for DropoutRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Int(i64),
            Word(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a rate or \"checkpoint\""))?
        {
            Raw::Num(x) => Ok(DropoutRate::Rate(x)),
            Raw::Int(x) => Ok(DropoutRate::Rate(x as f64)),
            Raw::Word(w) if w == "checkpoint" => Ok(DropoutRate::Checkpoint),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "expected a rate or \"checkpoint\", found \"{w}\""
            ))),
        }
    }
}

fn default_clip() -> Option<f64> {
    Some(1.0)
}

fn ser_clip<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) => s.serialize_f64(*x),
        None => s.serialize_str("none"),
    }
}

fn de_clip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Clip {
        Num(f64),
        Int(i64),
        Word(String),
    }
    match Clip::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a number or \"none\""))?
    {
        Clip::Num(x) => Ok(Some(x)),
        Clip::Int(x) => Ok(Some(x as f64)),
        Clip::Word(w) if w == "none" => Ok(None),
        Clip::Word(w) => Err(serde::de::Error::custom(format!(
            "expected a number or \"none\", found \"{w}\""
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluators whose verdicts are stored per example; the first one's rate is the
    /// run's `pass_rate`.
    pub evaluators: Vec<Evaluator>,
    pub max_new_tokens: usize,
    /// Sequences decoded together (left-padded).
    pub batch_size: usize,
    /// Evaluate at most this many test examples (0 = all).
    pub limit: usize,
    /// 0: greedy decoding; above 0, sampling at this temperature (seeded by train.seed).
    pub temperature: f64,
    /// Sampling: keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Sampling: nucleus cut (1.0: none).
    pub top_p: f64,
    /// Decoding of a row stops once its text contains one of these.
    pub stop: Vec<String>,
    /// ToolBench episodes (`episode` evaluator): assistant turns before giving up.
    pub max_turns: usize,
    /// The `llm_judge` evaluator's endpoint.
    pub judge: JudgeConfig,
    /// What answers the agent's tool calls in ToolBench episodes.
    pub tools: ToolsConfig,
}

/// A tool backend of `eval.tools.backends`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolBackend {
    /// The observations recorded in the answer file (offline smoke tests).
    Recorded,
    /// A StableToolBench `tool_response_cache/` folder, read directly.
    Cache,
    /// StableToolBench's server (`POST {url}/virtual`).
    Stabletoolbench,
    /// An OpenAI-compatible model playing the API (`[eval.tools.simulator]`).
    Simulate,
}

impl ToolBackend {
    pub fn name(self) -> &'static str {
        match self {
            ToolBackend::Recorded => "recorded",
            ToolBackend::Cache => "cache",
            ToolBackend::Stabletoolbench => "stabletoolbench",
            ToolBackend::Simulate => "simulate",
        }
    }
}

/// `[eval.tools]`: the backends asked, in order, until one answers a call (a `cache` miss
/// goes on to the next). Part of what an episode generation is: changing it regenerates
/// the episodes (never retrains).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    pub backends: Vec<ToolBackend>,
    /// `cache`: the `tool_response_cache/` folder.
    pub cache: String,
    /// `stabletoolbench`: the server's base URL (`/virtual` is appended).
    pub url: String,
    /// The environment variable holding the `toolbench_key` the server is sent (unset:
    /// an empty key). Read at run time, never stored.
    pub key_env: String,
    /// Seconds per request to the server before it is retried (3 attempts in all).
    pub timeout_s: u64,
    /// The `simulate` backend's model.
    pub simulator: SimulatorConfig,
}

/// `[eval.tools.simulator]`: an OpenAI-compatible chat-completions endpoint asked to play
/// the API, as StableToolBench's simulator does. Its answers are kept in the results
/// database, so a generation done again asks nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    /// Base URL; `/chat/completions` is appended.
    pub url: String,
    pub model: String,
    /// A file with the system prompt (e.g. your copy of StableToolBench's); empty: ablate's
    /// own words.
    pub prompt: String,
    /// The environment variable holding the API key (read at run time, never stored).
    pub api_key_env: String,
    pub temperature: f64,
    pub timeout_s: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            url: String::new(),
            model: String::new(),
            prompt: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            temperature: 0.0,
            timeout_s: 60,
        }
    }
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            backends: vec![ToolBackend::Recorded],
            cache: String::new(),
            url: String::new(),
            key_env: "TOOLBENCH_KEY".into(),
            timeout_s: 60,
            simulator: SimulatorConfig::default(),
        }
    }
}

/// `[eval.judge]`: an OpenAI-compatible chat-completions endpoint that judges answers with
/// one of ToolEval's pass-rate procedures, with the prompts and function schemas of a
/// ToolEval evaluator folder when one is named. The API key is read from the environment
/// variable named here, at run time; it is never written to a file or the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    /// Base URL, e.g. "https://api.openai.com/v1" or "http://localhost:8000/v1";
    /// `/chat/completions` is appended.
    pub url: String,
    /// The judge model, e.g. "gpt-4o-mini"; empty: the evaluator folder's.
    pub model: String,
    /// The environment variable holding the API key (unset: no Authorization header).
    pub api_key_env: String,
    /// Judgments per example (ToolEval's `evaluate_times`); unset: 4 with an evaluator
    /// folder (ToolEval's default), 3 without.
    pub k: Option<usize>,
    /// Unset: the evaluator folder's, or 0 without one.
    pub temperature: Option<f64>,
    /// Seconds per request before it is retried (3 attempts in all).
    pub timeout_s: u64,
    /// A ToolEval evaluator folder (`config.yaml` and `template.txt`, e.g.
    /// `toolbench/tooleval/evaluators/tooleval_gpt-3.5-turbo_default` of the user's copy
    /// of ToolBench or StableToolBench); empty: ablate's own prompts.
    pub evaluator: String,
    /// `pass_rate` (ToolBench: solvability check, majority with ties passing) or `sopr`
    /// (StableToolBench's solvable pass rate: Solved 1, Unsure 0.5, Unsolved 0).
    pub procedure: JudgeProcedure,
}

/// ToolEval's two ways of turning judgments into a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JudgeProcedure {
    #[default]
    PassRate,
    Sopr,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            url: String::new(),
            model: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            k: None,
            temperature: None,
            timeout_s: 60,
            evaluator: String::new(),
            procedure: JudgeProcedure::PassRate,
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            model: ModelConfig {
                name: "tiny".into(),
                init: ModelInit::Auto,
                device: DeviceSpec::Cpu,
                endpoint: EndpointConfig::default(),
            },
            data: DataConfig {
                train: "synthetic".into(),
                eval: "synthetic".into(),
                n_train: 512,
                n_test: 64,
                seed: 1234,
                vocab_size: 512,
                max_seq_len: 128,
                template: Template::Compact,
                truncation: Truncation::KeepStart,
                val: DataSource::default(),
                val_fraction: 0.0,
            },
            train: TrainConfig {
                lr: 5e-5,
                epochs: 1,
                batch_size: 32,
                grad_accum: 1,
                clip_norm: Some(1.0),
                seed: 0,
                scheduler: Scheduler::Linear,
                warmup_ratio: 0.0,
                precision: Precision::F32,
                weight_decay: 0.0,
                decay_groups: DecayGroups::Trainer,
                loss_on: LossOn::Completion,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                dropout: DropoutRate::Checkpoint,
            },
            eval: EvalConfig {
                evaluators: vec![Evaluator::Rules],
                max_new_tokens: 64,
                batch_size: 16,
                limit: 0,
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                stop: vec![],
                max_turns: 8,
                judge: JudgeConfig::default(),
                tools: ToolsConfig::default(),
            },
        }
    }
}

/// An evaluator of `eval.evaluators`. Spelled as in the files (`llm_judge`), which is also
/// how it is hashed into ids and stored in `eval_results.evaluator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Evaluator {
    /// Exact match of the next call against the gold step.
    Rules,
    /// BFCL's AST checker.
    Bfcl,
    /// ToolBench episodes: the model as an agent until `Finish` (reads episodes).
    Episode,
    /// ToolEval's pass-rate procedure with an LLM (reads episodes when there are any).
    LlmJudge,
}

impl Evaluator {
    pub const ALL: [Evaluator; 4] = [
        Evaluator::Rules,
        Evaluator::Bfcl,
        Evaluator::Episode,
        Evaluator::LlmJudge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Evaluator::Rules => "rules",
            Evaluator::Bfcl => "bfcl",
            Evaluator::Episode => "episode",
            Evaluator::LlmJudge => "llm_judge",
        }
    }

    pub fn parse(name: &str) -> Option<Evaluator> {
        Evaluator::ALL.into_iter().find(|e| e.name() == name)
    }
}

impl<'de> Deserialize<'de> for Evaluator {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Evaluator::parse(&s).ok_or_else(|| {
            let known: Vec<&str> = Evaluator::ALL.iter().map(|e| e.name()).collect();
            serde::de::Error::custom(format!(
                "unknown evaluator \"{s}\" (known: {})",
                known.join(", ")
            ))
        })
    }
}

impl std::fmt::Display for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl RunConfig {
    /// A configuration as the store keeps it (`runs.config_json`), read over today's
    /// defaults: a key added since the run was stored takes the default its id assumed
    /// (see `plan::ADDED_KEYS`), so a run of any release reads back typed.
    pub fn from_stored(json: &str) -> Result<RunConfig, serde_json::Error> {
        fn overlay(base: &mut serde_json::Value, top: serde_json::Value) {
            match (base, top) {
                (serde_json::Value::Object(b), serde_json::Value::Object(t)) => {
                    for (k, v) in t {
                        overlay(b.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
                (b, t) => *b = t,
            }
        }
        let mut v = serde_json::to_value(RunConfig::default()).expect("config serializes");
        overlay(&mut v, serde_json::from_str(json)?);
        serde_json::from_value(v)
    }

    /// Semantic checks that serde cannot express: each problem as (dotted key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |k: &str, m: String| out.push((k.to_string(), m));
        let t = &self.train;
        if !(t.lr.is_finite() && t.lr > 0.0) {
            bad(
                "train.lr",
                format!("must be a positive number, found {}", t.lr),
            );
        }
        if t.batch_size == 0 {
            bad("train.batch_size", "must be at least 1".into());
        }
        if t.grad_accum == 0 {
            bad("train.grad_accum", "must be at least 1".into());
        } else if !t.batch_size.is_multiple_of(t.grad_accum) {
            bad(
                "train.grad_accum",
                format!(
                    "train.batch_size ({}) must be a multiple of it ({})",
                    t.batch_size, t.grad_accum
                ),
            );
        }
        if let Some(c) = t.clip_norm {
            if !(c.is_finite() && c > 0.0) {
                bad(
                    "train.clip_norm",
                    format!("must be a positive number or \"none\", found {c}"),
                );
            }
        }
        if !(0.0..=1.0).contains(&t.warmup_ratio) {
            bad(
                "train.warmup_ratio",
                format!("must be in [0, 1], found {}", t.warmup_ratio),
            );
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            bad(
                "train.weight_decay",
                format!("must be >= 0, found {}", t.weight_decay),
            );
        }
        for (k, b) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bad(k, format!("must be in [0, 1), found {b}"));
            }
        }
        if t.eps.is_nan() || t.eps <= 0.0 {
            bad("train.eps", format!("must be positive, found {}", t.eps));
        }
        if let DropoutRate::Rate(r) = t.dropout {
            if !(0.0..1.0).contains(&r) {
                bad(
                    "train.dropout",
                    format!("must be in [0, 1) or \"checkpoint\", found {r}"),
                );
            }
        }
        let d = &self.data;
        if d.train == "synthetic" && d.n_train == 0 {
            bad("data.n_train", "must be at least 1".into());
        }
        if d.eval == "synthetic" && d.n_test == 0 {
            bad("data.n_test", "must be at least 1".into());
        }
        if d.vocab_size < 300 {
            bad(
                "data.vocab_size",
                format!(
                    "must be at least 300 (256 bytes + specials), found {}",
                    d.vocab_size
                ),
            );
        }
        if !(0.0..1.0).contains(&d.val_fraction) {
            bad(
                "data.val_fraction",
                format!("must be in [0, 1), found {}", d.val_fraction),
            );
        } else if d.val_fraction > 0.0 && !d.val.is_empty() {
            bad(
                "data.val_fraction",
                "set data.val or data.val_fraction, not both".into(),
            );
        }
        if d.val.is_bfcl() {
            bad(
                "data.val",
                format!(
                    "\"{}\" is a BFCL question file: it has no gold completions to take a loss on",
                    d.val
                ),
            );
        }
        if d.max_seq_len < 8 {
            bad(
                "data.max_seq_len",
                format!("must be at least 8, found {}", d.max_seq_len),
            );
        }
        for (k, v) in [("data.train", &d.train), ("data.eval", &d.eval)] {
            if v.trim().is_empty() {
                bad(k, "must name a source: \"synthetic\" or a path".into());
            }
        }
        if d.train.is_bfcl() {
            bad(
                "data.train",
                format!(
                    "\"synthetic\", a directory of ToolBench answer files or a ToolBench conversations file (a JSON list), found \"{}\"",
                    d.train
                ),
            );
        }
        if self.model.name.trim().is_empty() {
            bad("model.name", "must not be empty".into());
        }
        if let Some(m) = self.model.endpoint_model() {
            if m.trim().is_empty() {
                bad(
                    "model.name",
                    "\"openai:\" must name the endpoint's model, e.g. \"openai:gpt-4o-mini\""
                        .into(),
                );
            }
            if self.model.endpoint.url.trim().is_empty() {
                bad(
                    "model.endpoint.url",
                    format!(
                        "model.name = \"{}\" needs the URL of an OpenAI-compatible server, \
                         e.g. \"https://api.openai.com/v1\"",
                        self.model.name
                    ),
                );
            }
            // OpenAI's chat completions have no top-k: refused rather than dropped.
            if self.eval.temperature > 0.0 && self.eval.top_k > 0 {
                bad(
                    "eval.top_k",
                    format!(
                        "model.name = \"{}\" is asked through OpenAI's chat completions, \
                         which have no top-k; set eval.top_k = 0 (eval.top_p is passed on)",
                        self.model.name
                    ),
                );
            }
            // Refused rather than ignored: a sweep over training keys of an endpoint model
            // would evaluate one model many times under different names.
            if self.train.epochs > 0 {
                bad(
                    "train.epochs",
                    format!(
                        "model.name = \"{}\" is served by an endpoint and only evaluated; \
                         set train.epochs = 0",
                        self.model.name
                    ),
                );
            }
        }
        let e = &self.eval;
        if e.evaluators.is_empty() {
            bad("eval.evaluators", "must name at least one evaluator".into());
        }

        for ev in &e.evaluators {
            match ev {
                Evaluator::Episode if !(d.eval.is_toolbench() || d.eval.is_query_set()) => bad(
                    "eval.evaluators",
                    "\"episode\" needs data.eval to name ToolBench test queries \
                     (test_instruction/<group>.json or a folder of them) or a directory of \
                     ToolBench answer files"
                        .into(),
                ),
                Evaluator::Rules | Evaluator::Bfcl if d.eval.is_query_set() => bad(
                    "eval.evaluators",
                    format!(
                        "\"{ev}\" scores gold steps, which a query set has none of: evaluate \
                         ToolBench test queries with \"episode\" (and \"llm_judge\")"
                    ),
                ),
                Evaluator::Bfcl if !d.eval.is_bfcl() => bad(
                    "eval.evaluators",
                    "\"bfcl\" needs data.eval to name a BFCL question file".into(),
                ),
                _ => {}
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(ev) = e.evaluators.iter().find(|ev| !seen.insert(**ev)) {
            bad("eval.evaluators", format!("\"{ev}\" is named twice"));
        }
        if e.max_new_tokens == 0 {
            bad("eval.max_new_tokens", "must be at least 1".into());
        }
        if e.batch_size == 0 {
            bad("eval.batch_size", "must be at least 1".into());
        }
        if !(e.temperature.is_finite() && e.temperature >= 0.0) {
            bad(
                "eval.temperature",
                format!("must be >= 0 (0 = greedy), found {}", e.temperature),
            );
        }
        if !(e.top_p > 0.0 && e.top_p <= 1.0) {
            bad(
                "eval.top_p",
                format!("must be in (0, 1], found {}", e.top_p),
            );
        }
        if e.evaluators.contains(&Evaluator::LlmJudge) {
            if e.judge.url.trim().is_empty() {
                bad("eval.judge.url", "the llm_judge evaluator needs it".into());
            }
            if e.judge.model.trim().is_empty() && e.judge.evaluator.trim().is_empty() {
                bad(
                    "eval.judge.model",
                    "the llm_judge evaluator needs it (or an eval.judge.evaluator folder that names one)"
                        .into(),
                );
            }
            let url = &e.judge.url;
            let http = url.starts_with("http://") || url.starts_with("https://");
            if !(url.is_empty() || http) {
                bad(
                    "eval.judge.url",
                    format!(
                        "must start with http:// or https://, found \"{}\"",
                        e.judge.url
                    ),
                );
            }
        }
        if e.judge.k == Some(0) {
            bad("eval.judge.k", "must be at least 1".into());
        }
        if let Some(t) = e.judge.temperature {
            if !(t >= 0.0 && t.is_finite()) {
                bad("eval.judge.temperature", format!("must be >= 0, found {t}"));
            }
        }
        if e.max_turns == 0 {
            bad("eval.max_turns", "must be at least 1".into());
        }
        if d.train.is_query_set() {
            bad(
                "data.train",
                "names ToolBench test queries, which have no answers to train on".into(),
            );
        }
        let t = &e.tools;
        let episodes = d.eval.is_query_set()
            || (d.eval.is_toolbench() && e.evaluators.contains(&Evaluator::Episode));
        if episodes {
            if t.backends.is_empty() {
                bad(
                    "eval.tools.backends",
                    "must name at least one backend".into(),
                );
            }
            for b in &t.backends {
                match b {
                    ToolBackend::Recorded if d.eval.is_query_set() => bad(
                        "eval.tools.backends",
                        "\"recorded\" replays answer files, and data.eval names test queries: \
                         use \"cache\" (a StableToolBench tool_response_cache folder) or \
                         \"stabletoolbench\" (its server)"
                            .into(),
                    ),
                    ToolBackend::Cache | ToolBackend::Stabletoolbench | ToolBackend::Simulate
                        if d.eval.is_toolbench() =>
                    {
                        bad(
                            "eval.tools.backends",
                            format!(
                                "\"{}\" needs the tool categories of test queries, which answer \
                                 files do not have: name a test_instruction file in data.eval, \
                                 or use \"recorded\"",
                                b.name()
                            ),
                        )
                    }
                    ToolBackend::Cache if !std::path::Path::new(&t.cache).is_dir() => bad(
                        "eval.tools.cache",
                        format!(
                            "the \"cache\" backend needs a tool_response_cache folder, found \"{}\"",
                            t.cache
                        ),
                    ),
                    ToolBackend::Simulate => {
                        let sim = &t.simulator;
                        if !(sim.url.starts_with("http://") || sim.url.starts_with("https://")) {
                            bad(
                                "eval.tools.simulator.url",
                                format!(
                                    "the \"simulate\" backend needs an OpenAI-compatible \
                                     endpoint (http://...), found \"{}\"",
                                    sim.url
                                ),
                            );
                        }
                        if sim.model.trim().is_empty() {
                            bad("eval.tools.simulator.model", "the \"simulate\" backend needs it".into());
                        }
                        if !sim.prompt.is_empty() && !std::path::Path::new(&sim.prompt).is_file() {
                            bad(
                                "eval.tools.simulator.prompt",
                                format!("no such file: \"{}\"", sim.prompt),
                            );
                        }
                    }
                    ToolBackend::Stabletoolbench
                        if !(t.url.starts_with("http://") || t.url.starts_with("https://")) =>
                    {
                        bad(
                            "eval.tools.url",
                            format!(
                                "the \"stabletoolbench\" backend needs the server's URL \
                                 (http://...), found \"{}\"",
                                t.url
                            ),
                        )
                    }
                    _ => {}
                }
            }
        }
        if e.stop.iter().any(String::is_empty) {
            bad("eval.stop", "stop strings must not be empty".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_config_from_before_a_key_existed_reads_back_with_its_default() {
        let mut old = serde_json::to_value(RunConfig::default()).unwrap();
        old["train"]["lr"] = serde_json::json!(0.001);
        old["eval"]["evaluators"] = serde_json::json!(["bfcl", "rules"]);
        // Keys added after the first ids were issued (plan::ADDED_KEYS).
        old["eval"].as_object_mut().unwrap().remove("temperature");
        old["eval"].as_object_mut().unwrap().remove("judge");
        old["data"].as_object_mut().unwrap().remove("template");
        let cfg = RunConfig::from_stored(&old.to_string()).unwrap();
        assert_eq!(cfg.train.lr, 0.001);
        assert_eq!(cfg.eval.evaluators, [Evaluator::Bfcl, Evaluator::Rules]);
        assert_eq!(cfg.eval.temperature, 0.0);
        assert_eq!(cfg.eval.judge, JudgeConfig::default());
        // The strict reader refuses it; an unknown key is refused by both.
        assert!(serde_json::from_value::<RunConfig>(old.clone()).is_err());
        old["eval"]["nonsense"] = serde_json::json!(1);
        assert!(RunConfig::from_stored(&old.to_string()).is_err());
    }

    #[test]
    fn devices_and_evaluators_keep_their_spellings() {
        for s in ["cpu", "auto", "cuda:3"] {
            let d: DeviceSpec = s.parse().unwrap();
            assert_eq!(serde_json::to_value(d).unwrap(), s);
        }
        assert!("gpu".parse::<DeviceSpec>().unwrap_err().contains("cuda:N"));
        for e in Evaluator::ALL {
            let v = serde_json::to_value(e).unwrap();
            assert_eq!(v, e.name());
            assert_eq!(serde_json::from_value::<Evaluator>(v).unwrap(), e);
        }
    }
}
