//! ToolEval's evaluator folders, read at run time from the user's copy of ToolEval
//! (`config.yaml` with the judge's completion settings and function schemas, and
//! `template.txt` with one `<function><name>…</name><description>…</description></function>`
//! section per function, filled with Python's `str.format`), and StableToolBench's solvable
//! pass rate (SoPR) procedure over ToolEval's converted answers, as its `eval_pass_rate.py`
//! runs it. No ToolEval text is in ablate: prompts and schemas come from the folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::data::pyliteral::{self, Py};

#[derive(Debug, thiserror::Error)]
pub enum ToolEvalError {
    #[error("{path}: {message}")]
    Folder { path: String, message: String },
    #[error("template section {function}: {message}")]
    Format { function: String, message: String },
}

/// One evaluator folder.
#[derive(Debug, Clone)]
pub struct EvaluatorFolder {
    pub path: PathBuf,
    /// `evaluator_name` of the config.
    pub name: String,
    /// `completions_kwargs` less `functions` (model, max_tokens, temperature, ...).
    pub completion: serde_json::Map<String, Value>,
    functions: BTreeMap<String, Value>,
    templates: BTreeMap<String, String>,
    /// sha256 of config.yaml and template.txt: what the run records of the folder.
    pub digest: String,
}

fn folder_err(path: &Path, message: impl Into<String>) -> ToolEvalError {
    ToolEvalError::Folder {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The text of every `<tag>…</tag>` in `text`, in order (ToolEval's `re.findall` with
/// DOTALL and a lazy match).
fn sections<'a>(text: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

impl EvaluatorFolder {
    pub fn load(dir: &Path) -> Result<EvaluatorFolder, ToolEvalError> {
        let config_path = dir.join("config.yaml");
        let config_text = std::fs::read_to_string(&config_path)
            .map_err(|e| folder_err(&config_path, e.to_string()))?;
        let config: Value = serde_yaml_ng::from_str(&config_text)
            .map_err(|e| folder_err(&config_path, format!("not YAML: {e}")))?;
        let template_name = config["prompt_template"].as_str().unwrap_or("template.txt");
        let template_path = dir.join(template_name);
        let template = std::fs::read_to_string(&template_path)
            .map_err(|e| folder_err(&template_path, e.to_string()))?;
        let mut completion = config["completions_kwargs"]
            .as_object()
            .cloned()
            .ok_or_else(|| folder_err(&config_path, "no completions_kwargs"))?;
        let functions: BTreeMap<String, Value> = completion
            .remove("functions")
            .and_then(|f| f.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| Some((f["name"].as_str()?.to_string(), f)))
            .collect();
        let mut templates = BTreeMap::new();
        for f in sections(&template, "function") {
            let name = sections(f, "name").first().map(|n| n.to_string());
            let description = sections(f, "description").first().map(|d| d.to_string());
            if let (Some(n), Some(d)) = (name, description) {
                templates.insert(n, d);
            }
        }
        if templates.is_empty() {
            return Err(folder_err(
                &template_path,
                "no <function><name>…</name><description>…</description></function> section",
            ));
        }
        let mut h = Sha256::new();
        h.update(config_text.as_bytes());
        h.update([0]);
        h.update(template.as_bytes());
        Ok(EvaluatorFolder {
            path: dir.to_path_buf(),
            name: config["evaluator_name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            completion,
            functions,
            templates,
            digest: format!("{:x}", h.finalize()),
        })
    }

    /// The model the config names.
    pub fn model(&self) -> Option<&str> {
        self.completion.get("model").and_then(Value::as_str)
    }

    /// The chat-completions body ToolEval sends for `function` with `args`: the config's
    /// completion settings (less the client's `timeout`), the function's schema with a
    /// required `reason` added (ToolEval asks for one), forced as the tool to call, and the
    /// template section filled as the one user message.
    pub fn request(
        &self,
        function: &str,
        args: &[(&str, &str)],
        model: Option<&str>,
    ) -> Result<Value, ToolEvalError> {
        let template = self
            .templates
            .get(function)
            .ok_or_else(|| folder_err(&self.path, format!("template.txt has no {function}")))?;
        let prompt = python_format(template, args).map_err(|message| ToolEvalError::Format {
            function: function.to_string(),
            message,
        })?;
        let mut schema = self
            .functions
            .get(function)
            .cloned()
            .ok_or_else(|| folder_err(&self.path, format!("config.yaml has no {function}")))?;
        let params = &mut schema["parameters"];
        match params["required"].as_array_mut() {
            Some(r) => r.push(json!("reason")),
            None => params["required"] = json!(["reason"]),
        }
        params["properties"]["reason"] =
            json!({"type": "string", "description": "explain your answer."});
        let mut body = self.completion.clone();
        body.remove("timeout");
        if let Some(m) = model {
            body.insert("model".into(), json!(m));
        }
        body.insert(
            "tools".into(),
            json!([{"type": "function", "function": schema}]),
        );
        body.insert(
            "tool_choice".into(),
            json!({"type": "function", "function": {"name": function}}),
        );
        body.insert(
            "messages".into(),
            json!([{"role": "user", "content": prompt}]),
        );
        Ok(Value::Object(body))
    }
}

/// Python's `str.format` with keyword fields only: `{name}` takes its argument, `{{` and
/// `}}` are braces; anything else (a missing name, a conversion or format spec) is an error.
pub fn python_format(template: &str, args: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let rest = &template[i + 1..];
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("unclosed '{{' at byte {i}"))?;
                let field = &rest[..end];
                let value = args
                    .iter()
                    .find(|(k, _)| *k == field)
                    .ok_or_else(|| format!("no value for {{{field}}}"))?;
                out.push_str(value.1);
                for _ in 0..field.chars().count() + 1 {
                    chars.next();
                }
            }
            '}' => return Err(format!("single '}}' at byte {i}")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// ToolEval's answer status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AnswerStatus {
    Solved,
    Unsolved,
    Unsure,
}

impl AnswerStatus {
    pub fn parse(s: &str) -> Option<AnswerStatus> {
        match s {
            "Solved" => Some(AnswerStatus::Solved),
            "Unsolved" => Some(AnswerStatus::Unsolved),
            "Unsure" => Some(AnswerStatus::Unsure),
            _ => None,
        }
    }

    /// As ToolEval writes it in its results (`str(AnswerStatus.Solved)`).
    pub fn tooleval(self) -> &'static str {
        match self {
            AnswerStatus::Solved => "AnswerStatus.Solved",
            AnswerStatus::Unsolved => "AnswerStatus.Unsolved",
            AnswerStatus::Unsure => "AnswerStatus.Unsure",
        }
    }

    /// Its weight in the solvable pass rate.
    pub fn score(self) -> f64 {
        match self {
            AnswerStatus::Solved => 1.0,
            AnswerStatus::Unsure => 0.5,
            AnswerStatus::Unsolved => 0.0,
        }
    }
}

/// ToolEval's task status (`check_task_solvable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TaskStatus {
    Solvable,
    Unsolvable,
    Unsure,
}

impl TaskStatus {
    pub fn parse(s: &str) -> Option<TaskStatus> {
        match s {
            "Solvable" => Some(TaskStatus::Solvable),
            "Unsolvable" => Some(TaskStatus::Unsolvable),
            "Unsure" => Some(TaskStatus::Unsure),
            _ => None,
        }
    }

    /// As ToolEval writes it in its results.
    pub fn tooleval(self) -> &'static str {
        match self {
            TaskStatus::Solvable => "TaskStatus.Solvable",
            TaskStatus::Unsolvable => "TaskStatus.Unsolvable",
            TaskStatus::Unsure => "TaskStatus.Unsure",
        }
    }
}

/// A stored episode (its prediction's detail) in ToolEval's converted format: `{query,
/// available_tools, answer: {method, total_steps, final_answer, answer_details}}`, as
/// ToolBench's `convert_to_answer_format` writes it (the final answer is `Finish`'s
/// argument text).
pub fn converted(detail: &Value) -> Value {
    json!({
        "query": detail["query"],
        "available_tools": detail["available_tools"],
        "answer": {
            "method": detail["method"].as_str().unwrap_or("CoT@1"),
            "total_steps": detail["total_steps"],
            "final_answer": detail["finish_arguments"].as_str().unwrap_or_default(),
            "answer_details": detail["details"],
        },
    })
}

/// One converted answer (`{query, available_tools, answer}`), read order-preserving, since
/// the judge is shown `json.dumps` of its answer.
#[derive(Debug, Clone)]
pub struct ConvertedAnswer {
    pub query: String,
    pub available_tools: Py,
    pub answer: Py,
}

/// A converted-answers file: query id → answer, in the file's order.
pub fn load_converted(path: &Path) -> Result<Vec<(String, ConvertedAnswer)>, ToolEvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| folder_err(path, e.to_string()))?;
    let Py::Dict(items) =
        pyliteral::json_loads(&text).map_err(|e| folder_err(path, format!("not JSON: {e}")))?
    else {
        return Err(folder_err(path, "not an object of query id → answer"));
    };
    items
        .into_iter()
        .map(|(id, v)| {
            let id = match id {
                Py::Str(s) => s,
                other => other.repr(),
            };
            let query = match v.get("query") {
                Some(Py::Str(q)) => q.clone(),
                _ => return Err(folder_err(path, format!("{id}: no query"))),
            };
            let answer = v
                .get("answer")
                .cloned()
                .ok_or_else(|| folder_err(path, format!("{id}: no answer")))?;
            let available_tools = v
                .get("available_tools")
                .cloned()
                .unwrap_or(Py::List(vec![]));
            Ok((
                id,
                ConvertedAnswer {
                    query,
                    available_tools,
                    answer,
                },
            ))
        })
        .collect()
}

/// Python's truth value of a message.
fn truthy(p: &Py) -> bool {
    match p {
        Py::None => false,
        Py::Bool(b) => *b,
        Py::Int(d) => !d
            .trim_start_matches(['-', '+'])
            .trim_start_matches('0')
            .is_empty(),
        Py::Float(f) => *f != 0.0,
        Py::Str(s) => !s.is_empty(),
        Py::List(v) | Py::Tuple(v) => !v.is_empty(),
        Py::Dict(d) => !d.is_empty(),
    }
}

/// Whether the path's last tool call is `Finish`, as `eval_pass_rate.py` decides it: the
/// last `tool` node with a message along the first children (`get_steps`), formatted as
/// Python's f-string does, contains `'name': 'Finish'`.
pub fn finished(answer: &Py) -> bool {
    let mut node = match answer.get("answer_details") {
        Some(Py::List(l)) => l.first(),
        _ => None,
    };
    let mut final_step = String::new();
    while let Some(n) = node {
        let Some(next) = n.get("next") else { break };
        if let Some(message) = n.get("message").filter(|m| truthy(m)) {
            if matches!(n.get("role"), Some(Py::Str(r)) if r == "tool") {
                final_step = match message {
                    Py::Str(s) => s.clone(),
                    other => other.repr(),
                };
            }
        }
        node = match next {
            Py::List(l) => l.first(),
            _ => None,
        };
    }
    final_step.contains("'name': 'Finish'")
}

/// ToolBench's `check_has_hallucination`, run before every pass-rate judgment, with the
/// side effect that shapes what its judge is shown: walking the path depth-first, each
/// `tool` node's message that is a dict is replaced by its `str()`, until the walk stops at
/// a node whose called name is not offered (returns false) or whose message holds no
/// `'name': '…'` (ToolBench's regex finds nothing and the check raises, which its script
/// catches). Returns whether no offered name was missed (`not_hallucinate`), None when it
/// raised.
pub fn toolbench_hallucination_check(answer: &mut Py, available: &Py) -> Option<bool> {
    let names: Vec<&str> = match available {
        Py::List(l) => l
            .iter()
            .filter_map(|t| match t.get("name") {
                Some(Py::Str(n)) => Some(n.as_str()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let Py::Dict(items) = answer else { return None };
    let details = items
        .iter_mut()
        .find(|(k, _)| matches!(k, Py::Str(s) if s == "answer_details"))?;
    walk_nodes(&mut details.1, &names)
}

/// `recurssive_check`: a dict is checked and its `next` walked; a list's items in order.
fn walk_nodes(nodes: &mut Py, names: &[&str]) -> Option<bool> {
    match nodes {
        Py::Dict(items) => {
            let is_tool = items.iter().any(|(k, v)| {
                matches!(k, Py::Str(s) if s == "role") && matches!(v, Py::Str(r) if r == "tool")
            });
            if is_tool {
                let message = items
                    .iter_mut()
                    .find(|(k, _)| matches!(k, Py::Str(s) if s == "message"))?;
                if let Py::Dict(_) = message.1 {
                    message.1 = Py::Str(message.1.repr());
                }
                let Py::Str(text) = &message.1 else {
                    return None;
                };
                if !names.contains(&called_name(text)?) {
                    return Some(false);
                }
            }
            let next = items
                .iter_mut()
                .find(|(k, _)| matches!(k, Py::Str(s) if s == "next"))?;
            walk_nodes(&mut next.1, names)
        }
        Py::List(list) => {
            for n in list.iter_mut() {
                if !walk_nodes(n, names)? {
                    return Some(false);
                }
            }
            Some(true)
        }
        _ => None,
    }
}

/// The first match of ToolBench's `'name':\s*'(.*?)'` (DOTALL) in `text`.
fn called_name(text: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(i) = text[from..].find("'name':") {
        let after = &text[from + i + "'name':".len()..];
        let rest = after.trim_start_matches(|c: char| c.is_whitespace());
        if let Some(quoted) = rest.strip_prefix('\'') {
            if let Some(end) = quoted.find('\'') {
                return Some(&quoted[..end]);
            }
        }
        from += i + 1;
    }
    None
}

/// The solvable pass rate of each judgment (Solved 1, Unsure 0.5, Unsolved 0, averaged
/// over queries), and their mean and standard deviation as `eval_pass_rate.py` prints them
/// (numpy's `std`: over the judgments themselves, not a sample estimate).
pub fn sopr_rates(statuses: &[Vec<AnswerStatus>], k: usize) -> (Vec<f64>, f64, f64) {
    let n = statuses.len().max(1) as f64;
    let rates: Vec<f64> = (0..k)
        .map(|j| {
            statuses
                .iter()
                .map(|s| s.get(j).map_or(0.0, |s| s.score()))
                .sum::<f64>()
                / n
        })
        .collect();
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len().max(1) as f64;
    (rates, mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_format_fills_fields_and_unescapes_braces() {
        assert_eq!(
            python_format(
                "Query:\n{query}\n{{\"a\": {answer}}}",
                &[("query", "q"), ("answer", "1")]
            )
            .unwrap(),
            "Query:\nq\n{\"a\": 1}"
        );
        assert!(python_format("{missing}", &[]).is_err());
        assert!(python_format("a } b", &[]).is_err());
        // A value is inserted as it is, braces and all.
        assert_eq!(python_format("{x}", &[("x", "{y}")]).unwrap(), "{y}");
    }

    #[test]
    fn sopr_weights_unsure_as_half() {
        use AnswerStatus::*;
        let s = vec![vec![Solved, Unsure], vec![Unsolved, Unsure]];
        let (rates, mean, sd) = sopr_rates(&s, 2);
        assert_eq!(rates, [0.5, 0.5]);
        assert_eq!((mean, sd), (0.5, 0.0));
    }
}
