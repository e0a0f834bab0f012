//! Tool backends: what answers a call. `recorded` replays an answer file's observations;
//! `cache` reads a StableToolBench `tool_response_cache/` folder the way its server does;
//! `stabletoolbench` asks that server over HTTP. A backend that has no answer says so
//! (`Miss`) and the next one is asked; one that cannot be reached is an error, which ends
//! the episode as `backend_error` (never scored as the model's failure).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::functions::{change_name, standard_category, standardize};
use super::{status, Call};
use crate::data::pyliteral::{self, Py};
use crate::data::toolbench::Trajectory;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    #[error("{url} could not be reached after {attempts} attempts: {last}")]
    Unreachable {
        url: String,
        attempts: usize,
        last: String,
    },
    #[error("{path}: {message}")]
    Cache { path: String, message: String },
}

/// A backend's answer to one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The tool server's reply (`{"error", "response"}`), passed on as `json.dumps` of it.
    Response(Py),
    /// An observation already in its final text, with its status.
    Observation(String, u8),
    /// This backend has no answer; ask the next.
    Miss,
}

pub trait Backend {
    fn name(&self) -> &'static str;
    fn call(&mut self, call: &Call) -> Result<Reply, BackendError>;
}

/// The tool input as StableToolBench's server parses it: JSON, the empty string as `{}`;
/// `None` when it is not JSON.
pub fn parse_tool_input(input: &str) -> Option<Py> {
    if input.is_empty() {
        return Some(Py::Dict(Vec::new()));
    }
    pyliteral::json_loads(input).ok()
}

/// StableToolBench's server's reply to input that is not JSON.
pub fn input_parse_error() -> Py {
    error_reply("Tool input parse error...\n")
}

/// A tool server's `{"error": message, "response": ""}`.
pub fn error_reply(message: &str) -> Py {
    Py::Dict(vec![
        (Py::Str("error".into()), Py::Str(message.into())),
        (Py::Str("response".into()), Py::Str(String::new())),
    ])
}

/// Replays the observations of a recorded trajectory: a call with the name and arguments
/// of a recorded step (each used once) gets that step's observation; any other call gets
/// an error observation saying there is no recording of it.
pub struct Recorded<'a> {
    trajectory: &'a Trajectory,
    used: Vec<bool>,
}

impl<'a> Recorded<'a> {
    pub fn new(trajectory: &'a Trajectory) -> Recorded<'a> {
        Recorded {
            used: vec![false; trajectory.steps.len()],
            trajectory,
        }
    }
}

impl Backend for Recorded<'_> {
    fn name(&self) -> &'static str {
        "recorded"
    }

    fn call(&mut self, call: &Call) -> Result<Reply, BackendError> {
        let arguments: Option<serde_json::Value> = serde_json::from_str(call.tool_input).ok();
        for (i, s) in self.trajectory.steps.iter().enumerate() {
            if self.used[i] || s.action != call.api.function {
                continue;
            }
            let recorded: Option<serde_json::Value> = serde_json::from_str(&s.action_input).ok();
            if recorded.is_some() && recorded == arguments {
                if let Some(obs) = &s.observation {
                    self.used[i] = true;
                    return Ok(Reply::Observation(obs.clone(), status::OK));
                }
            }
        }
        Ok(Reply::Response(error_reply(
            "no recorded response for this call (offline replay of the ToolBench trajectory)",
        )))
    }
}

/// The file and key under which StableToolBench's server caches a call
/// (`prepare_tool_name_and_url`, then `str(tool_input)`).
pub fn cache_location(root: &Path, call: &Call) -> (PathBuf, Option<String>) {
    let category = standard_category(&call.api.category);
    let mut tool = call.api.tool_name.clone();
    let api = change_name(&standardize(&call.api.api_name));
    let api = api
        .split(&format!("_for_{tool}"))
        .next()
        .unwrap_or_default()
        .to_string();
    if !tool.ends_with(&format!("_for_{category}")) {
        tool = format!("{}_for_{category}", standardize(&tool));
    }
    let path = root.join(&category).join(&tool).join(format!("{api}.json"));
    (path, parse_tool_input(call.tool_input).map(|v| v.repr()))
}

/// A StableToolBench `tool_response_cache/` folder, read directly.
pub struct Cache {
    root: PathBuf,
    files: HashMap<PathBuf, Option<Py>>,
}

impl Cache {
    pub fn new(root: &Path) -> Cache {
        Cache {
            root: root.to_path_buf(),
            files: HashMap::new(),
        }
    }

    fn file(&mut self, path: &Path) -> Result<Option<&Py>, BackendError> {
        if !self.files.contains_key(path) {
            let parsed = match std::fs::read_to_string(path) {
                Ok(text) => {
                    Some(
                        pyliteral::json_loads(&text).map_err(|e| BackendError::Cache {
                            path: path.display().to_string(),
                            message: format!("not JSON: {e}"),
                        })?,
                    )
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(BackendError::Cache {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })
                }
            };
            self.files.insert(path.to_path_buf(), parsed);
        }
        Ok(self.files[path].as_ref())
    }
}

impl Backend for Cache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn call(&mut self, call: &Call) -> Result<Reply, BackendError> {
        let (path, key) = cache_location(&self.root, call);
        let Some(key) = key else {
            return Ok(Reply::Response(input_parse_error()));
        };
        Ok(match self.file(&path)?.and_then(|f| f.get(&key)) {
            Some(reply) => Reply::Response(reply.clone()),
            None => Reply::Miss,
        })
    }
}

/// StableToolBench's server: `POST {url}/virtual`. Timeouts, refused connections and 5xx
/// answers are retried (3 attempts); a 4xx is ToolBench's "request invalid" observation.
pub struct Server {
    endpoint: String,
    key: String,
    agent: ureq::Agent,
}

impl Server {
    /// `key` is the `toolbench_key` sent with every call (never stored).
    pub fn new(url: &str, key: String, timeout: Duration) -> Server {
        let url = url.trim_end_matches('/');
        let endpoint = if url.ends_with("/virtual") {
            url.to_string()
        } else {
            format!("{url}/virtual")
        };
        Server {
            endpoint,
            key,
            agent: ureq::AgentBuilder::new().timeout(timeout).build(),
        }
    }
}

impl Backend for Server {
    fn name(&self) -> &'static str {
        "stabletoolbench"
    }

    fn call(&mut self, call: &Call) -> Result<Reply, BackendError> {
        let body = serde_json::json!({
            "category": call.api.category,
            "tool_name": call.api.tool_name,
            "api_name": call.api.api_name,
            "tool_input": call.tool_input,
            "strip": "truncate",
            "toolbench_key": self.key,
        });
        const ATTEMPTS: usize = 3;
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250 << attempt));
            }
            let sent = self
                .agent
                .post(&self.endpoint)
                .set("toolbench_key", &self.key)
                .send_json(&body);
            match sent {
                Ok(resp) => {
                    let text = resp.into_string().unwrap_or_default();
                    return Ok(match pyliteral::json_loads(&text) {
                        Ok(reply) => Reply::Response(reply),
                        Err(_) => Reply::Response(error_reply("request invalid, data error")),
                    });
                }
                Err(ureq::Error::Status(code, _)) if code < 500 && code != 429 => {
                    return Ok(Reply::Observation(
                        error_reply(&format!("request invalid, data error. status_code={code}"))
                            .json_dumps(),
                        status::REQUEST_ERROR,
                    ));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(BackendError::Unreachable {
            url: self.endpoint.clone(),
            attempts: ATTEMPTS,
            last,
        })
    }
}
