//! The agent protocol against real peers: StableToolBench's own server (run unchanged from
//! `../shared/upstream/`, its PyPI dependencies in a virtual environment outside the
//! project, started and stopped by `scripts/stabletoolbench-local.sh`), its response cache
//! read directly, and StableToolBench's ToolEval code reading ablate's export.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ablate::data::pyliteral::{self, Py};
use ablate::data::toolbench;
use ablate::toolenv::backend::{cache_location, Cache, Server};
use ablate::toolenv::{Call, Env, Outcome, Task};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cli::{ablate, setup};
use crate::stub::Stub;
use crate::{free_port, stdout_ok, text_rows, WithoutAblateEnv};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/toolbench")
}

/// The simulator's stand-in: an OpenAI-compatible chat endpoint whose answer is a hash of
/// the request (so the same question always gets the same API response); every other path
/// (the real-API relay) answers 503, so StableToolBench's server goes on to simulate.
fn simulator(path: &str, body: &str) -> (u16, String) {
    if !path.ends_with("/chat/completions") {
        return (
            503,
            json!({"message": "relay unavailable in tests"}).to_string(),
        );
    }
    let h: String = Sha256::digest(body.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let content = json!({"error": "", "response": format!("simulated response {h}")}).to_string();
    // A judge's request (ToolEval's) names functions: it gets a call of the first, with
    // every field a ToolEval function asks for.
    let req: Value = serde_json::from_str(body).unwrap_or_default();
    let function_call = req["functions"][0]["name"].as_str().map(|name| {
        json!({"name": name, "arguments": json!({"answer_status": "Unsure",
            "solvable": "Unsure", "preference": 0, "reason": "stub"}).to_string()})
    });
    let reply = json!({
        "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub-simulator",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": content, "function_call": function_call}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    });
    (200, reply.to_string())
}

/// StableToolBench's server, stopped by its PID when dropped (also when a test fails).
struct StableToolBench {
    work: PathBuf,
    url: String,
}

impl StableToolBench {
    fn up(work: &Path, cache: &Path, stub: &Stub) -> StableToolBench {
        Self::up_on(free_port(), work, cache, stub)
    }

    fn up_on(port: u16, work: &Path, cache: &Path, stub: &Stub) -> StableToolBench {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stabletoolbench-local.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args([
                "up",
                work.to_str().unwrap(),
                &port.to_string(),
                cache.to_str().unwrap(),
                &format!("{}/v1", stub.base),
                &format!("{}/rapidapi", stub.base),
            ])
            .without_ablate_env()
            .output()
            .unwrap();
        let server = StableToolBench {
            work: work.to_path_buf(),
            url: format!("http://127.0.0.1:{port}"),
        };
        assert!(
            out.status.success(),
            "scripts/stabletoolbench-local.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    /// The requests the server logged, by type (`cached_real_response`, `fake_response`,
    /// `tool_input_parse_error`, ...).
    fn logged(&self) -> BTreeMap<String, usize> {
        let log = std::fs::read_to_string(self.work.join("server.log")).unwrap_or_default();
        let mut n = BTreeMap::new();
        for l in log.lines() {
            if let Some(t) = l.strip_prefix("TYPE: ") {
                *n.entry(t.to_string()).or_insert(0) += 1;
            }
        }
        n
    }
}

impl Drop for StableToolBench {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stabletoolbench-local.sh");
        let _ = Command::new("bash")
            .arg(script)
            .args(["down", self.work.to_str().unwrap()])
            .without_ablate_env()
            .output();
    }
}

/// A recorded call of StableToolBench's example answers: the task, function, arguments and
/// the observation the server gave then.
struct Recorded {
    task: Task,
    function: String,
    input: String,
    observation: String,
}

/// A `tool_response_cache/` built from the observations recorded in StableToolBench's
/// example answers (G1_instruction 588, 608, 1073, CoT), filed where its server looks.
fn build_cache(cache: &Path) -> Vec<Recorded> {
    let stable = shared().join("StableToolBench");
    let queries = toolbench::load_query_set(
        &stable.join("solvable_queries/test_instruction/G1_instruction.json"),
    )
    .unwrap();
    let answers =
        toolbench::load_answers(&stable.join("data_example/answer/virtual_chatgpt_cot")).unwrap();
    let mut files: BTreeMap<PathBuf, Vec<(Py, Py)>> = BTreeMap::new();
    let mut recorded = Vec::new();
    for t in &answers {
        let (group, q) = queries
            .iter()
            .find(|(_, q)| t.id.ends_with(&format!("-{}", toolbench::query_id(q))))
            .unwrap();
        let task = Task::from_query(q, group);
        for s in &t.steps {
            let Some(api) = task.apis.iter().find(|a| a.function == s.action) else {
                continue;
            };
            let Some(obs) = &s.observation else { continue };
            let Ok(reply) = pyliteral::json_loads(obs) else {
                continue; // cut at 1024 characters: not the whole reply
            };
            let (path, key) = cache_location(
                cache,
                &Call {
                    api,
                    tool_input: &s.action_input,
                },
            );
            let entries = files.entry(path).or_default();
            let key = key.unwrap();
            if !entries.iter().any(|(k, _)| *k == Py::Str(key.clone())) {
                entries.push((Py::Str(key), reply));
                recorded.push(Recorded {
                    task: task.clone(),
                    function: s.action.clone(),
                    input: s.action_input.clone(),
                    observation: obs.clone(),
                });
            }
        }
    }
    for (path, entries) in files {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, Py::Dict(entries).json_dumps()).unwrap();
    }
    assert!(recorded.len() >= 3, "{}", recorded.len());
    recorded
}

fn observation(o: Outcome) -> (String, Option<&'static str>) {
    match o {
        Outcome::Observation { text, backend, .. } => (text, backend),
        other => panic!("expected an observation, got {other:?}"),
    }
}

/// StableToolBench's server and ablate's `cache` backend answer the same calls the same:
/// a cached call gets the observation recorded when the example answers were made, a miss
/// goes to the simulator (the stub) and is saved by the server, after which the cache alone
/// gives it too; input that is not JSON gets the server's parse error from both.
#[test]
fn the_real_stabletoolbench_server_and_the_cache_backend_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("tool_response_cache");
    let recorded = build_cache(&cache);
    let stub = Stub::start(0, simulator);
    let server = StableToolBench::up(&tmp.path().join("server"), &cache, &stub);
    let ask = |task: &Task, function: &str, input: &str| {
        let backend = Server::new(
            &server.url,
            String::new(),
            std::time::Duration::from_secs(30),
        );
        observation(Env::new(task, vec![Box::new(backend)]).step(function, input))
    };
    for r in &recorded {
        let (text, by) = ask(&r.task, &r.function, &r.input);
        assert_eq!(by, Some("stabletoolbench"));
        assert_eq!(text, r.observation, "{} {}", r.function, r.input);
        let (from_cache, by) = observation(
            Env::new(&r.task, vec![Box::new(Cache::new(&cache))]).step(&r.function, &r.input),
        );
        assert_eq!((from_cache.as_str(), by), (text.as_str(), Some("cache")));
    }
    assert_eq!(
        server.logged().get("cached_real_response"),
        Some(&recorded.len())
    );
    assert!(
        stub.seen("/v1").is_empty(),
        "cached calls reach no simulator"
    );

    // A call nobody made before: the relay answers 503, the simulator answers.
    let r = &recorded[0];
    let fresh = r#"{"q": "ablate's own question"}"#;
    let (simulated, _) = ask(&r.task, &r.function, fresh);
    assert_eq!(stub.seen("/rapidapi").len(), 1);
    assert_eq!(stub.seen("/v1").len(), 1);
    assert!(
        simulated.starts_with(r#"{"error": "", "response": "simulated response "#),
        "{simulated}"
    );
    // The server saved it; the cache alone now answers the same, and a cache miss is a miss.
    let mut env = Env::new(&r.task, vec![Box::new(Cache::new(&cache))]);
    assert_eq!(observation(env.step(&r.function, fresh)).0, simulated);
    assert!(matches!(
        env.step(&r.function, r#"{"q": "never asked"}"#),
        Outcome::BackendError(_)
    ));
    // Input that is not JSON: the server's parse error, from both.
    let (bad, _) = ask(&r.task, &r.function, "{q: broken");
    assert_eq!(
        bad,
        r#"{"error": "Tool input parse error...\n", "response": ""}"#
    );
    let mut env = Env::new(&r.task, vec![Box::new(Cache::new(&cache))]);
    assert_eq!(observation(env.step(&r.function, "{q: broken")).0, bad);
    drop(server);
    // Stopped: the server backend now reports that it cannot be reached.
    let backend = Server::new(
        &format!("http://127.0.0.1:{}", free_port()),
        String::new(),
        std::time::Duration::from_secs(2),
    );
    let down = Env::new(&r.task, vec![Box::new(backend)]).step(&r.function, fresh);
    match down {
        Outcome::BackendError(e) => assert!(e.contains("could not be reached"), "{e}"),
        other => panic!("{other:?}"),
    }
}

const GROUPS: [&str; 6] = [
    "G1_instruction",
    "G1_category",
    "G1_tool",
    "G2_instruction",
    "G2_category",
    "G3_instruction",
];

/// The agent sweep of the generalization question, shrunk for the CPU: the tiny model
/// trained once on the shared toolllama sample, then run as an agent on the first two
/// queries of each of the six StableToolBench groups, its tool calls answered by `tools`.
fn agent_sweep(name: &str, tools: &str) -> String {
    let s = shared();
    let groups: Vec<String> = GROUPS
        .iter()
        .map(|g| {
            format!(
                "{:?}",
                s.join(format!(
                    "StableToolBench/solvable_queries/test_instruction/{g}.json"
                ))
                .display()
                .to_string()
            )
        })
        .collect();
    format!(
        r#"
[experiment]
name = "{name}"
description = "Agent episodes on the six StableToolBench groups."
report = "generalization"
baseline = {{ "data.eval" = {first} }}
[model]
name = "tiny"
[data]
train = {train:?}
eval = {first}
vocab_size = 1000
max_seq_len = 512
truncation = "keep_end"
[train]
lr = 3e-3
batch_size = 8
[eval]
evaluators = ["episode"]
limit = 2
max_turns = 2
max_new_tokens = 24
[eval.tools]
{tools}
[grid]
"data.eval" = [{groups}]
"#,
        first = groups[0],
        train = s
            .join("ToolBench/toolllama/toolllama_G123_dfs_sample.json")
            .display()
            .to_string(),
        groups = groups.join(", "),
    )
}

/// Every stored episode step of a sweep: (example id, step number) → (observation, backend).
fn sweep_steps(db: &Path, sweep: &str) -> BTreeMap<(String, usize), (Value, Value)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut s = c
        .prepare(
            "SELECT p.example_id, p.detail_json FROM predictions p
             JOIN run_stages rs ON rs.generation_id = p.generation_id
             JOIN sweep_runs sr ON sr.run_id = rs.run_id
             WHERE sr.sweep = ?1 AND p.kind = 'episode'",
        )
        .unwrap();
    let rows: Vec<(String, String)> = s
        .query_map([sweep], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = BTreeMap::new();
    for (id, detail) in rows {
        let d: Value = serde_json::from_str(&detail).unwrap();
        for (k, step) in d["steps"].as_array().unwrap().iter().enumerate() {
            out.insert(
                (id.clone(), k),
                (step["observation"].clone(), step["backend"].clone()),
            );
        }
    }
    out
}

/// The acceptance sweep: agent episodes on all six groups through StableToolBench's real
/// server (response cache + stubbed simulator), every episode stored, per-group rows in the
/// report; the same episodes through the `cache` backend alone (the folder the server
/// read and wrote) give the same observations without retraining; and the ToolEval export
/// is read by StableToolBench's own code with the DB's query count and answers.
#[test]
fn a_cpu_agent_sweep_runs_through_the_real_server_and_the_cache_gives_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("tool_response_cache");
    build_cache(&cache);
    let stub = Stub::start(0, simulator);
    let server = StableToolBench::up(&tmp.path().join("server"), &cache, &stub);
    let (dir, _) = setup(&agent_sweep(
        "agent",
        &format!("backends = [\"stabletoolbench\"]\nurl = {:?}", server.url),
    ));
    let d = dir.path();
    stdout_ok(&ablate(d, &["run", "experiments/micro.toml"]));
    let db = d.join("results/ablate.db");
    // Every episode stored: 2 queries of each of the 6 groups, under its group.
    let groups = text_rows(
        &db,
        "SELECT category || ' ' || count(*) FROM predictions WHERE kind = 'episode' GROUP BY category ORDER BY category",
    );
    let mut want: Vec<String> = GROUPS.iter().map(|g| format!("{g} 2")).collect();
    want.sort();
    assert_eq!(groups, want);
    let via_server = sweep_steps(&db, "agent");
    assert!(!via_server.is_empty());
    // What went to the server is what the server logged.
    let server_steps = via_server
        .values()
        .filter(|(_, b)| b == "stabletoolbench")
        .count();
    assert_eq!(server.logged().values().sum::<usize>(), server_steps);
    // The report has a row per group with its pass rate.
    let report = std::fs::read_to_string(d.join("results/reports/agent.md")).unwrap();
    for g in GROUPS {
        assert!(report.contains(&format!("{g}.json")), "{g}:\n{report}");
    }

    // The same episodes through the cache alone (the server down): the same observations,
    // and the training is the one already done.
    drop(server);
    std::fs::write(
        d.join("experiments/cache.toml"),
        agent_sweep(
            "agent-cache",
            &format!(
                "backends = [\"cache\"]\ncache = {:?}",
                cache.display().to_string()
            ),
        ),
    )
    .unwrap();
    let out = stdout_ok(&ablate(d, &["run", "experiments/cache.toml", "--json"]));
    assert!(
        !out.contains("\"stage\":\"train\""),
        "nothing is retrained:\n{out}"
    );
    let via_cache = sweep_steps(&db, "agent-cache");
    assert_eq!(via_cache.len(), via_server.len());
    for (k, (obs, by)) in &via_server {
        let (cached, cached_by) = &via_cache[k];
        assert_eq!(cached, obs, "{k:?}");
        if by == "stabletoolbench" {
            assert_eq!(cached_by, "cache", "{k:?}");
        }
    }

    // The ToolEval export, read by StableToolBench's eval_pass_rate.py loading code.
    let export = tmp.path().join("tooleval");
    let runs = text_rows(
        &db,
        "SELECT run_id FROM sweep_runs WHERE sweep = 'agent' ORDER BY position",
    );
    let out = stdout_ok(&ablate(
        d,
        &[
            "export",
            &runs[0],
            "--tooleval",
            export.to_str().unwrap(),
            "--name",
            "ablate-tiny",
            "--json",
        ],
    ));
    let written: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(written["runs"][0]["episodes"], 2);
    let python = venv_python();
    let tooleval = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/upstream/StableToolBench/toolbench/tooleval");
    // eval_pass_rate.py's own reading of its inputs (its __main__ asks an LLM after this):
    // the test ids, the converted answers, and get_steps on every one of them.
    let script = r#"
import json, os, sys
sys.path.insert(0, sys.argv[1])
from utils import get_steps
converted, test_ids, test_set, reference_model = sys.argv[2:6]
reference_path = f"{converted}/{reference_model}/{test_set}.json"
test_ids = list(json.load(open(os.path.join(test_ids, test_set+".json"), "r")).keys())
reference_examples = json.load(open(reference_path, "r"))
out = {}
for query_id in test_ids:
    example = reference_examples[query_id]
    answer_steps, final_step = get_steps(example)
    out[query_id] = {"query": example["query"], "final_answer": example["answer"]["final_answer"],
                     "steps": answer_steps, "finished": "'name': 'Finish'" in final_step,
                     "tools": len(example["available_tools"])}
print(json.dumps(out))
"#;
    let out = Command::new(&python)
        .args([
            "-c",
            script,
            tooleval.to_str().unwrap(),
            export.join("model_predictions_converted").to_str().unwrap(),
            export.join("test_query_ids").to_str().unwrap(),
            "G1_instruction",
            "ablate-tiny",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = rusqlite::Connection::open(&db).unwrap();
    let stored: Vec<(String, String)> = c
        .prepare(
            "SELECT p.detail_json, p.example_id FROM predictions p
             JOIN run_stages rs ON rs.generation_id = p.generation_id WHERE rs.run_id = ?1",
        )
        .unwrap()
        .query_map([&runs[0]], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(read.as_object().unwrap().len(), stored.len());
    // And eval_pass_rate.py itself, run as it is, with its LLM calls going to the stub.
    let pool = tmp.path().join("api_pool.json");
    std::fs::write(
        &pool,
        json!([{"api_key": "stub", "api_base": format!("{}/v1", stub.base)}]).to_string(),
    )
    .unwrap();
    let results = tmp.path().join("pass_rate_results");
    std::fs::create_dir_all(&results).unwrap();
    let out = Command::new(&python)
        .current_dir(&tooleval)
        .args(["eval_pass_rate.py", "--converted_answer_path"])
        .arg(export.join("model_predictions_converted"))
        .arg("--save_path")
        .arg(&results)
        .args(["--reference_model", "ablate-tiny", "--test_ids"])
        .arg(export.join("test_query_ids"))
        .args([
            "--evaluator",
            "tooleval_gpt-3.5-turbo_default",
            "--max_eval_threads",
            "1",
            "--evaluate_times",
            "2",
            "--test_set",
            "G1_instruction",
        ])
        .env("API_POOL_FILE", &pool)
        .env_remove("OPENAI_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "eval_pass_rate.py: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let judged: Value = serde_json::from_str(
        &std::fs::read_to_string(results.join("G1_instruction_ablate-tiny.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(judged.as_object().unwrap().len(), stored.len());
    // ablate's own ToolEval judge on its export, asking the same stub: the same statuses.
    let ours: Value = serde_json::from_str(&stdout_ok(&ablate(
        d,
        &[
            "score",
            "tooleval",
            "--answers",
            export
                .join("model_predictions_converted/ablate-tiny/G1_instruction.json")
                .to_str()
                .unwrap(),
            "--ids",
            export
                .join("test_query_ids/G1_instruction.json")
                .to_str()
                .unwrap(),
            "--evaluator",
            tooleval
                .join("evaluators/tooleval_gpt-3.5-turbo_default")
                .to_str()
                .unwrap(),
            "--url",
            &format!("{}/v1", stub.base),
            "--k",
            "2",
            "--json",
        ],
    )))
    .unwrap();
    for (id, j) in judged.as_object().unwrap() {
        assert_eq!(ours["queries"][id]["is_solved"], j["is_solved"], "{id}");
    }
    for (detail, example_id) in stored {
        let d: Value = serde_json::from_str(&detail).unwrap();
        let id = d["query_id"].as_str().unwrap();
        assert_eq!(example_id, format!("G1_instruction-{id}"));
        let r = &read[id];
        assert_eq!(r["query"], d["query"]);
        assert_eq!(r["final_answer"], d["finish_arguments"]);
        assert_eq!(
            r["finished"],
            d["ending"] != "no_finish" && d["ending"] != "context_overflow"
        );
        assert_eq!(r["tools"], d["available_tools"].as_array().unwrap().len());
        // get_steps numbers every tool call of the path.
        let calls = d["steps"].as_array().unwrap().len();
        assert_eq!(r["steps"].as_str().unwrap().matches("Step ").count(), calls);
        // ToolEval judged it: an answer without Finish is Unsolved without asking.
        let verdicts = judged[id]["is_solved"].as_object().unwrap();
        assert_eq!(verdicts.len(), 2);
        if r["finished"] == false {
            assert!(
                verdicts.values().all(|v| v == "AnswerStatus.Unsolved"),
                "{verdicts:?}"
            );
        }
    }
}

pub(crate) fn venv_python() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stabletoolbench-local.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("venv")
        .without_ablate_env()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A model that always makes one call, trained for it: ToolBench SFT entries (as its
/// preprocessing writes them) for G2_category queries 43 and 61, whose functions are
/// those of the G1_category queries evaluated (28, 29: the suivi-colis tool), each
/// answered with a call to `latest_for_suivi_colis`. A fixture policy: what it calls is
/// known, and its prompts look like the ones it is evaluated on.
fn fixture_training(dir: &Path) -> PathBuf {
    let queries = toolbench::load_query_set(
        &shared().join("StableToolBench/solvable_queries/test_instruction/G2_category.json"),
    )
    .unwrap();
    let mut entries = Vec::new();
    for (group, q) in queries
        .iter()
        .filter(|(_, q)| ["43", "61"].contains(&toolbench::query_id(q).as_str()))
    {
        let task = Task::from_query(q, group);
        // Prompts of many lengths, so that the call is learnt wherever it starts (the
        // model's positions are learnt too).
        for k in 0..16 {
            let offered = &task.functions[k % 3..];
            let functions =
                pyliteral::json_loads(&serde_json::to_string(offered).unwrap()).unwrap();
            let system = format!(
                "A fixture.\nSpecifically, you have access to the following APIs: {}",
                functions.repr()
            );
            let query = format!("{}{}", q.query, " Thanks.".repeat(k));
            entries.push(json!({
                "id": format!("Step 2: {query}"),
                "conversations": [
                    {"from": "system", "value": system},
                    {"from": "user", "value": query},
                    {"from": "assistant", "value": "\nThought: track it\nAction: latest_for_suivi_colis\nAction Input: {\"colisid\": \"CA107308006SI\"}"},
                ],
            }));
        }
    }
    assert_eq!(entries.len(), 32);
    let path = dir.join("fixture-train.json");
    std::fs::write(&path, serde_json::to_string(&entries).unwrap()).unwrap();
    path
}

/// The fixture model's sweep: trained on `train`, run as an agent on `queries` for
/// `turns` turns, its calls answered as `tools` (the body of `[eval.tools]`) says.
fn fixture_sweep(name: &str, train: &Path, queries: &Path, turns: usize, tools: &str) -> String {
    format!(
        r#"
[experiment]
name = "{name}"
[model]
name = "tiny"
[data]
train = {train:?}
eval = {queries:?}
vocab_size = 600
max_seq_len = 256
[train]
lr = 3e-3
epochs = 20
batch_size = 8
[eval]
evaluators = ["episode"]
max_turns = {turns}
max_new_tokens = 40
[eval.tools]
{tools}
"#,
        train = train.display().to_string(),
        queries = queries.display().to_string(),
    )
}

/// Two queries of G1_category (28 and 29) in the released layout.
fn two_queries(dir: &Path) -> PathBuf {
    let stable = shared().join("StableToolBench/solvable_queries");
    let all: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(stable.join("test_instruction/G1_category.json")).unwrap(),
    )
    .unwrap();
    let picked: Vec<&Value> = all
        .iter()
        .filter(|q| q["query_id"] == 28 || q["query_id"] == 29)
        .collect();
    assert_eq!(picked.len(), 2);
    let root = dir.join("queries");
    std::fs::create_dir_all(root.join("test_instruction")).unwrap();
    std::fs::create_dir_all(root.join("test_query_ids")).unwrap();
    std::fs::write(
        root.join("test_instruction/G1_category.json"),
        serde_json::to_string(&picked).unwrap(),
    )
    .unwrap();
    std::fs::write(
        root.join("test_query_ids/G1_category.json"),
        json!({"28": 0, "29": 0}).to_string(),
    )
    .unwrap();
    root
}

/// A tool backend that is down ends the episodes as `backend_error` with a clear message
/// (the run fails; the training is kept); run again with StableToolBench's server up on
/// that address, the episodes are generated again, answered by it, and nothing retrains.
/// Then, with the server gone, the `cache` backend on the folder it read and wrote gives
/// the same observations (here every episode does call the server: the fixture model
/// always calls an offered function).
#[test]
fn a_backend_that_is_down_gives_backend_error_and_a_rerun_evaluates_without_retraining() {
    let tmp = tempfile::tempdir().unwrap();
    let train = fixture_training(tmp.path());
    let queries = two_queries(tmp.path());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let sweep = fixture_sweep(
        "down",
        &train,
        &queries,
        2,
        &format!("backends = [\"stabletoolbench\"]\nurl = {url:?}\ntimeout_s = 5"),
    );
    let (dir, _) = setup(&sweep);
    let d = dir.path();
    let out = ablate(d, &["run", "experiments/micro.toml"]);
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("backend_error") && text.contains("could not be reached"),
        "{text}"
    );
    let db = d.join("results/ablate.db");
    assert_eq!(text_rows(&db, "SELECT status FROM runs"), ["failed"]);
    assert_eq!(text_rows(&db, "SELECT status FROM trainings"), ["done"]);
    let endings = text_rows(
        &db,
        "SELECT json_extract(detail_json, '$.ending') FROM predictions ORDER BY example_id",
    );
    assert_eq!(endings, ["backend_error", "backend_error"]);

    // The server is up on that address now: the same command evaluates, nothing retrains.
    let stub = Stub::start(0, simulator);
    let server = StableToolBench::up_on(
        port,
        &tmp.path().join("server"),
        &tmp.path().join("cache"),
        &stub,
    );
    let out = stdout_ok(&ablate(d, &["run", "experiments/micro.toml", "--json"]));
    assert!(!out.contains("\"stage\":\"train\""), "{out}");
    assert!(out.contains("\"stage\":\"generate\""), "{out}");
    assert_eq!(text_rows(&db, "SELECT status FROM runs"), ["done"]);
    let steps = sweep_steps(&db, "down");
    let answered = steps
        .values()
        .filter(|(obs, by)| {
            by == "stabletoolbench" && obs.as_str().unwrap().contains("simulated response")
        })
        .count();
    assert!(answered >= 2, "{steps:?}");
    // The first call was simulated and saved; the same call again came from its cache.
    let logged = server.logged();
    assert_eq!(logged.get("fake_response"), Some(&1), "{logged:?}");
    assert_eq!(logged.values().sum::<usize>(), answered, "{logged:?}");

    // The same episodes through the folder the server read and wrote, without the server:
    // the same observations, every call answered by the cache.
    drop(server);
    let cached = sweep
        .replace("name = \"down\"", "name = \"down-cache\"")
        .replace(
            "backends = [\"stabletoolbench\"]",
            &format!(
                "backends = [\"cache\"]\ncache = {:?}",
                tmp.path().join("cache").display().to_string()
            ),
        );
    std::fs::write(d.join("experiments/cache.toml"), cached).unwrap();
    let out = stdout_ok(&ablate(d, &["run", "experiments/cache.toml", "--json"]));
    assert!(!out.contains("\"stage\":\"train\""), "{out}");
    let from_cache = sweep_steps(&db, "down-cache");
    assert_eq!(from_cache.len(), steps.len());
    for (k, (obs, by)) in &steps {
        let (cached_obs, cached_by) = &from_cache[k];
        assert_eq!(cached_obs, obs, "{k:?}");
        if by == "stabletoolbench" {
            assert_eq!(cached_by, "cache", "{k:?}");
        }
    }
}

/// The `simulate` backend without any server: a cache miss goes to an OpenAI-compatible
/// model with the system prompt read from the user's file; its answers are kept in the
/// database, so generating the episodes again (another `max_turns`, same training) asks
/// nothing.
#[test]
fn the_simulate_backend_asks_with_the_users_prompt_and_never_asks_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let train = fixture_training(tmp.path());
    let queries = two_queries(tmp.path());
    let cache = tmp.path().join("tool_response_cache");
    std::fs::create_dir_all(&cache).unwrap();
    let prompt = tmp.path().join("simulator-prompt.txt");
    std::fs::write(&prompt, "The user's own simulator prompt.").unwrap();
    let stub = Stub::start(0, simulator);
    let sweep = |name: &str, turns: usize| {
        let tools = format!(
            "backends = [\"cache\", \"simulate\"]\ncache = {:?}\n\
             [eval.tools.simulator]\nurl = \"{}/v1\"\nmodel = \"stub-simulator\"\nprompt = {:?}",
            cache.display().to_string(),
            stub.base,
            prompt.display().to_string(),
        );
        fixture_sweep(name, &train, &queries, turns, &tools)
    };
    let (dir, _) = setup(&sweep("sim", 2));
    let d = dir.path();
    stdout_ok(&ablate(d, &["run", "experiments/micro.toml"]));
    let asked = stub.seen("/v1");
    assert!(!asked.is_empty());
    for (_, body) in &asked {
        let req: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            req["messages"][0]["content"],
            "The user's own simulator prompt."
        );
        assert_eq!(req["model"], "stub-simulator");
    }
    let db = d.join("results/ablate.db");
    let steps = sweep_steps(&db, "sim");
    let simulated = steps
        .values()
        .filter(|(obs, by)| {
            by == "simulate" && obs.as_str().unwrap().contains("simulated response")
        })
        .count();
    assert!(simulated >= 2, "{steps:?}");
    let kept = text_rows(
        &db,
        "SELECT key FROM judge_cache WHERE function = 'simulate'",
    );
    assert_eq!(kept.len(), asked.len());

    // Another generation of the same model: the same calls, answered from the database.
    std::fs::write(d.join("experiments/again.toml"), sweep("sim-again", 3)).unwrap();
    let out = stdout_ok(&ablate(d, &["run", "experiments/again.toml", "--json"]));
    assert!(!out.contains("\"stage\":\"train\""), "{out}");
    assert!(out.contains("\"stage\":\"generate\""), "{out}");
    let again = sweep_steps(&db, "sim-again");
    let new_calls = stub.seen("/v1").len() - asked.len();
    // (The stub's answer is a hash of the question: a new answer is a new question.)
    let before: std::collections::BTreeSet<String> =
        steps.values().map(|(o, _)| o.to_string()).collect();
    let distinct_new: std::collections::BTreeSet<String> = again
        .values()
        .filter(|(_, by)| by == "simulate")
        .map(|(obs, _)| obs.to_string())
        .filter(|obs| !before.contains(obs))
        .collect();
    assert_eq!(
        new_calls,
        distinct_new.len(),
        "only calls never made before are asked"
    );
}
