//! `simulate`: an OpenAI-compatible model plays the API, as StableToolBench's simulator
//! does: it is given the function's documentation, examples of earlier calls and their
//! responses (from the `cache` folder, when there is one), and the call, and answers with
//! `{"error", "response"}`. Its system prompt is read from the file the user names
//! (`eval.tools.simulator.prompt`), for instance a copy of StableToolBench's; without one,
//! ablate's own words. Every answer is kept in the results database (the judge's cache),
//! so an episode generated again asks nothing.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::backend::{
    cache_location, error_reply, input_parse_error, parse_tool_input, Backend, BackendError, Reply,
};
use super::{Call, Task};
use crate::chat::{self, ChatError, Client, Verdict};
use crate::data::pyliteral::{self, Py};
use crate::eval::llm_judge::{AnswerCache, CachedAnswer};

/// ablate's own instructions, used when no prompt file is named.
pub const DEFAULT_PROMPT: &str = "You play a web API. Given its documentation, examples \
of earlier calls with their responses, and a new call, answer the call as the API would. \
Reply with one JSON object and nothing else: {\"error\": \"\", \"response\": <what the API \
returns, as a string>}. If the call cannot succeed (a missing or wrong parameter), put the \
API's error message in \"error\".";

/// Examples of earlier calls shown to the simulator: at most this many, cut to this
/// many characters of their Python spelling.
const EXAMPLES: usize = 5;
const EXAMPLES_CHARS: usize = 2048;

pub struct Simulator<'a> {
    client: Client,
    model: String,
    temperature: f64,
    system: String,
    /// A `tool_response_cache/` folder to draw examples from.
    examples: Option<PathBuf>,
    task: &'a Task,
    cache: Option<&'a dyn AnswerCache>,
}

pub struct SimulatorSettings<'a> {
    pub url: &'a str,
    pub model: &'a str,
    pub temperature: f64,
    /// The system prompt (the prompt file's text, or [`DEFAULT_PROMPT`]).
    pub system: String,
    pub key: Option<String>,
    pub timeout: Duration,
    pub examples: Option<PathBuf>,
}

impl<'a> Simulator<'a> {
    pub fn new(
        s: SimulatorSettings,
        task: &'a Task,
        cache: Option<&'a dyn AnswerCache>,
    ) -> Simulator<'a> {
        Simulator {
            client: Client::new(s.url, s.key, s.timeout),
            model: s.model.to_string(),
            temperature: s.temperature,
            system: s.system,
            examples: s.examples,
            task,
            cache,
        }
    }

    /// The user message: the function's documentation, examples, and the call.
    fn question(&self, call: &Call, input: &Py) -> String {
        let doc = self
            .task
            .functions
            .iter()
            .find(|f| f.name == call.api.function)
            .map(|f| json!({"name": f.name, "description": f.description, "parameters": f.parameters}))
            .unwrap_or(Value::Null);
        let mut examples = String::new();
        if let Some(root) = &self.examples {
            let (path, _) = cache_location(root, call);
            if let Some(Py::Dict(items)) = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| pyliteral::json_loads(&t).ok())
            {
                let shown: Vec<String> = items
                    .iter()
                    .take(EXAMPLES)
                    .map(|(k, v)| {
                        let k = match k {
                            Py::Str(k) => k.clone(),
                            k => k.repr(),
                        };
                        format!("call {k} -> {}", v.json_dumps())
                    })
                    .collect();
                examples = shown.join("\n").chars().take(EXAMPLES_CHARS).collect();
            }
        }
        format!(
            "Documentation: {doc}\nExamples:\n{}\nCall: {}\n",
            if examples.is_empty() {
                "(none)"
            } else {
                &examples
            },
            input.repr()
        )
    }

    fn key_of(&self, question: &str) -> String {
        let mut h = Sha256::new();
        for part in [
            self.client.endpoint.as_str(),
            &self.model,
            &self.temperature.to_string(),
            &self.system,
            question,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        format!("simulate:{:x}", h.finalize())
    }

    /// The reply's content, without the API key if the endpoint echoed it.
    fn ask(&self, question: &str) -> Result<Option<String>, BackendError> {
        let body = json!({
            "model": self.model,
            "temperature": self.temperature,
            "messages": [
                {"role": "system", "content": self.system},
                {"role": "user", "content": question},
            ],
            "response_format": {"type": "json_object"},
        });
        let reply = self.client.post(&body, |v| {
            let content = chat::content(&v)
                .unwrap_or_default()
                .replace("```json", "")
                .replace("```", "");
            let content = self.client.scrub(content.trim());
            // A reply that is not a JSON object is asked again, as upstream does.
            match pyliteral::json_loads(&content) {
                Ok(Py::Dict(_)) => Verdict::Use(content),
                _ => Verdict::Again("the reply is not a JSON object".into()),
            }
        });
        match reply {
            Ok(content) => Ok(Some(content)),
            Err(ChatError::Exhausted { replied: true, .. }) => Ok(None),
            Err(ChatError::Exhausted { attempts, last, .. }) => Err(BackendError::Unreachable {
                url: self.client.endpoint.clone(),
                attempts,
                last,
            }),
            Err(ChatError::Refused { message, .. }) => Err(BackendError::Unreachable {
                url: self.client.endpoint.clone(),
                attempts: 1,
                last: message,
            }),
        }
    }
}

impl Backend for Simulator<'_> {
    fn name(&self) -> &'static str {
        "simulate"
    }

    fn call(&mut self, call: &Call) -> Result<Reply, BackendError> {
        let Some(input) = parse_tool_input(call.tool_input) else {
            return Ok(Reply::Response(input_parse_error()));
        };
        let question = self.question(call, &input);
        let key = self.key_of(&question);
        let known = match self.cache {
            Some(c) => c
                .get(&key)
                .map_err(|e| BackendError::Cache {
                    path: "judge_cache".into(),
                    message: e,
                })?
                .and_then(|v| v.as_str().map(String::from)),
            None => None,
        };
        let content = match known {
            Some(a) => a,
            None => {
                let Some(content) = self.ask(&question)? else {
                    return Ok(Reply::Response(error_reply(
                        "the simulator did not answer with JSON",
                    )));
                };
                if let Some(c) = self.cache {
                    c.put(CachedAnswer {
                        key: key.clone(),
                        endpoint: self.client.endpoint.clone(),
                        model: self.model.clone(),
                        function: "simulate".into(),
                        response: Value::String(content.clone()),
                    })
                    .map_err(|e| BackendError::Cache {
                        path: "judge_cache".into(),
                        message: e,
                    })?;
                }
                content
            }
        };
        let reply = pyliteral::json_loads(&content).map_err(|e| BackendError::Cache {
            path: "judge_cache".into(),
            message: format!("a stored simulator answer is not JSON: {e}"),
        })?;
        Ok(Reply::Response(reply))
    }
}
