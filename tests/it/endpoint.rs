//! A model behind an OpenAI-compatible endpoint (`model.name = "openai:<model>"`): it is
//! asked the study's prompts, never trained, and stands as the large model of the hybrid
//! what-if, whose router reads only the small model's own signals.

use crate::stub::Stub;
use crate::{assert_no_key, stdout_ok, WithoutAblateEnv};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use ablate::config::RunConfig;
use serde_json::{json, Value};

const KEY: &str = "sk-endpoint-test-4c1d";

fn ablate(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ablate"))
        .current_dir(dir)
        .args(args)
        .without_ablate_env()
        .env("STUB_ENDPOINT_KEY", KEY)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

const EXPERIMENT: &str = r#"
[experiment]
name = "routed"
report = "scaling"
[model]
name = "tiny"
[model.endpoint]
url = "URL"
api_key_env = "STUB_ENDPOINT_KEY"
[data]
n_train = 48
n_test = 8
vocab_size = 512
max_seq_len = 128
[train]
epochs = 0
[eval]
max_new_tokens = 24
evaluators = ["rules"]
[grid]
"model.name" = ["tiny", "openai:big-llm"]
"#;

/// A chat-completions endpoint that knows the gold answer of every other synthetic test
/// example (48 training, 8 test), by its prompt, and names a function nobody offered for
/// the rest; each answer has two tokens' log-probabilities (mean -1.0). A prompt it does
/// not know gets a 400.
pub(crate) fn half_gold_stub() -> Stub {
    let mut cfg = RunConfig::default();
    cfg.data.n_train = 48;
    cfg.data.n_test = 8;
    let examples = ablate::data::eval_examples(&cfg.data.split_spec().unwrap()).unwrap();
    let template = cfg.data.template;
    let answers: BTreeMap<String, String> = examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let answer = if i % 2 == 0 {
                template.completion(e).unwrap()
            } else {
                "Thought: x\nAction: no_such_function\nAction Input: {}".into()
            };
            (template.prompt(e).unwrap(), answer)
        })
        .collect();
    Stub::start(0, move |_, body| {
        let v: Value = serde_json::from_str(body).unwrap();
        let prompt = v["messages"][0]["content"].as_str().unwrap_or_default();
        match answers.get(prompt) {
            Some(a) => (
                200,
                json!({"choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": a},
                    "logprobs": {"content": [
                        {"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.5}]}}]})
                .to_string(),
            ),
            None => (
                400,
                json!({"error": {"message": "unknown prompt"}}).to_string(),
            ),
        }
    })
}

#[test]
fn an_endpoint_model_is_asked_the_studys_prompts_and_is_the_hybrids_large_model() {
    let stub = half_gold_stub();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("experiments")).unwrap();
    let url = format!("{}/v1", stub.base);
    std::fs::write(
        d.join("experiments/routed.toml"),
        EXPERIMENT.replace("URL", &url),
    )
    .unwrap();
    // It plans like any model (nothing to train, eight prompts to send).
    let text = stdout_ok(&ablate(d, &["plan", "experiments/routed.toml"]));
    assert!(
        text.contains("openai:big-llm") && text.contains("detectable: with 8 test examples"),
        "{text}"
    );
    let out = ablate(d, &["run", "experiments/routed.toml"]);
    stdout_ok(&out);
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(stream).contains(KEY),
            "the key was printed"
        );
    }

    // Every example was asked once, with the study's prompt, the key and the decoding.
    let seen = stub.requests();
    assert_eq!(seen.len(), 8);
    for r in &seen {
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY}")));
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["model"], "big-llm");
        assert_eq!(body["max_tokens"], 24);
        assert_eq!(body["logprobs"], true);
    }

    let c = rusqlite::Connection::open(d.join("results/ablate.db")).unwrap();
    let run_of = |name: &str| -> String {
        c.query_row(
            "SELECT id FROM runs WHERE json_extract(config_json, '$.model.name') = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap()
    };
    let (small, large) = (run_of("tiny"), run_of("openai:big-llm"));
    // The endpoint's answers are stored as its predictions, with their confidence.
    let details: Vec<(String, String)> = {
        let mut st = c
            .prepare(
                "SELECT p.example_id, p.detail_json FROM run_stages s
                 JOIN predictions p ON p.generation_id = s.generation_id WHERE s.run_id = ?1",
            )
            .unwrap();
        st.query_map([&large], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(details.len(), 8);
    for (_, d) in &details {
        let d: Value = serde_json::from_str(d).unwrap();
        assert_eq!(d["mean_logprob"], -1.0);
    }
    let rate = |run: &str| -> f64 {
        c.query_row(
            "SELECT pass_rate FROM run_summary WHERE run_id = ?1",
            [run],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(rate(&large), 0.5, "the endpoint passes the gold half");
    // Never trained: no steps, no weights.
    let steps: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM metrics WHERE run_id = ?1 AND name = 'loss'",
            [&large],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(steps, 0);
    assert!(!d
        .join(format!("results/runs/{large}/training/model"))
        .exists());

    // The router's what-if, recomputed from the stored signals and verdicts.
    let verdicts = |run: &str| -> BTreeMap<String, bool> {
        let mut st = c
            .prepare("SELECT example_id, passed FROM eval_results WHERE run_id = ?1")
            .unwrap();
        st.query_map([run], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let (sv, lv) = (verdicts(&small), verdicts(&large));
    let mut st = c
        .prepare(
            "SELECT p.example_id, p.detail_json FROM run_stages s
             JOIN predictions p ON p.generation_id = s.generation_id WHERE s.run_id = ?1",
        )
        .unwrap();
    let signalled: BTreeMap<String, bool> = st
        .query_map([&small], |r| Ok((r.get(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .map(|(id, d)| {
            let d: Value = serde_json::from_str(&d).unwrap();
            let any = d["signals"]
                .as_object()
                .is_some_and(|s| s.values().any(|v| v == true))
                || d["ending"] == "context_overflow";
            (id, any)
        })
        .collect();
    let hybrid = sv
        .keys()
        .filter(|k| if signalled[*k] { lv[*k] } else { sv[*k] })
        .count() as f64
        / sv.len() as f64;
    let routed = signalled.values().filter(|&&f| f).count() as f64 / sv.len() as f64;

    let out = ablate(d, &["report", "experiments/routed.toml"]);
    stdout_ok(&out);
    let report = std::fs::read_to_string(d.join("results/reports/routed.md")).unwrap();
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let row = report
        .lines()
        .find(|l| l.starts_with(&format!("| `{small}` |")) && l.contains(&format!("| {large} |")))
        .unwrap_or_else(|| panic!("no hybrid row of {small} with {large} as large:\n{report}"));
    let cells: Vec<&str> = row.split(" | ").collect();
    // small run | configuration | large | n | small | large | routed | hybrid | cost | ...
    assert_eq!(cells[3], "8", "{row}");
    assert_eq!(cells[5], pct(0.5), "{row}");
    assert_eq!(cells[6], pct(routed), "{row}");
    assert_eq!(cells[7], pct(hybrid), "{row}");
    // The oracle is a row apart in the same table, labelled as such.
    assert!(report.contains("oracle: hybrid") && report.contains("not a router"));

    // The key reached the endpoint and nothing else.
    assert_no_key(&d.join("results"), KEY);
}

#[test]
fn an_endpoint_model_refuses_training_and_needs_a_url() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("e.toml"),
        "[experiment]\nname = \"e\"\n[model]\nname = \"openai:gpt-4o-mini\"\n[train]\nepochs = 1\n\
         [eval]\ntemperature = 0.7\ntop_k = 40\n",
    )
    .unwrap();
    let out = ablate(d, &["plan", "e.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("train.epochs") && err.contains("only evaluated"),
        "{err}"
    );
    assert!(err.contains("model.endpoint.url"), "{err}");
    assert!(
        err.contains("eval.top_k") && err.contains("no top-k"),
        "{err}"
    );
}
