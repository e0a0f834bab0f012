//! The LLM judge against a local OpenAI-compatible server: ToolEval's procedure call by
//! call, the cache, and an API key that reaches the endpoint and nothing else.

use crate::stub::Stub;
use crate::{assert_no_key, WithoutAblateEnv};
use std::path::Path;
use std::process::{Command, Stdio};

use ablate::config::JudgeConfig;
use ablate::data::ToolSpec;
use ablate::eval::llm_judge::{Item, Judge};
use ablate::store::judge_cache::JudgeCacheDb;
use ablate::store::Store;
use serde_json::{json, Value};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    authorization: Option<String>,
    function: String,
    prompt: String,
}

/// A chat-completions server on a free local port: `reply(function, prompt)` gives the
/// forced function call's arguments, or an HTTP error.
struct Server {
    url: String,
    stub: Stub,
}

impl Server {
    fn start(
        reply: impl Fn(&str, &str) -> Result<Value, (u16, String)> + Send + Sync + 'static,
    ) -> Server {
        let stub = Stub::start(0, move |_, body| {
            let (function, prompt) = asked(body);
            match reply(&function, &prompt) {
                Ok(args) => (
                    200,
                    json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                        "tool_calls": [{"id": "call_0", "type": "function",
                            "function": {"name": function, "arguments": args.to_string()}}]}}]})
                    .to_string(),
                ),
                Err((code, message)) => (code, json!({"error": {"message": message}}).to_string()),
            }
        });
        Server {
            url: format!("{}/v1", stub.base),
            stub,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.stub
            .requests()
            .into_iter()
            .map(|r| {
                let (function, prompt) = asked(&r.body);
                Seen {
                    authorization: r.authorization,
                    function,
                    prompt,
                }
            })
            .collect()
    }
}

/// The function a judge's request forces, and its prompt.
fn asked(body: &str) -> (String, String) {
    let req: Value = serde_json::from_str(body).unwrap();
    (
        req["tool_choice"]["function"]["name"]
            .as_str()
            .unwrap()
            .to_string(),
        req["messages"][0]["content"].as_str().unwrap().to_string(),
    )
}

fn tools() -> Vec<ToolSpec> {
    vec![ToolSpec::from_json(&json!({
        "name": "get_capital",
        "description": "The capital of a country.",
        "parameters": {"type": "object", "properties": {"country": {"type": "string"}},
            "required": ["country"]}
    }))]
}

fn item<'a>(id: &'a str, answer: &'a str, tools: &'a [ToolSpec]) -> Item<'a> {
    Item::step(id, "What is the capital of France?", tools, answer)
}

fn config(url: &str, key_env: &str, k: usize) -> JudgeConfig {
    JudgeConfig {
        url: url.to_string(),
        model: "judge-1".into(),
        api_key_env: key_env.into(),
        k: Some(k),
        timeout_s: 5,
        ..Default::default()
    }
}

#[test]
fn the_judge_follows_tooleval_and_asks_each_question_once() {
    // Solved when the answer names Paris; "maybe" is Unsure until the path is read; the
    // task is unsolvable when the query asks about Atlantis.
    let server = Server::start(|function, prompt| {
        let status = match function {
            "check_answer_status" if prompt.contains("Paris") => "Solved",
            "check_answer_status" if prompt.contains("maybe") => "Unsure",
            "check_answer_status" => "Unsolved",
            "parse_answer_status" => "Solved",
            "check_task_solvable" if prompt.contains("Atlantis") => "Unsolvable",
            _ => "Solvable",
        };
        let field = if function == "check_task_solvable" {
            "task_status"
        } else {
            "answer_status"
        };
        Ok(json!({field: status, "reason": "because"}))
    });
    std::env::set_var("ABLATE_TEST_KEY_A", "sk-test-aaaa");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    drop(Store::open(&db).unwrap());
    let cache = JudgeCacheDb::open(&db).unwrap();
    let judge = Judge::new(&config(&server.url, "ABLATE_TEST_KEY_A", 3), Some(&cache)).unwrap();
    let t = tools();

    // Solved at once: one question per judgment, no solvability check.
    let d = judge
        .judge(&item("q1", "The capital is Paris.", &t))
        .unwrap();
    assert_eq!(
        (d.passed, d.verdict.as_str(), d.requests),
        (true, "pass", 3)
    );
    let seen = server.seen();
    assert!(seen.iter().all(|s| s.function == "check_answer_status"));
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer sk-test-aaaa")));
    assert!(seen[0].prompt.contains("What is the capital of France?"));
    // The same question again comes from the cache.
    let again = judge
        .judge(&item("q1", "The capital is Paris.", &t))
        .unwrap();
    assert_eq!((again.passed, again.requests), (true, 0));
    assert_eq!(server.seen().len(), 3);

    // Unsolved on a solvable task fails, after asking whether the task is solvable.
    let d = judge
        .judge(&item("q2", "I could not find it.", &t))
        .unwrap();
    assert_eq!(
        (d.passed, d.verdict.as_str(), d.requests),
        (false, "unsolved", 6)
    );
    assert!(server.seen()[3..]
        .iter()
        .any(|s| s.function == "check_task_solvable" && s.prompt.contains("get_capital")));

    // Unsure: the whole answer is read (parse_answer_status), and that decides.
    let before = server.seen().len();
    let d = judge.judge(&item("q3", "maybe it is Lyon", &t)).unwrap();
    assert!(d.passed);
    let parse: Vec<Seen> = server.seen()[before..]
        .iter()
        .filter(|s| s.function == "parse_answer_status")
        .cloned()
        .collect();
    assert_eq!(parse.len(), 3);
    assert!(parse[0].prompt.contains("answer_details"));

    // Unsolved on an unsolvable task passes (ToolEval's rule).
    let unsolvable = Item::step(
        "q4",
        "What is the capital of Atlantis?",
        &t,
        "I could not find it.",
    );
    assert!(judge.judge(&unsolvable).unwrap().passed);

    // A path that never finished fails without a question.
    let before = server.seen().len();
    let unfinished = item("q5", "", &t);
    let d = judge.judge(&unfinished).unwrap();
    assert_eq!(
        (d.passed, d.verdict.as_str(), d.requests),
        (false, "no_answer", 0)
    );
    assert_eq!(server.seen().len(), before);
    // Giving up is Unsolved without a question about the answer; solvability is still
    // asked, on another task than before (the same question would come from the cache).
    let other = Item::step(
        "q6",
        "What is the capital of Peru?",
        &t,
        "give_up_and_restart",
    );
    let d = judge.judge(&other).unwrap();
    assert_eq!((d.passed, d.requests), (false, 3));
    assert!(server.seen()[before..]
        .iter()
        .all(|s| s.function == "check_task_solvable"));

    // Every answer is cached in the database, and the key is nowhere in it.
    let c = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM judge_cache", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n as usize, server.seen().len());
    drop(c);
    assert_no_key(dir.path(), "sk-test-aaaa");
}

#[test]
fn endpoint_errors_name_the_endpoint_and_never_the_key() {
    // Like some real endpoints, this one repeats the key it refuses.
    let server =
        Server::start(|_, _| Err((401, "Incorrect API key provided: sk-test-bbbb".into())));
    std::env::set_var("ABLATE_TEST_KEY_B", "sk-test-bbbb");
    let judge = Judge::new(&config(&server.url, "ABLATE_TEST_KEY_B", 1), None).unwrap();
    let t = tools();
    let e = judge
        .judge(&item("q", "Paris", &t))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&server.url) && e.contains("HTTP 401"), "{e}");
    assert!(!e.contains("sk-test-bbbb"), "{e}");
    assert_eq!(server.seen().len(), 1, "a 401 is not retried");

    // A reply with a status outside the function's enum is an error, not a verdict.
    let odd = Server::start(|_, _| Ok(json!({"answer_status": "Probably", "reason": ""})));
    let judge = Judge::new(&config(&odd.url, "ABLATE_TEST_KEY_B", 1), None).unwrap();
    let e = judge
        .judge(&item("q", "Paris", &t))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Probably"), "{e}");
}

/// An endpoint that echoes the key in a successful reply, plain, JSON-escaped and
/// URL-encoded: nothing of it is cached.
#[test]
fn a_successful_reply_that_echoes_the_key_is_kept_without_it() {
    let key = "sk-test/c\"cc+dd";
    let url_encoded = "sk-test%2Fc%22cc%2Bdd";
    let server = Server::start(move |_, _| {
        Ok(json!({
            "answer_status": "Solved",
            "reason": format!("you sent {key}, that is {url_encoded}"),
        }))
    });
    std::env::set_var("ABLATE_TEST_KEY_C", key);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    drop(Store::open(&db).unwrap());
    let cache = JudgeCacheDb::open(&db).unwrap();
    let judge = Judge::new(&config(&server.url, "ABLATE_TEST_KEY_C", 1), Some(&cache)).unwrap();
    let t = tools();
    let d = judge.judge(&item("q", "Paris", &t)).unwrap();
    assert!(d.passed);
    drop(judge);
    let c = rusqlite::Connection::open(&db).unwrap();
    let stored: Vec<String> = c
        .prepare("SELECT response FROM judge_cache")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stored.len(), 1);
    let json_escaped = serde_json::to_string(key).unwrap();
    for form in [key, json_escaped.trim_matches('"'), url_encoded, "sk-test"] {
        assert!(!stored[0].contains(form), "{form} in {}", stored[0]);
    }
    assert!(stored[0].contains("[API key]"), "{}", stored[0]);
    drop(c);
    assert_no_key(dir.path(), "sk-test");
}

/// Runs ablate in `dir`, with the judge's key in ABLATE_TEST_JUDGE_KEY if given.
fn run(dir: &Path, args: &[&str], key: Option<&str>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ablate"));
    c.current_dir(dir)
        .args(args)
        .without_ablate_env()
        .stdin(Stdio::null());
    if let Some(k) = key {
        c.env("ABLATE_TEST_JUDGE_KEY", k);
    }
    c.output().unwrap()
}

#[test]
fn a_sweep_with_the_llm_judge_stores_its_verdicts_and_the_key_goes_nowhere() {
    let server = Server::start(|function, prompt| {
        let field = if function == "check_task_solvable" {
            "task_status"
        } else {
            "answer_status"
        };
        // Calls that name a tool are "solved"; the rest are not.
        let status = match function {
            "check_task_solvable" => "Solvable",
            _ if prompt.contains("Action:") => "Solved",
            _ => "Unsolved",
        };
        Ok(json!({field: status, "reason": "ok"}))
    });
    let key = "sk-test-cccc-never-stored";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("experiments")).unwrap();
    std::fs::write(
        d.join("experiments/judged.toml"),
        format!(
            r#"
[model]
name = "tiny"
[data]
n_train = 48
n_test = 6
vocab_size = 512
max_seq_len = 128
[train]
lr = 3e-3
batch_size = 16
[eval]
max_new_tokens = 24
evaluators = ["rules", "llm_judge"]
[eval.judge]
url = "{}"
model = "judge-1"
api_key_env = "ABLATE_TEST_JUDGE_KEY"
k = 2
"#,
            server.url
        ),
    )
    .unwrap();
    let out = run(d, &["run", "experiments/judged.toml", "--json"], Some(key));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stream in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(stream).contains(key));
    }
    let seen = server.seen();
    assert!(!seen.is_empty());
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {key}"))));

    let c = rusqlite::Connection::open(d.join("results/ablate.db")).unwrap();
    let judged: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM eval_results WHERE evaluator = 'llm_judge'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(judged, 6, "one verdict per test example");
    let rate: f64 = c
        .query_row(
            "SELECT value FROM metrics WHERE name = 'pass_rate_llm_judge'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!((0.0..=1.0).contains(&rate));
    // Both evaluators judged the same predictions: their agreement is reportable.
    let pairs: i64 = c
        .query_row(
            "SELECT n FROM evaluator_agreement WHERE evaluator_a = 'llm_judge' AND evaluator_b = 'rules'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pairs, 6);
    let cached: i64 = c
        .query_row("SELECT COUNT(*) FROM judge_cache", [], |r| r.get(0))
        .unwrap();
    assert_eq!(cached as usize, seen.len());
    drop(c);
    // Not in the database, the run folders, the reports or the logs.
    assert_no_key(d, key);
}

/// With ToolBench episodes the judge reads whole episodes, as ToolEval does: one verdict
/// per trajectory, and an episode that never called Finish fails without a question.
#[test]
fn with_episodes_the_judge_reads_whole_episodes() {
    let server = Server::start(|_, _| Ok(json!({"answer_status": "Solved", "reason": ""})));
    let answers = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/toolbench/ToolBench/data_example/answer");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("experiments")).unwrap();
    std::fs::write(
        d.join("experiments/episodes.toml"),
        format!(
            "[model]\nname = \"tiny\"\n[data]\ntrain = \"{0}\"\neval = \"{0}\"\nvocab_size = 400\n\
             [train]\nepochs = 0\n[eval]\nevaluators = [\"episode\", \"rules\", \"llm_judge\"]\n\
             limit = 2\nmax_turns = 2\nmax_new_tokens = 6\nbatch_size = 1\n\
             [eval.judge]\nurl = \"{1}\"\nmodel = \"judge-1\"\n",
            answers.display(),
            server.url
        ),
    )
    .unwrap();
    let out = run(
        d,
        &["run", "experiments/episodes.toml", "--no-report"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = rusqlite::Connection::open(d.join("results/ablate.db")).unwrap();
    let rows: Vec<(String, String)> = c
        .prepare(
            "SELECT j.verdict, e.verdict FROM eval_results j
             JOIN eval_results e ON e.run_id = j.run_id AND e.example_id = j.example_id
              AND e.evaluator = 'episode'
             WHERE j.evaluator = 'llm_judge' ORDER BY j.example_id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows.len(),
        2,
        "one judged verdict per trajectory, none per step"
    );
    // An untrained model never calls Finish: no answer, and nothing asked.
    for (judged, episode) in &rows {
        assert_ne!(episode, "pass");
        assert_eq!(judged, "no_answer");
    }
    assert!(server.seen().is_empty());
}

/// A sweep judged with a ToolEval evaluator folder (StableToolBench's, read at run time)
/// under StableToolBench's solvable pass rate; then people's labels: a malformed file is
/// refused whole and changes nothing, a good one shows in the evaluators report with kappa
/// against the judge and the rules, and between its two annotators.
#[test]
fn a_sweep_judged_with_toolevals_folder_and_sopr_then_human_labels() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The judge wavers: the same question gets Solved, Unsure, Unsolved in turn, so the k
    // judgments of one answer differ (what the stability section is for).
    let calls = AtomicUsize::new(0);
    let server = Server::start(move |function, _| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let status = match function {
            "check_answer_status" => ["Solved", "Unsure", "Unsolved"][n % 3],
            _ => ["Solved", "Unsolved"][n % 2],
        };
        Ok(json!({"answer_status": status, "reason": "ok"}))
    });
    let evaluator = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../shared/upstream/StableToolBench/toolbench/tooleval/evaluators/tooleval_gpt-3.5-turbo_default",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("experiments")).unwrap();
    std::fs::write(
        d.join("experiments/judged.toml"),
        format!(
            r#"
[experiment]
name = "judged"
report = "evaluators"
[model]
name = "tiny"
[data]
n_train = 48
n_test = 6
vocab_size = 512
max_seq_len = 128
[train]
lr = 3e-3
batch_size = 16
[eval]
max_new_tokens = 24
evaluators = ["rules", "llm_judge"]
[eval.judge]
url = "{}"
evaluator = "{}"
procedure = "sopr"
k = 3
"#,
            server.url,
            evaluator.display()
        ),
    )
    .unwrap();
    let out = run(d, &["run", "experiments/judged.toml"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The folder's prompt and model, not ablate's.
    let seen = server.stub.requests();
    let first: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(first["model"], "gpt-3.5-turbo-16k");
    assert!(first["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("Giving the query and answer, you need give `answer_status`"));

    let db = d.join("results/ablate.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    let (run_id, scores, n): (String, f64, i64) = c
        .query_row(
            "SELECT rv.run_id, SUM(v.score), COUNT(*) FROM verdicts v
             JOIN run_verdict_sets rv ON rv.verdict_set_id = v.verdict_set_id
             WHERE rv.evaluator = 'llm_judge' GROUP BY rv.run_id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(n, 6);
    let rate: f64 = c
        .query_row(
            "SELECT value FROM metrics WHERE name = 'pass_rate_llm_judge'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        (rate - scores / 6.0).abs() < 1e-12,
        "the rate is the mean score"
    );
    let judgments: String = c
        .query_row(
            "SELECT judgments_json FROM verdicts WHERE judgments_json IS NOT NULL LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&judgments)
            .unwrap()
            .len(),
        3
    );
    let examples: Vec<String> = c
        .prepare("SELECT example_id FROM eval_results WHERE evaluator = 'rules' ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(c);

    // A malformed file: every problem listed, nothing imported, the database unchanged.
    let bad = d.join("bad.csv");
    std::fs::write(
        &bad,
        format!(
            "run,example,verdict,annotator\n{run_id},{},pass,ana\n{run_id},no-such-example,pass,ana\n\
             {run_id},{},perhaps,ana\nffffff,{},fail,ana\n",
            examples[0], examples[1], examples[2]
        ),
    )
    .unwrap();
    let before = std::fs::read(&db).unwrap();
    let out = run(
        d,
        &["labels", "import", "bad.csv", "--evaluator", "human"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "no-such-example",
        "\"perhaps\"",
        "no run \"ffffff\"",
        "3 problem(s)",
    ] {
        assert!(err.contains(expected), "{expected} not in: {err}");
    }
    assert_eq!(before, std::fs::read(&db).unwrap(), "the database changed");

    // Two annotators; ben disagrees with ana on two examples.
    let mut csv = String::from("run,example,verdict,annotator,note\n");
    for (i, e) in examples.iter().enumerate() {
        let ana = if i % 2 == 0 { "pass" } else { "fail" };
        let ben = if i < 2 {
            if ana == "pass" {
                "fail"
            } else {
                "pass"
            }
        } else {
            ana
        };
        csv += &format!("{run_id},{e},{ana},ana,\n{run_id},{e},{ben},ben,checked twice\n");
    }
    std::fs::write(d.join("labels.csv"), csv).unwrap();
    let out = run(
        d,
        &[
            "labels",
            "import",
            "labels.csv",
            "--evaluator",
            "human",
            "--json",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["labels"], 12);
    assert_eq!(done["annotators"], json!(["ana", "ben"]));
    let c = rusqlite::Connection::open(&db).unwrap();
    let (agree, n): (f64, i64) = c
        .query_row(
            "SELECT agreement, n FROM evaluator_agreement
             WHERE evaluator_a = 'human/ana' AND evaluator_b = 'human/ben'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((agree, n), (4.0 / 6.0, 6));
    drop(c);

    let out = run(d, &["report", "experiments/judged.toml"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(d.join("results/reports/judged.md")).unwrap();
    for expected in [
        "| human/ana / llm_judge | 6 |",
        "| human/ana / rules | 6 |",
        "Between annotators",
        "| human/ana / human/ben | 6 | 66.7% |",
        "ToolEval evaluator tooleval_gpt-3.5-turbo_default (sha256 ",
        "| sopr | gpt-3.5-turbo-16k | 3 | 6 |",
    ] {
        assert!(report.contains(expected), "{expected} not in:\n{report}");
    }
}
