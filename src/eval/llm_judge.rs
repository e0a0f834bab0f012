//! The LLM judge: ToolEval's two pass-rate procedures against any OpenAI-compatible
//! chat-completions endpoint, with the prompts and function schemas of a ToolEval
//! evaluator folder read at run time (`eval.judge.evaluator`), or ablate's own when none
//! is given.
//!
//! - `pass_rate` (ToolBench's `eval_pass_rate.py`): a path that never called `Finish`
//!   fails without a question. Per judgment: an empty or given-up answer is Unsolved
//!   without a call; otherwise `check_answer_status` on the final answer and, when that is
//!   Unsure, `parse_answer_status` on the whole converted answer. An answer that is not
//!   Solved is weighed against `check_task_solvable`: Unsolved on a solvable task fails,
//!   anything on an unsolvable task passes, the rest is Unsure and decided by a coin. The
//!   example passes when it passed at least as often as it failed. ToolBench's coins are
//!   random; here they are a hash of the example and the judgment, so a verdict does not
//!   change between runs.
//! - `sopr` (StableToolBench's solvable pass rate): per judgment the answer status alone,
//!   scored Solved 1, Unsure 0.5, Unsolved 0; the example's score is the mean over its
//!   judgments, and the rate is reported as the mean ± sd over judgments.
//!
//! Every answer of the endpoint is cached in the results database (`judge_cache`), keyed by
//! endpoint, function, judgment index and request body: judging the same thing twice asks
//! once. The API key comes from the environment at run time and goes only into the
//! Authorization header; anything the endpoint says back is scrubbed of it before it is
//! kept or shown.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::tooleval::{
    finished, python_format, toolbench_hallucination_check, AnswerStatus, EvaluatorFolder,
    TaskStatus,
};
use crate::chat::{ChatError, Client, Verdict};
use crate::config::{JudgeConfig, JudgeProcedure};
use crate::data::pyliteral::{self, Py};
use crate::data::ToolSpec;

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("LLM judge at {url}: {message}")]
    Endpoint { url: String, message: String },
    #[error("LLM judge cache: {0}")]
    Cache(String),
    #[error("LLM judge: {0}")]
    Evaluator(#[from] super::tooleval::ToolEvalError),
}

/// What is judged: the query, the functions it offered and the answer, in ToolEval's
/// converted format.
#[derive(Debug, Clone)]
pub struct Item<'a> {
    /// Stable id of the example (seeds the coins).
    pub id: &'a str,
    pub query: &'a str,
    /// The functions offered, as the converted format's `available_tools` lists them.
    pub available_tools: Py,
    /// `{method, total_steps, final_answer, answer_details}`.
    pub answer: Py,
    /// Whether the path called `Finish`; one that did not fails without a question
    /// (ToolEval's "No answer").
    pub finished: bool,
}

impl<'a> Item<'a> {
    /// An entry of a converted-answers file (`{query, available_tools, answer}`), as JSON.
    pub fn converted(id: &'a str, query: &'a str, entry: &Value) -> Item<'a> {
        let py = |v: &Value| pyliteral::json_loads(&v.to_string()).unwrap_or(Py::None);
        let answer = py(&entry["answer"]);
        Item {
            id,
            query,
            available_tools: py(&entry["available_tools"]),
            finished: finished(&answer),
            answer,
        }
    }

    /// One generated step judged as an answer: its text is the final answer, the path is
    /// that one step; an empty text is no answer.
    pub fn step(id: &'a str, query: &'a str, tools: &[ToolSpec], text: &str) -> Item<'a> {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "parameters": t.parameters}))
            .collect();
        let entry = json!({
            "available_tools": tools,
            "answer": {
                "method": "step",
                "total_steps": 1,
                "final_answer": text,
                "answer_details": [{"role": "assistant", "message": text, "next": []}],
            },
        });
        Item {
            finished: !text.trim().is_empty(),
            ..Item::converted(id, query, &entry)
        }
    }
}

/// One judgment of an example.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Judgment {
    pub answer: AnswerStatus,
    /// `check_task_solvable`'s answer, when the procedure asked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskStatus>,
    /// `pass_rate`: whether this judgment passed; `sopr`: none (the status is the score).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// `pass_rate`: the judgment was Unsure and a coin decided it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub coin: bool,
}

/// The outcome of judging one example `k` times.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub passed: bool,
    /// `pass`, or why not: `unsolved`, `unsure` (lost a coin or the count), `no_answer`.
    pub verdict: String,
    /// `sopr`: the mean of the judgments' scores (Solved 1, Unsure 0.5, Unsolved 0).
    pub score: Option<f64>,
    pub judgments: Vec<Judgment>,
    /// Requests that reached the endpoint (the rest came from the cache).
    pub requests: usize,
}

// ablate's own prompts, used when no ToolEval evaluator folder is given: ToolEval's rules
// and statuses in ablate's words (`{query}`, `{answer}` and `{task}` filled as ToolEval's
// template fields are).
const CHECK_ANSWER_STATUS: &str = "\
Given a query and an answer, decide the `answer_status` of the answer:
1. If the answer is an apology, or not a positive and direct response to the query, return \"Unsolved\".
2. If the answer is a positive and direct response to the query, check further:
2.1 If the answer does not tell enough to decide whether it solves the query, return \"Unsure\".
2.2 If you are confident the answer tells enough to decide, return \"Solved\" or \"Unsolved\".

Query:
{query}
Answer:
{answer}

Give your reason in `reason` and the `answer_status` by calling `check_answer_status`.";

const PARSE_ANSWER_STATUS: &str = "\
Given a query and the execution details of an answer, decide the `answer_status` of the answer:
1. If every 'tool' node's message shows that an error happened, return \"Unsolved\".
2. If the information in \"final_answer\" is not true or not valid according to the messages of the 'tool' nodes, return \"Unsolved\".
3. If you cannot verify that the information is authentic and valid, return \"Unsure\".
4. If the chain holds 'tool' nodes with successful calls and those calls do solve the query, return \"Solved\".

Query:
{query}
Answer:
{answer}

Give your reason in `reason` and the `answer_status` by calling `parse_answer_status`.";

const CHECK_TASK_SOLVABLE: &str = "\
Decide whether the given task can be solved:
1. If the `query` gives invalid information (an invalid email address or phone number, say), return \"Unsolvable\".
2. If the `query` needs more information to be solved (the name of the target restaurant in a navigation task, say), return \"Unsolvable\".
3. If you cannot reach a conclusion, return \"Unsure\".
4. If the `available_tools` are enough to solve the query, return \"Solvable\".

Task:
{task}

Give your reason in `reason` and the `task_status` by calling `check_task_solvable`.";

/// One answer of the endpoint, as the cache keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAnswer {
    /// sha256 of endpoint, model, function, judgment index and prompt.
    pub key: String,
    pub endpoint: String,
    pub model: String,
    pub function: String,
    /// The function call's arguments (already scrubbed of the API key).
    pub response: Value,
}

/// Where the judge's answers are kept, so the same question is never asked twice: the
/// results database's `judge_cache`, which the store provides (the judge itself has no
/// database connection).
pub trait AnswerCache {
    fn get(&self, key: &str) -> Result<Option<Value>, String>;
    fn put(&self, answer: CachedAnswer) -> Result<(), String>;
}

/// ablate's own function schema for `function`: its status field and the allowed values.
fn builtin_schema(function: &str) -> Option<(&'static str, &'static str, Value)> {
    let (template, field, allowed) = match function {
        "check_answer_status" => (
            CHECK_ANSWER_STATUS,
            "answer_status",
            json!(["Solved", "Unsolved", "Unsure"]),
        ),
        "parse_answer_status" => (
            PARSE_ANSWER_STATUS,
            "answer_status",
            json!(["Solved", "Unsolved", "Unsure"]),
        ),
        "check_task_solvable" => (
            CHECK_TASK_SOLVABLE,
            "task_status",
            json!(["Solvable", "Unsolvable", "Unsure"]),
        ),
        _ => return None,
    };
    let schema = json!({
        "name": function,
        "description": format!("Report the {field} and the reason for it."),
        "parameters": {
            "type": "object",
            "properties": {
                field: {"type": "string", "enum": allowed},
                "reason": {"type": "string", "description": "explain your answer."},
            },
            "required": [field, "reason"],
        },
    });
    Some((template, field, schema))
}

/// Where the prompts and function schemas come from.
enum Prompts {
    /// A ToolEval evaluator folder (config.yaml and template.txt).
    Folder(Box<EvaluatorFolder>),
    /// ablate's own (no folder given).
    Builtin,
}

pub struct Judge<'a> {
    url: String,
    /// The judge model: `eval.judge.model`, else the folder's.
    pub model: String,
    /// Judgments per example: `eval.judge.k`, else ToolEval's default (`evaluate_times`,
    /// 4) with a folder, 3 without.
    pub k: usize,
    temperature: Option<f64>,
    pub procedure: JudgeProcedure,
    prompts: Prompts,
    client: Client,
    cache: Option<&'a dyn AnswerCache>,
}

impl<'a> Judge<'a> {
    /// A judge for `cfg`, reading its evaluator folder (if any) and keeping its answers
    /// in `cache`.
    pub fn new(
        cfg: &JudgeConfig,
        cache: Option<&'a dyn AnswerCache>,
    ) -> Result<Judge<'a>, JudgeError> {
        let key = std::env::var(&cfg.api_key_env).ok();
        let prompts = match cfg.evaluator.trim() {
            "" => Prompts::Builtin,
            dir => Prompts::Folder(Box::new(EvaluatorFolder::load(std::path::Path::new(dir))?)),
        };
        let model = match (&prompts, cfg.model.trim()) {
            (Prompts::Folder(f), "") => f.model().unwrap_or_default().to_string(),
            (_, m) => m.to_string(),
        };
        let k = cfg.k.unwrap_or(match prompts {
            Prompts::Folder(_) => 4,
            Prompts::Builtin => 3,
        });
        let temperature = match &prompts {
            Prompts::Folder(_) => cfg.temperature,
            Prompts::Builtin => Some(cfg.temperature.unwrap_or(0.0)),
        };
        Ok(Judge {
            url: cfg.url.clone(),
            client: Client::new(&cfg.url, key, Duration::from_secs(cfg.timeout_s.max(1))),
            model,
            k,
            temperature,
            procedure: cfg.procedure,
            prompts,
            cache,
        })
    }

    /// The evaluator folder's name and content hash, when the prompts come from one.
    pub fn evaluator(&self) -> Option<(&str, &str)> {
        match &self.prompts {
            Prompts::Folder(f) => Some((&f.name, &f.digest)),
            Prompts::Builtin => None,
        }
    }

    fn endpoint_error(&self, message: String) -> JudgeError {
        JudgeError::Endpoint {
            url: self.url.clone(),
            message: self.client.scrub(&message),
        }
    }

    /// The chat-completions body for `function` with `args`, and the field it must fill.
    fn body(&self, function: &str, args: &[(&str, &str)]) -> Result<(Value, String), JudgeError> {
        match &self.prompts {
            Prompts::Folder(f) => {
                let mut body = f.request(function, args, Some(&self.model))?;
                if let Some(t) = self.temperature {
                    body["temperature"] = json!(t);
                }
                let field = match function {
                    "check_task_solvable" => "task_status",
                    _ => "answer_status",
                };
                Ok((body, field.to_string()))
            }
            Prompts::Builtin => {
                let (template, field, schema) =
                    builtin_schema(function).expect("ablate asks only its own three functions");
                let prompt = python_format(template, args).map_err(|message| {
                    super::tooleval::ToolEvalError::Format {
                        function: function.to_string(),
                        message,
                    }
                })?;
                let body = json!({
                    "model": self.model,
                    "temperature": self.temperature,
                    "messages": [{"role": "user", "content": prompt}],
                    "tools": [{"type": "function", "function": schema}],
                    "tool_choice": {"type": "function", "function": {"name": function}},
                });
                Ok((body, field.to_string()))
            }
        }
    }

    fn cache_key(&self, function: &str, sample: usize, body: &str) -> String {
        let mut h = Sha256::new();
        for part in [&self.url, function, &sample.to_string(), body] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Asks the judge to call `function` with `args` (judgment number `sample`); returns
    /// the status it gave and whether the endpoint was asked (false: from the cache).
    fn call(
        &self,
        function: &str,
        args: &[(&str, &str)],
        sample: usize,
    ) -> Result<(String, bool), JudgeError> {
        let (body, field) = self.body(function, args)?;
        let text = body.to_string();
        let key = self.cache_key(function, sample, &text);
        let cached = match self.cache {
            Some(c) => c.get(&key).map_err(JudgeError::Cache)?,
            None => None,
        };
        let (reply, asked) = match cached {
            Some(v) => (v, false),
            None => {
                // Successful replies are scrubbed too: an endpoint may echo the key in
                // any field, and this one is stored.
                let v = self.client.scrub_value(self.request(function, &body)?);
                if let Some(c) = self.cache {
                    c.put(CachedAnswer {
                        key: key.clone(),
                        endpoint: self.url.clone(),
                        model: self.model.clone(),
                        function: function.to_string(),
                        response: v.clone(),
                    })
                    .map_err(JudgeError::Cache)?;
                }
                (v, true)
            }
        };
        match reply[&field].as_str() {
            Some(s) => Ok((s.to_string(), asked)),
            None => Err(self.endpoint_error(format!(
                "{function}: the reply's call has no `{field}`: {}",
                reply.to_string().chars().take(300).collect::<String>()
            ))),
        }
    }

    fn request(&self, function: &str, body: &Value) -> Result<Value, JudgeError> {
        self.client
            .post(body, |v| match arguments(&v) {
                Some(args) => Verdict::Use(args),
                None => {
                    let text: String = v.to_string().chars().take(300).collect();
                    Verdict::Fail(format!("{function}: no function call in the reply: {text}"))
                }
            })
            .map_err(|e| match e {
                ChatError::Refused { message, .. } => JudgeError::Endpoint {
                    url: self.url.clone(),
                    message,
                },
                ChatError::Exhausted { attempts, last, .. } => JudgeError::Endpoint {
                    url: self.url.clone(),
                    message: format!("{attempts} attempts failed; the last: {last}"),
                },
            })
    }

    /// An answer status as the judge gave it, or an error naming the function.
    fn answer_status(&self, function: &str, s: &str) -> Result<AnswerStatus, JudgeError> {
        AnswerStatus::parse(s).ok_or_else(|| {
            self.endpoint_error(format!(
                "{function}: `answer_status` is {s:?}, expected one of Solved, Unsolved, Unsure"
            ))
        })
    }

    /// ToolEval's `check_is_solved`: Unsolved without a question for an empty or given-up
    /// answer, else `check_answer_status` on the final answer and, when Unsure,
    /// `parse_answer_status` on `json.dumps` of the whole converted answer.
    fn check_is_solved(
        &self,
        item: &Item,
        sample: usize,
        asked: &mut usize,
    ) -> Result<AnswerStatus, JudgeError> {
        let final_answer = match item.answer.get("final_answer") {
            Some(Py::Str(s)) => s.clone(),
            Some(other) => other.repr(),
            None => String::new(),
        };
        if final_answer.is_empty() || final_answer.contains("give_up_and_restart") {
            return Ok(AnswerStatus::Unsolved);
        }
        let (s, a) = self.call(
            "check_answer_status",
            &[("query", item.query), ("answer", &final_answer)],
            sample,
        )?;
        *asked += a as usize;
        let status = self.answer_status("check_answer_status", &s)?;
        if status != AnswerStatus::Unsure {
            return Ok(status);
        }
        let whole = item.answer.json_dumps();
        let (s, a) = self.call(
            "parse_answer_status",
            &[("query", item.query), ("answer", &whole)],
            sample,
        )?;
        *asked += a as usize;
        self.answer_status("parse_answer_status", &s)
    }

    /// One judgment (number `sample`) under the configured procedure.
    fn judge_once(
        &self,
        item: &Item,
        sample: usize,
        asked: &mut usize,
    ) -> Result<Judgment, JudgeError> {
        if !item.finished {
            // "No answer": ToolBench fails it (its task counted Solvable), StableToolBench
            // scores it Unsolved; neither asks.
            return Ok(Judgment {
                answer: AnswerStatus::Unsolved,
                task: None,
                passed: (self.procedure == JudgeProcedure::PassRate).then_some(false),
                coin: false,
            });
        }
        let answer = self.check_is_solved(item, sample, asked)?;
        if self.procedure == JudgeProcedure::Sopr {
            return Ok(Judgment {
                answer,
                task: None,
                passed: None,
                coin: false,
            });
        }
        if answer == AnswerStatus::Solved {
            return Ok(Judgment {
                answer,
                task: None,
                passed: Some(true),
                coin: false,
            });
        }
        // ToolBench's `check_task_solvable`: `json.dumps` of the query and the functions.
        let task = Py::Dict(vec![
            (Py::from("query"), Py::from(item.query)),
            (Py::from("available_tools"), item.available_tools.clone()),
        ]);
        let (s, a) = self.call(
            "check_task_solvable",
            &[("task", &task.json_dumps())],
            sample,
        )?;
        *asked += a as usize;
        let task = TaskStatus::parse(&s).ok_or_else(|| {
            self.endpoint_error(format!(
                "check_task_solvable: `task_status` is {s:?}, expected one of Solvable, Unsolvable, Unsure"
            ))
        })?;
        // ToolBench's `is_passed`.
        let (passed, coin) = match (answer, task) {
            (_, TaskStatus::Unsolvable) => (true, false),
            (AnswerStatus::Unsolved, TaskStatus::Solvable) => (false, false),
            _ => (coin(item.id, sample), true),
        };
        Ok(Judgment {
            answer,
            task: Some(task),
            passed: Some(passed),
            coin,
        })
    }

    /// Judges an example `k` times under the configured procedure.
    pub fn judge(&self, item: &Item) -> Result<Decision, JudgeError> {
        let mut requests = 0;
        // ToolBench's script checks for hallucinated names before judging, which turns
        // dict messages into their str(): its judge is shown the answer so changed.
        let mut changed;
        let item = match self.procedure {
            JudgeProcedure::PassRate => {
                changed = item.clone();
                toolbench_hallucination_check(&mut changed.answer, &item.available_tools);
                &changed
            }
            JudgeProcedure::Sopr => item,
        };
        let judgments = (0..self.k)
            .map(|sample| self.judge_once(item, sample, &mut requests))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(decide(item.finished, self.procedure, judgments, requests))
    }
}

/// The example's verdict from its judgments: ToolBench passes it when it passed at least
/// as often as it failed; StableToolBench's score is the judgments' mean, and the example
/// counts as passed (for paired tests and agreement) when that mean is at least 0.5.
fn decide(
    finished: bool,
    procedure: JudgeProcedure,
    judgments: Vec<Judgment>,
    requests: usize,
) -> Decision {
    let k = judgments.len().max(1);
    let unsure = judgments
        .iter()
        .filter(|j| j.answer == AnswerStatus::Unsure)
        .count();
    let (passed, score) = match procedure {
        JudgeProcedure::PassRate => {
            let n = judgments.iter().filter(|j| j.passed == Some(true)).count();
            (n * 2 >= k, None)
        }
        JudgeProcedure::Sopr => {
            let s = judgments.iter().map(|j| j.answer.score()).sum::<f64>() / k as f64;
            (s >= 0.5, Some(s))
        }
    };
    let verdict = if !finished {
        "no_answer"
    } else if passed {
        "pass"
    } else if unsure * 2 > k {
        "unsure"
    } else {
        "unsolved"
    };
    Decision {
        passed,
        verdict: verdict.into(),
        score,
        judgments,
        requests,
    }
}

/// A fair coin that is the same for the same example and judgment.
fn coin(id: &str, sample: usize) -> bool {
    let d = Sha256::digest(format!("{id}\0{sample}").as_bytes());
    d[0] & 1 == 1
}

/// The arguments of the reply's function call: `tool_calls` (current API), else
/// `function_call` (legacy), else the message content as a JSON object.
fn arguments(reply: &Value) -> Option<Value> {
    let msg = &reply["choices"][0]["message"];
    let text = msg["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .or_else(|| msg["function_call"]["arguments"].as_str())
        .or_else(|| msg["content"].as_str())?;
    serde_json::from_str::<Value>(text.trim())
        .ok()
        .filter(Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(answer: AnswerStatus, passed: Option<bool>) -> Judgment {
        Judgment {
            answer,
            task: None,
            passed,
            coin: false,
        }
    }

    #[test]
    fn ties_pass_under_toolbench_and_sopr_scores_unsure_as_half() {
        use AnswerStatus::*;
        let d = decide(
            true,
            JudgeProcedure::PassRate,
            vec![j(Solved, Some(true)), j(Unsolved, Some(false))],
            0,
        );
        assert!(d.passed);
        assert_eq!(d.verdict, "pass");
        let d = decide(
            true,
            JudgeProcedure::PassRate,
            vec![
                j(Unsolved, Some(false)),
                j(Unsure, Some(false)),
                j(Unsure, Some(true)),
            ],
            0,
        );
        assert!(!d.passed);
        assert_eq!(d.verdict, "unsure");
        let d = decide(
            true,
            JudgeProcedure::Sopr,
            vec![j(Unsure, None), j(Unsolved, None), j(Unsure, None)],
            0,
        );
        assert_eq!(d.score, Some(1.0 / 3.0));
        assert!(!d.passed);
        let d = decide(false, JudgeProcedure::Sopr, vec![j(Unsolved, None)], 0);
        assert_eq!((d.verdict.as_str(), d.score), ("no_answer", Some(0.0)));
    }
}
