//! ToolBench: DFS answer files (`answer_generation.train_messages`) as trajectories and
//! step-wise examples, and the ToolBench / StableToolBench test query sets.
//!
//! A trajectory is the last (complete) transcript of `train_messages`: the system prompt
//! with the API list, the user query, then assistant turns (`function_call` with an
//! optional thought) each followed by the function's observation, ending with `Finish`
//! (`give_answer` or `give_up_and_restart`). This is what ToolBench's preprocessing turns
//! into its `conversations` SFT format; here each assistant step becomes one example whose
//! prompt holds the gold history with its real observations, which is both the SFT data
//! and the input of the step-wise evaluation. Later user turns (DFS's "this is not the
//! first time you try" prompts) are dropped, and assistant text without a call becomes the
//! thought of the next call.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DataError, Example, GoldCall, ToolSpec, Turn};

/// One assistant step and what the function returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub thought: String,
    pub action: String,
    /// The arguments as the model wrote them (a JSON object, as text).
    pub action_input: String,
    /// The function's response; `None` after `Finish`.
    pub observation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// `G1_answer/10_ChatGPT_DFS_woFilter_w2` → `G1-10`.
    pub id: String,
    /// `G1`, `G2` or `G3`.
    pub group: String,
    pub query: String,
    /// The functions offered (OpenAI style), `Finish` included.
    pub functions: Vec<ToolSpec>,
    pub steps: Vec<Step>,
    /// `give_answer` or `give_up`.
    pub finish_type: String,
}

fn err(path: &Path, message: impl Into<String>) -> DataError {
    DataError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn read_json(path: &Path) -> Result<Value, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(path, format!("not JSON: {e}")))
}

/// Reads one DFS answer file; `None` when ToolBench marked it `valid_data: false` (it
/// then has no `train_messages`).
pub fn load_answer(path: &Path) -> Result<Option<Trajectory>, DataError> {
    let v = read_json(path)?;
    let ag = &v["answer_generation"];
    if ag.is_null() {
        return Err(err(
            path,
            "no answer_generation: not a ToolBench answer file",
        ));
    }
    if ag["valid_data"] == false {
        return Ok(None);
    }
    let transcript = ag["train_messages"]
        .as_array()
        .and_then(|t| t.last())
        .and_then(Value::as_array)
        .ok_or_else(|| err(path, "answer_generation.train_messages is empty"))?;
    let functions = ag["function"]
        .as_array()
        .map(|fs| fs.iter().map(ToolSpec::from_json).collect())
        .unwrap_or_default();
    let mut query: Option<String> = None;
    let mut steps: Vec<Step> = Vec::new();
    // Text an assistant wrote without calling anything: the thought of its next call.
    let mut pending = String::new();
    for (i, m) in transcript.iter().enumerate() {
        let content = m["content"].as_str().unwrap_or_default().trim();
        match m["role"].as_str() {
            // The first user turn is the query; later ones are DFS's retry prompts,
            // which are not part of the solution path.
            Some("user") if query.is_none() => {
                query = Some(content.trim_end_matches("Begin!").trim().to_string());
            }
            Some("assistant") => match m["function_call"]["name"].as_str() {
                Some(action) => {
                    let thought = [pending.as_str(), content]
                        .iter()
                        .filter(|t| !t.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join("\n");
                    pending.clear();
                    steps.push(Step {
                        thought,
                        action: action.to_string(),
                        action_input: m["function_call"]["arguments"]
                            .as_str()
                            .unwrap_or("{}")
                            .to_string(),
                        observation: None,
                    });
                }
                None => {
                    if !pending.is_empty() {
                        pending.push('\n');
                    }
                    pending.push_str(content);
                }
            },
            Some("function") => {
                let last = steps.last_mut().ok_or_else(|| {
                    err(path, format!("message {i}: observation before any call"))
                })?;
                last.observation = Some(m["content"].as_str().unwrap_or_default().to_string());
            }
            _ => {}
        }
    }
    let query = query.ok_or_else(|| err(path, "the transcript has no user query"))?;
    if steps.is_empty() {
        return Err(err(path, "the trajectory has no assistant step"));
    }
    let group = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches("_answer").to_string())
        .unwrap_or_default();
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let number = stem.split('_').next().unwrap_or(stem);
    Ok(Some(Trajectory {
        id: format!("{group}-{number}"),
        group,
        query,
        functions,
        steps,
        finish_type: ag["finish_type"].as_str().unwrap_or_default().to_string(),
    }))
}

/// Every `*.json` answer file under `dir` (recursively), in path order; invalid ones are
/// skipped as ToolBench skips them.
pub fn load_answers(dir: &Path) -> Result<Vec<Trajectory>, DataError> {
    let mut out = Vec::new();
    for f in answer_files(dir)? {
        if let Some(t) = load_answer(&f)? {
            out.push(t);
        }
    }
    Ok(out)
}

/// Every `*.json` file under `dir` (recursively), in path order.
pub fn answer_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    collect_json(dir, &mut files).map_err(|e| err(dir, e.to_string()))?;
    files.sort();
    Ok(files)
}

fn collect_json(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect_json(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    Ok(())
}

impl Trajectory {
    /// One example per assistant step: the gold history (earlier steps with their real
    /// observations) in the prompt, the step itself as the completion.
    pub fn step_examples(&self) -> Vec<Example> {
        self.steps
            .iter()
            .enumerate()
            .map(|(k, s)| Example {
                id: format!("{}-step{k}", self.id),
                category: self.group.clone(),
                tools: self.functions.clone(),
                query: self.query.clone(),
                thought: s.thought.clone(),
                gold: GoldCall {
                    name: s.action.clone(),
                    arguments: serde_json::from_str(&s.action_input)
                        .unwrap_or(Value::String(s.action_input.clone())),
                },
                bfcl: None,
                history: self.steps[..k]
                    .iter()
                    .map(|p| Turn {
                        assistant: react(p),
                        observation: truncate_chars(
                            p.observation.as_deref().unwrap_or_default(),
                            MAX_OBSERVATION_CHARS,
                        ),
                    })
                    .collect(),
                raw: None,
            })
            .collect()
    }
}

/// Observations are cut to this many characters, as ToolBench's inference does
/// (`--max_observation_length 1024`).
pub const MAX_OBSERVATION_CHARS: usize = 1024;

fn truncate_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// A step in ReAct form, as the compact template's assistant turns write it.
fn react(s: &Step) -> String {
    super::react_text(&s.thought, &s.action, &s.action_input)
}

/// A test query: ToolBench's `instruction/*.json` and StableToolBench's
/// `solvable_queries/test_instruction/*.json` share this shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestQuery {
    pub query_id: Value,
    pub query: String,
    #[serde(default)]
    pub api_list: Vec<Value>,
    #[serde(default, rename = "relevant APIs")]
    pub relevant_apis: Vec<Value>,
}

/// Reads a query set (a JSON array of queries).
pub fn load_queries(path: &Path) -> Result<Vec<TestQuery>, DataError> {
    let v = read_json(path)?;
    serde_json::from_value(v).map_err(|e| err(path, format!("not a ToolBench query list: {e}")))
}

/// A query set: every query of a `test_instruction/<group>.json` file, or of each such
/// file in a folder (a folder holding `test_instruction/` is read through it), with its
/// group (the file's stem). When `test_query_ids/<group>.json` is beside the
/// `test_instruction` folder, as in ToolBench's and StableToolBench's releases, its ids
/// say which queries are evaluated and in what order, as ToolEval iterates them.
pub fn load_query_set(path: &Path) -> Result<Vec<(String, TestQuery)>, DataError> {
    let files = if path.is_dir() {
        let dir = if path.join("test_instruction").is_dir() {
            path.join("test_instruction")
        } else {
            path.to_path_buf()
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| err(&dir, e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(err(&dir, "no query files (*.json) in this folder"));
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for f in files {
        let group = f
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let queries = load_queries(&f)?;
        let ids_file = f
            .parent()
            .and_then(Path::parent)
            .map(|p| p.join("test_query_ids").join(format!("{group}.json")));
        match ids_file.filter(|p| p.is_file()) {
            Some(ids_file) => {
                let by_id: std::collections::HashMap<String, &TestQuery> =
                    queries.iter().map(|q| (query_id(q), q)).collect();
                for id in load_query_ids(&ids_file)? {
                    let q = by_id.get(&id).ok_or_else(|| {
                        err(
                            &ids_file,
                            format!("query id {id} is not in {}", f.display()),
                        )
                    })?;
                    out.push((group.clone(), (*q).clone()));
                }
            }
            None => out.extend(queries.into_iter().map(|q| (group.clone(), q))),
        }
    }
    Ok(out)
}

/// A query's id as text (the files write integers; the id files, strings).
pub fn query_id(q: &TestQuery) -> String {
    match &q.query_id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether a JSON file is a query set (its first entries carry `api_list` or `query_id`,
/// which neither the SFT files nor BFCL's have), judged from its first 64 KiB.
pub fn looks_like_query_set(path: &Path) -> bool {
    use std::io::Read;
    let mut buf = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    let first = head.trim_start();
    first.starts_with('[')
        && !head.contains("\"conversations\"")
        && (head.contains("\"api_list\"") || head.contains("\"query_id\""))
}

/// Reads StableToolBench's `test_query_ids/<group>.json`: the ids the evaluator iterates.
pub fn load_query_ids(path: &Path) -> Result<Vec<String>, DataError> {
    let v = read_json(path)?;
    let ids = v
        .as_object()
        .ok_or_else(|| err(path, "expected an object of query ids"))?;
    Ok(ids.keys().cloned().collect())
}

/// A system's answer in ToolEval's input format (StableToolBench's
/// `model_predictions_converted/<system>/<group>.json`, keyed by query id).
#[derive(Debug, Clone, Deserialize)]
pub struct ConvertedPrediction {
    pub query: String,
    #[serde(default)]
    pub available_tools: Vec<Value>,
    pub answer: ConvertedAnswer,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConvertedAnswer {
    pub method: String,
    pub total_steps: i64,
    /// The `Finish` arguments as text (`{"return_type": ..., "final_answer": ...}`), or "".
    pub final_answer: String,
    /// A linked list of `{role, message, next: [...]}` nodes.
    pub answer_details: Value,
}

impl ConvertedPrediction {
    /// The tool calls along the answer's path (first child at each node):
    /// (name, arguments text, response).
    pub fn tool_calls(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let mut node = self.answer.answer_details.get(0);
        while let Some(n) = node {
            if n["role"] == "tool" {
                let m = &n["message"];
                out.push((
                    m["name"].as_str().unwrap_or_default().to_string(),
                    m["arguments"].as_str().unwrap_or_default().to_string(),
                    m["response"].as_str().unwrap_or_default().to_string(),
                ));
            }
            node = n["next"].get(0);
        }
        out
    }
}

pub fn load_converted(
    path: &Path,
) -> Result<std::collections::BTreeMap<String, ConvertedPrediction>, DataError> {
    serde_json::from_value(read_json(path)?)
        .map_err(|e| err(path, format!("not ToolEval's converted format: {e}")))
}

/// One query's ToolEval pass-rate judgments (`pass_rate_results/<system>/*.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct PassRateJudgment {
    pub query: String,
    /// Judge run → `AnswerStatus.Solved` / `Unsolved` / `Unsure`.
    pub is_solved: std::collections::BTreeMap<String, String>,
}

impl PassRateJudgment {
    /// The majority over the judge runs (`Solved`, `Unsolved` or `Unsure`; a tie is
    /// `Unsure`).
    pub fn majority(&self) -> &'static str {
        let count = |s: &str| self.is_solved.values().filter(|v| v.ends_with(s)).count();
        let (solved, unsolved) = (count(".Solved"), count(".Unsolved"));
        let half = self.is_solved.len() / 2;
        if solved > half {
            "Solved"
        } else if unsolved > half {
            "Unsolved"
        } else {
            "Unsure"
        }
    }
}

pub fn load_pass_rate(
    path: &Path,
) -> Result<std::collections::BTreeMap<String, PassRateJudgment>, DataError> {
    serde_json::from_value(read_json(path)?)
        .map_err(|e| err(path, format!("not a ToolEval pass-rate file: {e}")))
}

/// A tab-separated table with a header row (ToolEval's `.csv` outputs), as rows of
/// column → value.
pub fn load_tsv(path: &Path) -> Result<Vec<std::collections::BTreeMap<String, String>>, DataError> {
    let mut r = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .from_path(path)
        .map_err(|e| err(path, e.to_string()))?;
    r.deserialize()
        .map(|row| row.map_err(|e| err(path, e.to_string())))
        .collect()
}

/// The line before the API list in the system turn of ToolBench's `conversations` format.
pub(crate) const APIS_MARKER: &str = "Specifically, you have access to the following APIs: ";
/// One entry of ToolBench's SFT format: `{"id", "conversations": [{"from", "value"}]}`
/// with `system`, `user`, `assistant` (`Thought: / Action: / Action Input:`) and `function`
/// turns, as ToolBench's preprocessing writes its training data (read by `toolllama`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub conversations: Vec<ConversationTurn>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationTurn {
    pub from: String,
    pub value: String,
}

/// Splits an assistant turn `Thought: … Action: … Action Input: …`. A thought may itself
/// contain "Action:" lines (models write plans), so the action is the last `Action:` line
/// directly followed by an `Action Input:` line; the input (JSON, no line starting with
/// "Action") runs to the end.
pub(crate) fn parse_assistant(value: &str) -> Option<(String, String, String)> {
    let v = format!("\n{value}");
    let (thought, action, input) = v.rmatch_indices("\nAction: ").find_map(|(at, m)| {
        let rest = &v[at + m.len()..];
        let (action, after) = rest.split_once('\n')?;
        let input = after.strip_prefix("Action Input: ")?;
        Some((&v[..at], action, input))
    })?;
    let thought = thought.trim();
    let thought = thought.strip_prefix("Thought:").unwrap_or(thought).trim();
    Some((
        thought.to_string(),
        action.trim().to_string(),
        input.trim().to_string(),
    ))
}
