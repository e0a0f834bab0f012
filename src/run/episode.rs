//! ToolBench episodes, as ToolBench's inference runs them (one chain, CoT): the model
//! answers a query turn by turn; each Thought / Action / Action Input goes to the tool
//! environment ([`crate::toolenv`]), whose observation becomes a function turn, until the
//! model calls `Finish` or runs out of turns (`eval.max_turns`). A name that is not offered
//! or input that is not JSON is answered with ToolBench's error observation and the episode
//! goes on. Each episode is stored whole as a prediction: the transcript, every step with
//! its observation and the backend that gave it, the ending, the final answer and the path
//! as ToolEval's nodes (which `ablate export --tooleval` writes and the judges read).

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::answer::{Answerer, Fit};
use super::RunError;
use crate::config::{RunConfig, ToolBackend};
use crate::data::{self, Example, GoldCall, Source, Turn};
use crate::eval::llm_judge::AnswerCache;
use crate::eval::{parse_react, Prediction, PredictionKind};
use crate::exec::{Event, RunContext};
use crate::toolenv::simulate::{Simulator, SimulatorSettings, DEFAULT_PROMPT};
use crate::toolenv::{backend, Env, Outcome, Task};
use crate::train::TrainError;

/// The agent: its next assistant turn for a prompt (`None` when the prompt does not fit).
pub trait Policy {
    fn act(&mut self, prompt: &Example, seed: u64) -> Result<Option<String>, RunError>;

    /// The mean token log-probability of everything this policy has said so far, where
    /// it knows one (a model does; a script does not). A router reads it at inference
    /// time.
    fn mean_logprob(&self) -> Option<f64> {
        None
    }
}

/// The run's model (local or behind an endpoint) as the agent, decoding as `eval` says.
struct ModelPolicy<'a> {
    answerer: &'a mut dyn Answerer,
    /// Summed log-probability of the tokens chosen in this episode, and their count.
    logprob: (f64, usize),
}

impl Policy for ModelPolicy<'_> {
    fn act(&mut self, example: &Example, seed: u64) -> Result<Option<String>, RunError> {
        let answer = self
            .answerer
            .answer(std::slice::from_ref(example), seed, Fit::Whole)?
            .pop()
            .flatten();
        Ok(answer.map(|a| {
            if let Some((sum, n)) = a.logprob {
                self.logprob.0 += sum;
                self.logprob.1 += n;
            }
            a.text
        }))
    }

    fn mean_logprob(&self) -> Option<f64> {
        super::answer::mean(self.logprob)
    }
}

/// The tasks of the run's evaluation set: the queries of a query set, or the trajectories
/// of a folder of answer files (first `eval.limit` of them).
pub fn tasks(cfg: &RunConfig) -> Result<Vec<Task>, RunError> {
    let mut tasks = match cfg.data.eval.source() {
        Some(Source::Queries(path)) => data::toolbench::load_query_set(path)?
            .iter()
            .map(|(group, q)| Task::from_query(q, group))
            .collect(),
        Some(Source::ToolBench(dir)) => data::toolbench::load_answers(dir)?
            .into_iter()
            .map(Task::from_trajectory)
            .collect(),
        _ => Vec::new(),
    };
    if cfg.eval.limit > 0 && !cfg.data.eval.is_query_set() {
        tasks.truncate(cfg.eval.limit);
    } else if cfg.eval.limit > 0 {
        // In a query set the limit takes the first queries of each group, so a folder of
        // the six groups is evaluated on a subset of every group.
        let mut per_group: std::collections::HashMap<String, usize> = Default::default();
        tasks.retain(|t| {
            let n = per_group.entry(t.group.clone()).or_default();
            *n += 1;
            *n <= cfg.eval.limit
        });
    }
    Ok(tasks)
}

/// The backends of `eval.tools`, for one task; `simulator_prompt` is the simulator's
/// system prompt, `answers` where its answers are kept.
fn backends<'a>(
    cfg: &RunConfig,
    task: &'a Task,
    simulator_prompt: &str,
    answers: Option<&'a dyn AnswerCache>,
) -> Vec<Box<dyn backend::Backend + 'a>> {
    let t = &cfg.eval.tools;
    t.backends
        .iter()
        .filter_map(|b| -> Option<Box<dyn backend::Backend + 'a>> {
            match b {
                ToolBackend::Recorded => task
                    .recorded
                    .as_ref()
                    .map(|r| Box::new(backend::Recorded::new(r)) as Box<dyn backend::Backend>),
                ToolBackend::Cache => Some(Box::new(backend::Cache::new(std::path::Path::new(
                    &t.cache,
                )))),
                ToolBackend::Stabletoolbench => Some(Box::new(backend::Server::new(
                    &t.url,
                    std::env::var(&t.key_env).unwrap_or_default(),
                    std::time::Duration::from_secs(t.timeout_s.max(1)),
                ))),
                ToolBackend::Simulate => {
                    let s = &t.simulator;
                    let settings = SimulatorSettings {
                        url: &s.url,
                        model: &s.model,
                        temperature: s.temperature,
                        system: simulator_prompt.to_string(),
                        key: std::env::var(&s.api_key_env).ok(),
                        timeout: std::time::Duration::from_secs(s.timeout_s.max(1)),
                        examples: t
                            .backends
                            .contains(&ToolBackend::Cache)
                            .then(|| std::path::PathBuf::from(&t.cache)),
                    };
                    Some(Box::new(Simulator::new(settings, task, answers)))
                }
            }
        })
        .collect()
}

/// One finished episode.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// `pass` (an answer), `empty_answer`, `gave_up`, `no_finish` (out of turns),
    /// `context_overflow`, `backend_error`.
    pub ending: &'static str,
    pub transcript: String,
    /// The answer given with `Finish` (`give_up_and_restart` for a give-up).
    pub final_answer: Option<String>,
    /// `Finish`'s arguments as the model wrote them (ToolEval's `final_answer`).
    pub finish_arguments: String,
    pub steps: Vec<Value>,
    /// ToolEval's nodes, in order (chained by [`chain`]).
    pub nodes: Vec<Value>,
    pub backend_error: Option<String>,
    /// The policy's mean token log-probability over the episode (see [`Policy`]).
    pub mean_logprob: Option<f64>,
}

/// Runs one episode of `task` with `policy` in `env`.
pub fn run_episode(
    task: &Task,
    env: &mut Env,
    policy: &mut dyn Policy,
    max_turns: usize,
    seed: u64,
) -> Result<Episode, RunError> {
    let mut ep = Episode {
        ending: "no_finish",
        transcript: String::new(),
        final_answer: None,
        finish_arguments: String::new(),
        steps: Vec::new(),
        nodes: vec![
            json!({"role": "system", "message": ""}),
            json!({"role": "user", "message": task.query}),
        ],
        backend_error: None,
        mean_logprob: None,
    };
    let mut history: Vec<Turn> = Vec::new();
    for turn in 0..max_turns {
        let example = Example {
            id: format!("{}-turn{turn}", task.id),
            category: task.group.clone(),
            tools: task.functions.clone(),
            query: task.query.clone(),
            thought: String::new(),
            gold: GoldCall {
                name: String::new(),
                arguments: Value::Null,
            },
            bfcl: None,
            history: history.clone(),
            raw: None,
        };
        let Some(text) = policy.act(&example, seed.wrapping_add(turn as u64))? else {
            ep.ending = "context_overflow";
            break;
        };
        ep.transcript.push_str(&format!("<|assistant|>\n{text}\n"));
        // ToolBench's parser takes whatever sits between the markers; text without them
        // names no function, and is answered so.
        let (thought, action, input) = match parse_react(&text) {
            Ok(s) => (s.thought.unwrap_or_default(), s.action, s.action_input),
            Err(_) => (text.trim().to_string(), String::new(), String::new()),
        };
        if !thought.is_empty() {
            ep.nodes
                .push(json!({"role": "assistant", "message": thought}));
        }
        let outcome = env.step(&action, &input);
        let mut step = json!({"thought": thought, "action": action, "action_input": input});
        match outcome {
            Outcome::Observation {
                text: obs,
                status,
                backend,
            } => {
                step["observation"] = json!(obs);
                step["status"] = json!(status);
                step["backend"] = json!(backend);
                ep.steps.push(step);
                ep.nodes.push(json!({"role": "tool", "message": {
                    "name": action, "arguments": input, "response": obs}}));
                ep.transcript.push_str(&format!("<|function|>\n{obs}\n"));
                history.push(Turn {
                    assistant: data::react_text(&thought, &action, &input),
                    observation: obs,
                });
            }
            Outcome::Answered(answer) => {
                ep.steps.push(step);
                ep.nodes.push(json!({"role": "tool", "message": {
                    "name": "Finish", "arguments": input, "response": ""}}));
                ep.ending = if answer.trim().is_empty() {
                    "empty_answer"
                } else {
                    "pass"
                };
                ep.final_answer = Some(answer);
                ep.finish_arguments = input;
                break;
            }
            Outcome::GaveUp => {
                ep.steps.push(step);
                ep.nodes.push(json!({"role": "tool", "message": {
                    "name": "Finish", "arguments": input, "response": ""}}));
                ep.ending = "gave_up";
                ep.final_answer = Some("give_up_and_restart".into());
                break;
            }
            Outcome::BackendError(e) => {
                step["backend_error"] = json!(e);
                ep.steps.push(step);
                ep.ending = "backend_error";
                ep.backend_error = Some(e);
                break;
            }
        }
    }
    ep.mean_logprob = policy.mean_logprob();
    Ok(ep)
}

/// Runs every task's episode; fails (after storing them all) when a backend could not
/// answer, so that the generation is done again, with the same model, once it can.
pub fn run_episodes(
    ctx: &RunContext,
    answerer: &mut dyn Answerer,
    tasks: &[Task],
) -> Result<Vec<Prediction>, RunError> {
    let (run_id, cfg, cancel, emit) = (ctx.run_id, ctx.config, ctx.cancel, ctx.emit);
    emit(Event::Phase {
        run_id: run_id.to_string(),
        phase: "episodes",
        total: tasks.len() as u64,
    });
    let simulates = cfg.eval.tools.backends.contains(&ToolBackend::Simulate);
    let answers = Remembered {
        store: if simulates {
            super::judge::StoreCache::open(ctx)?
        } else {
            None
        },
        seen: Default::default(),
    };
    let simulator_prompt = match cfg.eval.tools.simulator.prompt.as_str() {
        "" => DEFAULT_PROMPT.to_string(),
        file => std::fs::read_to_string(file).map_err(super::io(std::path::Path::new(file)))?,
    };
    let mut passed = 0;
    let mut backend_errors: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(tasks.len());
    for (n, task) in tasks.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(TrainError::Interrupted.into());
        }
        let mut env = Env::new(
            task,
            backends(
                cfg,
                task,
                &simulator_prompt,
                Some(&answers as &dyn AnswerCache),
            ),
        );
        let seed = cfg.train.seed.wrapping_add((n * 1000) as u64);
        // A policy per episode: its confidence is the episode's own.
        let mut policy = ModelPolicy {
            answerer: &mut *answerer,
            logprob: (0.0, 0),
        };
        let ep = run_episode(task, &mut env, &mut policy, cfg.eval.max_turns, seed)?;
        passed += (ep.ending == "pass") as usize;
        if let Some(e) = &ep.backend_error {
            backend_errors.push(format!("{}: {e}", task.id));
        }
        let p = prediction(task, ep);
        super::generate::emit_prediction(ctx, &p);
        out.push(p);
        emit(Event::Progress {
            run_id: run_id.to_string(),
            pos: n as u64 + 1,
            message: format!("episodes answered {passed}/{}", n + 1),
        });
    }
    if let Some(first) = backend_errors.first() {
        return Err(RunError::Backend(format!(
            "{} of {} episodes ended with backend_error (the first: {first}); the model is \
             kept: run again once the tool backend answers, and only the episodes are redone",
            backend_errors.len(),
            tasks.len()
        )));
    }
    Ok(out)
}

/// The simulator's answers: the database's, and those of this run, which the store may
/// not have written yet when the next episode asks the same.
struct Remembered<'a> {
    store: Option<super::judge::StoreCache<'a>>,
    seen: std::cell::RefCell<std::collections::HashMap<String, Value>>,
}

impl AnswerCache for Remembered<'_> {
    fn get(&self, key: &str) -> Result<Option<Value>, String> {
        if let Some(v) = self.seen.borrow().get(key) {
            return Ok(Some(v.clone()));
        }
        match &self.store {
            Some(s) => s.get(key),
            None => Ok(None),
        }
    }

    fn put(&self, answer: crate::eval::llm_judge::CachedAnswer) -> Result<(), String> {
        self.seen
            .borrow_mut()
            .insert(answer.key.clone(), answer.response.clone());
        match &self.store {
            Some(s) => s.put(answer),
            None => Ok(()),
        }
    }
}

/// An episode as a stored prediction.
pub fn prediction(task: &Task, ep: Episode) -> Prediction {
    let gold = task
        .recorded
        .as_ref()
        .and_then(|t| t.steps.last())
        .map(|s| s.action_input.clone())
        .unwrap_or_default();
    let total_steps = ep.nodes.len();
    Prediction {
        kind: PredictionKind::Episode,
        example_id: task.id.clone(),
        dataset: "toolbench".into(),
        category: task.group.clone(),
        prediction: ep.transcript,
        gold,
        detail: Some(json!({
            "ending": ep.ending,
            "mean_logprob": ep.mean_logprob,
            "final_answer": ep.final_answer,
            "finish_arguments": ep.finish_arguments,
            "query_id": task.query_id,
            "group": task.group,
            // What ToolEval's converted format carries beside the answer, so that an
            // export needs nothing but the database.
            "query": task.query,
            "available_tools": task.functions,
            "method": "CoT@1",
            "total_steps": total_steps,
            "steps": ep.steps,
            "details": chain(ep.nodes),
            "backend_error": ep.backend_error,
        })),
    }
}

/// ToolEval's `answer_details`: the path's nodes, each the parent of the next.
fn chain(nodes: Vec<Value>) -> Value {
    nodes
        .into_iter()
        .rev()
        .fold(Value::Array(vec![]), |next, mut node| {
            node["next"] = next;
            Value::Array(vec![node])
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::pyliteral::Py;
    use crate::data::toolbench::TestQuery;
    use crate::toolenv::backend::{Backend, BackendError, Reply};
    use crate::toolenv::Call;

    /// A policy that says what it is told, turn by turn.
    struct Script(Vec<&'static str>, Vec<Example>);
    impl Policy for Script {
        fn act(&mut self, e: &Example, _: u64) -> Result<Option<String>, RunError> {
            self.1.push(e.clone());
            Ok((!self.0.is_empty()).then(|| self.0.remove(0).to_string()))
        }
    }

    /// A backend that answers every call with its input.
    struct Echo(usize);
    impl Backend for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn call(&mut self, c: &Call) -> Result<Reply, BackendError> {
            self.0 += 1;
            Ok(Reply::Response(Py::Dict(vec![
                (Py::Str("error".into()), Py::Str(String::new())),
                ("response".into(), Py::Str(format!("got {}", c.tool_input))),
            ])))
        }
    }

    struct Down;
    impl Backend for Down {
        fn name(&self) -> &'static str {
            "stabletoolbench"
        }
        fn call(&mut self, _: &Call) -> Result<Reply, BackendError> {
            Err(BackendError::Unreachable {
                url: "http://127.0.0.1:9/virtual".into(),
                attempts: 3,
                last: "Connection refused".into(),
            })
        }
    }

    fn task() -> Task {
        let q: TestQuery = serde_json::from_value(json!({
            "query_id": 11, "query": "party ideas?",
            "api_list": [{"category_name": "Data", "tool_name": "Keyword Analysis",
                "api_name": "QueryKeywords", "api_description": "Keywords.",
                "required_parameters": [{"name": "q", "type": "STRING",
                    "description": "query", "default": ""}],
                "optional_parameters": []}]
        }))
        .unwrap();
        Task::from_query(&q, "G1_tool")
    }

    #[test]
    fn hallucinated_names_and_bad_input_are_answered_and_the_episode_goes_on() {
        let t = task();
        let mut script = Script(
            vec![
                "Thought: look it up\nAction: weather_for_nowhere\nAction Input: {\"q\": 1}",
                "Thought: try again\nAction: querykeywords_for_keyword_analysis\nAction Input: {q: party",
                "no markers at all",
                "Action: querykeywords_for_keyword_analysis\nAction Input: {\"q\": \"party\"}",
                "Thought: done\nAction: Finish\nAction Input: {\"return_type\": \"give_answer\", \"final_answer\": \"balloons\"}",
            ],
            vec![],
        );
        let mut env = Env::new(&t, vec![Box::new(Echo(0))]);
        let ep = run_episode(&t, &mut env, &mut script, 8, 0).unwrap();
        assert_eq!(ep.ending, "pass");
        assert_eq!(ep.final_answer.as_deref(), Some("balloons"));
        let obs: Vec<&str> = ep
            .steps
            .iter()
            .filter_map(|s| s["observation"].as_str())
            .collect();
        assert_eq!(
            obs,
            [
                r#"{"error": "No such function name: weather_for_nowhere", "response": ""}"#,
                // The echo backend parses nothing: the input error is ToolBench's server's
                // when the backend is one; here it passes the text on.
                r#"{"error": "", "response": "got {q: party"}"#,
                r#"{"error": "No such function name: ", "response": ""}"#,
                r#"{"error": "", "response": "got {\"q\": \"party\"}"}"#,
            ]
        );
        // Each observation went back to the model as a function turn.
        let last_prompt = script.1.last().unwrap();
        assert_eq!(last_prompt.history.len(), 4);
        assert_eq!(last_prompt.history[0].observation, obs[0]);
        let d = prediction(&t, ep).detail.unwrap();
        assert_eq!(d["query_id"], "11");
        assert_eq!(
            d["finish_arguments"],
            "{\"return_type\": \"give_answer\", \"final_answer\": \"balloons\"}"
        );
        // system, user, 4 thoughts (one is the text without markers), 4 calls, Finish.
        assert_eq!(d["total_steps"], 2 + 4 + 4 + 1);
    }

    #[test]
    fn out_of_turns_and_a_backend_that_is_down_are_endings_of_their_own() {
        let t = task();
        let call = "Action: querykeywords_for_keyword_analysis\nAction Input: {}";
        let mut script = Script(vec![call; 5], vec![]);
        let mut env = Env::new(&t, vec![Box::new(Echo(0))]);
        let ep = run_episode(&t, &mut env, &mut script, 3, 0).unwrap();
        assert_eq!((ep.ending, ep.steps.len()), ("no_finish", 3));
        let mut env = Env::new(&t, vec![Box::new(Down)]);
        let ep = run_episode(&t, &mut env, &mut Script(vec![call], vec![]), 3, 0).unwrap();
        assert_eq!(ep.ending, "backend_error");
        assert!(ep.backend_error.unwrap().contains("Connection refused"));
        let ep = run_episode(&t, &mut env, &mut Script(vec![], vec![]), 3, 0).unwrap();
        assert_eq!(ep.ending, "context_overflow");
    }

    #[test]
    fn the_path_is_a_chain_of_nodes() {
        let v = chain(vec![
            json!({"role": "assistant", "message": "a"}),
            json!({"role": "tool", "message": {"name": "t"}}),
        ]);
        assert_eq!(v[0]["role"], "assistant");
        assert_eq!(v[0]["next"][0]["role"], "tool");
        assert_eq!(v[0]["next"][0]["next"], json!([]));
        assert_eq!(chain(vec![]), json!([]));
    }
}
