//! The tool environment of ToolBench's agent protocol: the functions a query offers, what
//! a call returns (a tool backend: the recorded trajectory, StableToolBench's response
//! cache, its server), and ToolBench's rules for one step (`rapidapi_wrapper._step`): a
//! name that is not offered and input that is not JSON are answered with ToolBench's error
//! observations and the episode goes on; `Finish` ends it with an answer or a give-up.

pub mod backend;
pub mod functions;
pub mod simulate;

use serde_json::Value;

use crate::data::pyliteral::{self, Py};
use crate::data::toolbench::{TestQuery, Trajectory};
use crate::data::ToolSpec;
use crate::eval::signals::Signals;
pub use backend::{Backend, BackendError, Reply};
pub use functions::ApiRef;

/// One query the agent answers.
#[derive(Debug, Clone)]
pub struct Task {
    /// The example id its episode is stored under (`<group>-<query id>`).
    pub id: String,
    /// The query id as the query set has it (ToolEval's key).
    pub query_id: String,
    /// The test group (`G1_instruction`, ...; `G1` for answer files).
    pub group: String,
    pub query: String,
    /// The functions offered, `Finish` last.
    pub functions: Vec<ToolSpec>,
    /// Where each function other than `Finish` sends its calls (empty for a recorded
    /// trajectory, whose answer file does not say).
    pub apis: Vec<ApiRef>,
    /// The trajectory whose observations a `recorded` backend replays.
    pub recorded: Option<Trajectory>,
}

impl Task {
    /// A query of a query set (`test_instruction/<group>.json`), its functions built as
    /// ToolBench builds them.
    pub fn from_query(q: &TestQuery, group: &str) -> Task {
        let (mut functions, apis): (Vec<ToolSpec>, Vec<ApiRef>) = q
            .api_list
            .iter()
            .filter_map(functions::api_function)
            .unzip();
        functions.push(functions::finish());
        let query_id = match &q.query_id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Task {
            id: format!("{group}-{query_id}"),
            query_id,
            group: group.to_string(),
            query: q.query.clone(),
            functions,
            apis,
            recorded: None,
        }
    }

    /// An answer file's trajectory: its own functions, its observations replayed.
    pub fn from_trajectory(t: Trajectory) -> Task {
        Task {
            id: t.id.clone(),
            query_id: t.id.rsplit('-').next().unwrap_or_default().to_string(),
            group: t.group.clone(),
            query: t.query.clone(),
            functions: t.functions.clone(),
            apis: Vec::new(),
            recorded: Some(t),
        }
    }
}

/// ToolBench's observation status codes (`rapidapi_wrapper._step`).
pub mod status {
    pub const OK: u8 = 0;
    pub const NO_SUCH_FUNCTION: u8 = 1;
    pub const INPUT_ERROR: u8 = 2;
    pub const FINISHED: u8 = 3;
    pub const GAVE_UP: u8 = 4;
    pub const TIMEOUT: u8 = 5;
    pub const NOT_WORKING: u8 = 6;
    pub const UNAUTHORIZED: u8 = 7;
    pub const UNSUBSCRIBED: u8 = 8;
    pub const TOO_MANY_REQUESTS: u8 = 9;
    pub const RATE_LIMIT: u8 = 10;
    pub const MESSAGE_ERROR: u8 = 11;
    pub const REQUEST_ERROR: u8 = 12;
}

/// What a router can read of a stored episode (its prediction's detail) without gold: its
/// ending, and the statuses ToolBench's environment gave its steps.
pub fn episode_signals(detail: &Value) -> Signals {
    let ending = detail["ending"].as_str().unwrap_or_default();
    let steps = detail["steps"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let code = |st: &Value| st["status"].as_u64().map(|c| c as u8);
    Signals {
        format: steps.iter().any(|st| {
            code(st) == Some(status::INPUT_ERROR)
                || (code(st) == Some(status::NO_SUCH_FUNCTION)
                    && st["action"].as_str().is_some_and(str::is_empty))
        }),
        hallucinated: steps.iter().any(|st| {
            code(st) == Some(status::NO_SUCH_FUNCTION)
                && st["action"].as_str().is_some_and(|a| !a.is_empty())
        }),
        gave_up: ending == "gave_up",
        no_finish: matches!(ending, "no_finish" | "context_overflow" | "empty_answer"),
    }
}

/// What one step of the agent produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The episode goes on with this observation (cut as ToolBench cuts it).
    Observation {
        text: String,
        status: u8,
        /// The backend that answered; `None` when the environment itself did (an unknown
        /// name, a bad `Finish`).
        backend: Option<&'static str>,
    },
    /// `Finish` with `give_answer`: the final answer (as a string; other JSON as text).
    Answered(String),
    /// `Finish` with `give_up_and_restart`.
    GaveUp,
    /// No backend could answer (down, timing out, 5xx after retries): not the model's
    /// doing, and the episode is not scored.
    BackendError(String),
}

/// Observations longer than this many characters are cut and marked with `...`
/// (ToolBench's `--max_observation_length 1024`).
pub const MAX_OBSERVATION_CHARS: usize = 1024;

fn cut(obs: String) -> String {
    match obs.char_indices().nth(MAX_OBSERVATION_CHARS) {
        Some((i, _)) => format!("{}...", &obs[..i]),
        None => obs,
    }
}

/// The step status ToolBench derives from a backend reply's `error` field.
fn reply_status(reply: &Py) -> u8 {
    match reply.get("error") {
        Some(Py::Str(e)) => match e.as_str() {
            "API not working error..." => status::NOT_WORKING,
            "Unauthorized error..." => status::UNAUTHORIZED,
            "Unsubscribed error..." => status::UNSUBSCRIBED,
            "Too many requests error..." => status::TOO_MANY_REQUESTS,
            "Rate limit per minute error..." => status::RATE_LIMIT,
            "Message error..." => status::MESSAGE_ERROR,
            _ => status::OK,
        },
        _ => status::OK,
    }
}

/// `Finish`'s arguments as ToolBench reads them: JSON when it parses, else the
/// `"return_type": "` / `"final_answer": "` text found in the input.
fn finish_arguments(input: &str) -> Py {
    if let Ok(args @ Py::Dict(_)) = pyliteral::json_loads(&lenient(input)) {
        return args;
    }
    let mut items = Vec::new();
    const RT: &str = "\"return_type\": \"";
    if let Some(at) = input.find(RT) {
        let rt = if input.contains("\"return_type\": \"give_answer\"") {
            "give_answer".to_string()
        } else if input.contains("\"return_type\": \"give_up_and_restart\"") {
            "give_up_and_restart".to_string()
        } else {
            let rest = &input[at + RT.len()..];
            rest[..rest.find("\",").unwrap_or(rest.len())].to_string()
        };
        items.push((Py::Str("return_type".into()), Py::Str(rt)));
    }
    const FA: &str = "\"final_answer\": \"";
    if let Some(at) = input.find(FA) {
        items.push((
            "final_answer".into(),
            Py::Str(input[at + FA.len()..].to_string()),
        ));
    }
    Py::Dict(items)
}

/// Python's `json.loads(..., strict=False)` allows control characters inside strings;
/// serde does not, so they are escaped first (outside strings they are whitespace or
/// errors either way).
fn lenient(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in input.chars() {
        if in_string && !escaped && (c as u32) < 0x20 {
            out.push_str(&format!("\\u{:04x}", c as u32));
            continue;
        }
        out.push(c);
        if escaped {
            escaped = false;
        } else if in_string && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_string = !in_string;
        }
    }
    out
}

/// A call as ToolBench sends it to its tool server.
#[derive(Debug, Clone, PartialEq)]
pub struct Call<'a> {
    pub api: &'a ApiRef,
    /// The arguments exactly as the model wrote them.
    pub tool_input: &'a str,
}

/// One episode's environment: the task and its backends, tried in order until one
/// answers.
pub struct Env<'a> {
    pub task: &'a Task,
    backends: Vec<Box<dyn Backend + 'a>>,
}

impl<'a> Env<'a> {
    pub fn new(task: &'a Task, backends: Vec<Box<dyn Backend + 'a>>) -> Env<'a> {
        Env { task, backends }
    }

    /// ToolBench's step: `Finish` ends or is answered with an input error; a function
    /// offered (the first whose name ends with `action`, as ToolBench matches) goes to the
    /// backends; anything else gets "No such function name".
    pub fn step(&mut self, action: &str, input: &str) -> Outcome {
        let env_says = |text: String, status: u8| Outcome::Observation {
            text: cut(text),
            status,
            backend: None,
        };
        if action == "Finish" {
            let args = finish_arguments(input);
            let get = |k: &str| args.get(k);
            return match get("return_type") {
                None => env_says(
                    "{error:\"must have \"return_type\"\"}".into(),
                    status::INPUT_ERROR,
                ),
                Some(Py::Str(rt)) if rt == "give_up_and_restart" => Outcome::GaveUp,
                Some(Py::Str(rt)) if rt == "give_answer" => match get("final_answer") {
                    None => env_says(
                        "{error:\"must have \"final_answer\"\"}".into(),
                        status::INPUT_ERROR,
                    ),
                    Some(Py::Str(a)) => Outcome::Answered(a.clone()),
                    Some(other) => Outcome::Answered(other.repr()),
                },
                Some(_) => env_says(
                    "{error:\"\"return_type\" is not a valid choice\"}".into(),
                    status::INPUT_ERROR,
                ),
            };
        }
        let offered = self
            .task
            .functions
            .iter()
            .position(|f| f.name != "Finish" && !action.is_empty() && f.name.ends_with(action));
        let Some(k) = offered else {
            return env_says(
                backend::error_reply(&format!("No such function name: {action}")).json_dumps(),
                status::NO_SUCH_FUNCTION,
            );
        };
        let function = &self.task.functions[k].name;
        let api = self.task.apis.iter().find(|a| &a.function == function);
        let fallback;
        let api = match api {
            Some(a) => a,
            None => {
                // A recorded trajectory's functions have no tool server behind them.
                fallback = ApiRef {
                    function: function.clone(),
                    category: String::new(),
                    tool_name: String::new(),
                    api_name: function.clone(),
                };
                &fallback
            }
        };
        let call = Call {
            api,
            tool_input: input,
        };
        let mut misses = Vec::new();
        for b in &mut self.backends {
            match b.call(&call) {
                Ok(Reply::Response(reply)) => {
                    return Outcome::Observation {
                        status: reply_status(&reply),
                        text: cut(reply.json_dumps()),
                        backend: Some(b.name()),
                    }
                }
                Ok(Reply::Observation(text, status)) => {
                    return Outcome::Observation {
                        text: cut(text),
                        status,
                        backend: Some(b.name()),
                    }
                }
                Ok(Reply::Miss) => misses.push(b.name()),
                Err(e) => return Outcome::BackendError(format!("{}: {e}", b.name())),
            }
        }
        Outcome::BackendError(format!(
            "no backend answered {} (asked: {})",
            api.function,
            misses.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        let q: TestQuery = serde_json::from_value(serde_json::json!({
            "query_id": 7, "query": "find ideas",
            "api_list": [{"category_name": "Data", "tool_name": "Keyword Analysis",
                "api_name": "QueryKeywords", "api_description": "", "required_parameters": [],
                "optional_parameters": []}]
        }))
        .unwrap();
        Task::from_query(&q, "G1_instruction")
    }

    struct Echo;
    impl Backend for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn call(&mut self, c: &Call) -> Result<Reply, BackendError> {
            let input = backend::parse_tool_input(c.tool_input);
            Ok(match input {
                Some(v) => Reply::Response(Py::Dict(vec![
                    (Py::Str("error".into()), Py::Str(String::new())),
                    (Py::Str("response".into()), Py::Str(v.repr().repeat(300))),
                ])),
                None => Reply::Response(backend::input_parse_error()),
            })
        }
    }

    #[test]
    fn toolbench_answers_mistakes_and_the_episode_goes_on() {
        let t = task();
        assert_eq!(t.id, "G1_instruction-7");
        assert_eq!(t.functions.last().unwrap().name, "Finish");
        let mut env = Env::new(&t, vec![Box::new(Echo)]);
        assert_eq!(
            env.step("weather_for_nowhere", "{}"),
            Outcome::Observation {
                text: r#"{"error": "No such function name: weather_for_nowhere", "response": ""}"#
                    .into(),
                status: status::NO_SUCH_FUNCTION,
                backend: None
            }
        );
        // ToolBench matches a name by its end.
        let Outcome::Observation { text, backend, .. } = env.step("keyword_analysis", "{\"q\": 1}")
        else {
            panic!()
        };
        assert_eq!(backend, Some("echo"));
        assert!(
            text.starts_with(r#"{"error": "", "response": "{'q': 1}"#),
            "{text}"
        );
        assert_eq!(text.chars().count(), MAX_OBSERVATION_CHARS + 3);
        assert!(text.ends_with("..."));
        let Outcome::Observation { text, .. } =
            env.step("querykeywords_for_keyword_analysis", "{q: 1")
        else {
            panic!()
        };
        assert_eq!(
            text,
            r#"{"error": "Tool input parse error...\n", "response": ""}"#
        );
    }

    #[test]
    fn finish_is_read_as_toolbench_reads_it() {
        let t = task();
        let mut env = Env::new(&t, vec![]);
        assert_eq!(
            env.step(
                "Finish",
                "{\"return_type\": \"give_answer\", \"final_answer\": \"two\nlines\"}"
            ),
            Outcome::Answered("two\nlines".into())
        );
        // Not JSON: the fields are found in the text.
        assert_eq!(
            env.step(
                "Finish",
                "{\"return_type\": \"give_answer\", \"final_answer\": \"Paris"
            ),
            Outcome::Answered("Paris".into())
        );
        assert_eq!(
            env.step("Finish", "{\"return_type\": \"give_up_and_restart\"}"),
            Outcome::GaveUp
        );
        let Outcome::Observation { text, status, .. } = env.step("Finish", "{}") else {
            panic!()
        };
        assert_eq!(
            (text.as_str(), status),
            ("{error:\"must have \"return_type\"\"}", 2)
        );
        let Outcome::Observation { status, .. } =
            env.step("Finish", "{\"return_type\": \"give_answer\"}")
        else {
            panic!()
        };
        assert_eq!(status, status::INPUT_ERROR);
        // A call with no backend left to ask is the environment's failure, not the model's.
        assert!(matches!(
            env.step("querykeywords_for_keyword_analysis", "{}"),
            Outcome::BackendError(_)
        ));
    }

    #[test]
    fn episode_signals_come_from_statuses_and_ending() {
        use serde_json::json;
        let d = json!({"ending": "no_finish", "steps": [
            {"action": "nope", "status": 1}, {"action": "", "status": 1}, {"action": "x", "status": 0}
        ]});
        let s = episode_signals(&d);
        assert!(s.hallucinated && s.format && s.no_finish && !s.gave_up);
        assert!(!episode_signals(&json!({"ending": "pass", "steps": []})).any());
    }
}
