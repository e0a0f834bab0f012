//! The LLM judge: ToolEval's pass-rate procedure (StableToolBench's
//! `ReinforceToolLearningEvaluator`, run by `eval_pass_rate.py`) against any
//! OpenAI-compatible chat-completions endpoint.
//!
//! A path that never called `Finish` fails without a question. Per judgment: an empty
//! or given-up answer is Unsolved without a call; otherwise the
//! judge is asked `check_answer_status` on the final answer, and when it is Unsure,
//! `parse_answer_status` on the whole answer (its steps included). An answer that is not
//! Solved is then weighed against `check_task_solvable`: Unsolved on a solvable task
//! fails, anything on an unsolvable task passes, the rest is Unsure and decided by a coin.
//! Each example is judged `k` times and passes when it passed at least as often as it
//! failed (ToolEval's count). ToolEval's coins are random; here they are a hash of the
//! example and the judgment, so a verdict does not change between runs.
//!
//! Every answer of the endpoint is cached in the results database (`judge_cache`), keyed by
//! endpoint, model, function, judgment index and prompt: judging the same thing twice asks
//! once. The API key comes from the environment at run time and goes only into the
//! Authorization header; anything the endpoint says back is scrubbed of it before it is
//! kept or shown.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::JudgeConfig;
use crate::data::ToolSpec;

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("LLM judge at {url}: {message}")]
    Endpoint { url: String, message: String },
    #[error("LLM judge cache: {0}")]
    Cache(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerStatus {
    Solved,
    Unsolved,
    Unsure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Solvable,
    Unsolvable,
    Unsure,
}

/// What is judged: the query, the tools it offered, and the answer in ToolEval's shape
/// (`final_answer` and `answer_details`, the path that led to it).
#[derive(Debug, Clone)]
pub struct Item<'a> {
    /// Stable id of the example (seeds the coins).
    pub id: &'a str,
    pub query: &'a str,
    pub tools: &'a [ToolSpec],
    /// The answer given with `Finish`; None when the path never finished, which fails
    /// without a question (ToolEval's "No answer").
    pub final_answer: Option<&'a str>,
    /// The steps that led to the answer, as JSON (ToolEval's `answer_details`).
    pub details: Value,
}

/// The outcome of judging one example `k` times.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub passed: bool,
    /// `pass`, or why not: `unsolved`, `unsure` (lost a coin or the count), `no_answer`.
    pub verdict: String,
    /// Requests that reached the endpoint (the rest came from the cache).
    pub requests: usize,
}

// The three prompts follow ToolEval's template (tooleval_gpt-3.5-turbo_default): the same
// rules, the same statuses, reworded.
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

/// The function a prompt asks the judge to call, with the field it must fill.
fn function(name: &str) -> (&'static str, &'static str, &'static [&'static str]) {
    match name {
        "check_answer_status" => (
            CHECK_ANSWER_STATUS,
            "answer_status",
            &["Solved", "Unsolved", "Unsure"],
        ),
        "parse_answer_status" => (
            PARSE_ANSWER_STATUS,
            "answer_status",
            &["Solved", "Unsolved", "Unsure"],
        ),
        _ => (
            CHECK_TASK_SOLVABLE,
            "task_status",
            &["Solvable", "Unsolvable", "Unsure"],
        ),
    }
}

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

pub struct Judge<'a> {
    cfg: JudgeConfig,
    endpoint: String,
    key: Option<String>,
    agent: ureq::Agent,
    cache: Option<&'a dyn AnswerCache>,
}

impl<'a> Judge<'a> {
    /// A judge for `cfg`, keeping its answers in `cache`.
    pub fn new(
        cfg: &JudgeConfig,
        cache: Option<&'a dyn AnswerCache>,
    ) -> Result<Judge<'a>, JudgeError> {
        let key = std::env::var(&cfg.api_key_env)
            .ok()
            .filter(|k| !k.trim().is_empty());
        Ok(Judge {
            endpoint: format!("{}/chat/completions", cfg.url.trim_end_matches('/')),
            cfg: cfg.clone(),
            key,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(cfg.timeout_s.max(1)))
                .build(),
            cache,
        })
    }

    /// Removes the API key from text that came back from the endpoint, in every spelling
    /// it can come back in: as sent, JSON-escaped (inside a JSON string) and URL-encoded.
    fn scrub(&self, text: &str) -> String {
        let Some(k) = &self.key else {
            return text.to_string();
        };
        let json = serde_json::to_string(k).unwrap_or_default();
        let json = json.trim_matches('"').to_string();
        let url: String = k
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let mut out = text.to_string();
        for form in [k.clone(), json, url.clone(), url.to_lowercase()] {
            if !form.is_empty() {
                out = out.replace(&form, "[API key]");
            }
        }
        out
    }

    /// A reply with the key scrubbed from every string in it: what is kept and shown.
    fn scrub_value(&self, v: Value) -> Value {
        match self.key {
            Some(_) => serde_json::from_str(&self.scrub(&v.to_string())).unwrap_or(v),
            None => v,
        }
    }

    fn endpoint_error(&self, message: String) -> JudgeError {
        JudgeError::Endpoint {
            url: self.cfg.url.clone(),
            message: self.scrub(&message),
        }
    }

    fn cache_key(&self, name: &str, sample: usize, prompt: &str) -> String {
        let mut h = Sha256::new();
        for part in [
            &self.cfg.url,
            &self.cfg.model,
            name,
            &sample.to_string(),
            prompt,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn cached(&self, key: &str) -> Result<Option<Value>, JudgeError> {
        match self.cache {
            Some(c) => c.get(key).map_err(JudgeError::Cache),
            None => Ok(None),
        }
    }

    fn remember(&self, key: &str, name: &str, response: &Value) -> Result<(), JudgeError> {
        match self.cache {
            Some(c) => c
                .put(CachedAnswer {
                    key: key.to_string(),
                    endpoint: self.cfg.url.clone(),
                    model: self.cfg.model.clone(),
                    function: name.to_string(),
                    response: response.clone(),
                })
                .map_err(JudgeError::Cache),
            None => Ok(()),
        }
    }

    /// Asks the judge to call function `name` on `prompt`; returns (status, reason) and
    /// whether the endpoint was asked (false: from the cache).
    fn call(
        &self,
        name: &str,
        prompt: String,
        sample: usize,
    ) -> Result<(String, bool), JudgeError> {
        let (_, field, allowed) = function(name);
        let key = self.cache_key(name, sample, &prompt);
        let (args, asked) = match self.cached(&key)? {
            Some(v) => (v, false),
            None => {
                // Successful replies are scrubbed too: an endpoint may echo the key in
                // any field, and this one is stored.
                let v = self.scrub_value(self.request(name, field, allowed, &prompt)?);
                self.remember(&key, name, &v)?;
                (v, true)
            }
        };
        let status = args[field].as_str().unwrap_or_default().to_string();
        if !allowed.contains(&status.as_str()) {
            return Err(self.endpoint_error(format!(
                "{name}: `{field}` is {:?}, expected one of {}",
                args[field],
                allowed.join(", ")
            )));
        }
        Ok((status, asked))
    }

    fn request(
        &self,
        name: &str,
        field: &str,
        allowed: &[&str],
        prompt: &str,
    ) -> Result<Value, JudgeError> {
        let body = json!({
            "model": self.cfg.model,
            "temperature": self.cfg.temperature,
            "messages": [{"role": "user", "content": prompt}],
            "tools": [{"type": "function", "function": {
                "name": name,
                "description": format!("Report the {field} and the reason for it."),
                "parameters": {
                    "type": "object",
                    "properties": {
                        field: {"type": "string", "enum": allowed},
                        "reason": {"type": "string", "description": "explain your answer."},
                    },
                    "required": [field, "reason"],
                },
            }}],
            "tool_choice": {"type": "function", "function": {"name": name}},
        });
        let mut last = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << attempt));
            }
            let mut req = self
                .agent
                .post(&self.endpoint)
                .set("Content-Type", "application/json");
            if let Some(k) = &self.key {
                req = req.set("Authorization", &format!("Bearer {k}"));
            }
            match req.send_json(&body) {
                Ok(resp) => {
                    let v: Value = resp
                        .into_json()
                        .map_err(|e| self.endpoint_error(format!("unreadable reply: {e}")))?;
                    return arguments(&v).ok_or_else(|| {
                        let text: String = v.to_string().chars().take(300).collect();
                        self.endpoint_error(format!(
                            "{name}: no function call in the reply: {text}"
                        ))
                    });
                }
                // 4xx other than rate limits will not get better by asking again.
                Err(ureq::Error::Status(code, resp)) if code != 429 && code < 500 => {
                    let text: String = resp
                        .into_string()
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect();
                    return Err(self.endpoint_error(format!("HTTP {code}: {text}")));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(self.endpoint_error(format!("3 attempts failed; the last: {last}")))
    }

    /// One of ToolEval's judgments: (passed, answer status) for judgment number `sample`.
    fn judge_once(
        &self,
        item: &Item,
        sample: usize,
    ) -> Result<(bool, AnswerStatus, usize), JudgeError> {
        let mut asked = 0;
        let mut ask = |name: &str, prompt: String| -> Result<String, JudgeError> {
            let (status, was_asked) = self.call(name, prompt, sample)?;
            asked += was_asked as usize;
            Ok(status)
        };
        let final_answer = item.final_answer.unwrap_or_default();
        // An empty or given-up answer is Unsolved without a question; whether the task
        // was solvable is still asked (an unsolvable task passes).
        let answer_status =
            if final_answer.trim().is_empty() || final_answer.contains("give_up_and_restart") {
                AnswerStatus::Unsolved
            } else {
                let fill = |template: &str, answer: &str| {
                    template
                        .replace("{query}", item.query)
                        .replace("{answer}", answer)
                };
                let status = ask(
                    "check_answer_status",
                    fill(CHECK_ANSWER_STATUS, final_answer),
                )?;
                let status = if status == "Unsure" {
                    let whole = json!({
                        "final_answer": final_answer,
                        "answer_details": item.details,
                    });
                    ask(
                        "parse_answer_status",
                        fill(PARSE_ANSWER_STATUS, &whole.to_string()),
                    )?
                } else {
                    status
                };
                match status.as_str() {
                    "Solved" => AnswerStatus::Solved,
                    "Unsolved" => AnswerStatus::Unsolved,
                    _ => AnswerStatus::Unsure,
                }
            };
        if answer_status == AnswerStatus::Solved {
            return Ok((true, answer_status, asked));
        }
        let task = json!({
            "query": item.query,
            "available_tools": item.tools.iter().map(|t| json!({
                "name": t.name, "description": t.description, "parameters": t.parameters,
            })).collect::<Vec<_>>(),
        });
        let task_status = match ask(
            "check_task_solvable",
            CHECK_TASK_SOLVABLE.replace("{task}", &task.to_string()),
        )?
        .as_str()
        {
            "Solvable" => TaskStatus::Solvable,
            "Unsolvable" => TaskStatus::Unsolvable,
            _ => TaskStatus::Unsure,
        };
        let passed = match (answer_status, task_status) {
            (_, TaskStatus::Unsolvable) => true,
            (AnswerStatus::Unsolved, TaskStatus::Solvable) => false,
            // Unsure either way: ToolEval flips a coin.
            _ => coin(item.id, sample),
        };
        Ok((passed, answer_status, asked))
    }

    /// Judges an example `k` times; it passes when it passed at least as often as it failed.
    pub fn judge(&self, item: &Item) -> Result<Decision, JudgeError> {
        if item.final_answer.is_none() {
            return Ok(Decision {
                passed: false,
                verdict: "no_answer".into(),
                requests: 0,
            });
        }
        let (mut passed, mut unsure, mut requests) = (0usize, 0usize, 0usize);
        for sample in 0..self.cfg.k {
            let (p, status, asked) = self.judge_once(item, sample)?;
            passed += p as usize;
            unsure += (status == AnswerStatus::Unsure) as usize;
            requests += asked;
        }
        let ok = passed * 2 >= self.cfg.k;
        let verdict = if ok {
            "pass"
        } else if unsure * 2 > self.cfg.k {
            "unsure"
        } else {
            "unsolved"
        };
        Ok(Decision {
            passed: ok,
            verdict: verdict.into(),
            requests,
        })
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
