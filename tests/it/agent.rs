//! The agent protocol against real peers: StableToolBench's own server (run unchanged from
//! `../shared/upstream/`, its PyPI dependencies in a virtual environment outside the
//! project, started and stopped by `scripts/stabletoolbench-local.sh`), its response cache
//! read directly, and StableToolBench's ToolEval code reading ablate's export.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use ablate::data::toolbench;
use ablate::toolenv::backend::{cache_location, Cache, Server};
use ablate::toolenv::pyrepr::PyValue;
use ablate::toolenv::{Call, Env, Outcome, Task};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cli::{ablate, setup};
use crate::{stdout_ok, text_rows, WithoutAblateEnv};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/toolbench")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

type Handler = dyn Fn(&str, &str) -> (u16, String) + Send + Sync;

/// A small HTTP server on 127.0.0.1: `reply(path, body)` answers each request; every
/// request is kept as (path, body).
struct Stub {
    base: String,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Stub {
    fn start(port: u16, reply: impl Fn(&str, &str) -> (u16, String) + Send + Sync + 'static) -> Stub {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reply: Arc<Handler> = Arc::new(reply);
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (reply, log) = (Arc::clone(&reply), Arc::clone(&log));
                std::thread::spawn(move || serve(stream, &*reply, &log));
            }
        });
        Stub { base, seen }
    }

    fn seen(&self, prefix: &str) -> Vec<(String, String)> {
        let all = self.seen.lock().unwrap().clone();
        all.into_iter().filter(|(p, _)| p.starts_with(prefix)).collect()
    }
}

fn serve(stream: std::net::TcpStream, reply: &Handler, log: &Mutex<Vec<(String, String)>>) {
    let mut out = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        log.lock().unwrap().push((path.clone(), body.clone()));
        let (status, text) = reply(&path, &body);
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            text.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

/// The simulator's stand-in: an OpenAI-compatible chat endpoint whose answer is a hash of
/// the request (so the same question always gets the same API response); every other path
/// (the real-API relay) answers 503, so StableToolBench's server goes on to simulate.
fn simulator(path: &str, body: &str) -> (u16, String) {
    if !path.ends_with("/chat/completions") {
        return (503, json!({"message": "relay unavailable in tests"}).to_string());
    }
    let h: String = Sha256::digest(body.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let content = json!({"error": "", "response": format!("simulated response {h}")}).to_string();
    let reply = json!({
        "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub-simulator",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": content}}],
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
        let port = free_port();
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
    let mut files: BTreeMap<PathBuf, Vec<(String, PyValue)>> = BTreeMap::new();
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
            let Ok(reply) = PyValue::parse(obs) else {
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
            if !entries.iter().any(|(k, _)| *k == key) {
                entries.push((key, reply));
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
        std::fs::write(&path, PyValue::Dict(entries).json_dumps()).unwrap();
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
        let backend = Server::new(&server.url, String::new(), std::time::Duration::from_secs(30));
        observation(Env::new(task, vec![Box::new(backend)]).step(function, input))
    };
    for r in &recorded {
        let (text, by) = ask(&r.task, &r.function, &r.input);
        assert_eq!(by, Some("stabletoolbench"));
        assert_eq!(text, r.observation, "{} {}", r.function, r.input);
        let (from_cache, by) =
            observation(Env::new(&r.task, vec![Box::new(Cache::new(&cache))]).step(&r.function, &r.input));
        assert_eq!((from_cache.as_str(), by), (text.as_str(), Some("cache")));
    }
    assert_eq!(server.logged().get("cached_real_response"), Some(&recorded.len()));
    assert!(stub.seen("/v1").is_empty(), "cached calls reach no simulator");

    // A call nobody made before: the relay answers 503, the simulator answers.
    let r = &recorded[0];
    let fresh = r#"{"q": "ablate's own question"}"#;
    let (simulated, _) = ask(&r.task, &r.function, fresh);
    assert_eq!(stub.seen("/rapidapi").len(), 1);
    assert_eq!(stub.seen("/v1").len(), 1);
    assert!(simulated.starts_with(r#"{"error": "", "response": "simulated response "#), "{simulated}");
    // The server saved it; the cache alone now answers the same, and a cache miss is a miss.
    let mut env = Env::new(&r.task, vec![Box::new(Cache::new(&cache))]);
    assert_eq!(observation(env.step(&r.function, fresh)).0, simulated);
    assert!(matches!(
        env.step(&r.function, r#"{"q": "never asked"}"#),
        Outcome::BackendError(_)
    ));
    // Input that is not JSON: the server's parse error, from both.
    let (bad, _) = ask(&r.task, &r.function, "{q: broken");
    assert_eq!(bad, r#"{"error": "Tool input parse error...\n", "response": ""}"#);
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
