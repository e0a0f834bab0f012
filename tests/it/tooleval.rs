//! ToolEval's judge, measured against StableToolBench's own `eval_pass_rate.py`: both
//! judge the same converted answers with the prompts and schemas of ToolEval's evaluator
//! folder, against one local OpenAI-compatible stub whose answer is a hash of the request;
//! every request, status and rate must agree.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::agent::venv_python;
use crate::stub::Stub;
use crate::{stdout_ok, WithoutAblateEnv};

fn upstream() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/upstream/StableToolBench/toolbench/tooleval")
}

fn stable() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/toolbench/StableToolBench")
}

/// A judge that answers the forced function with a status chosen by a hash of the
/// function and the prompt: the same question always gets the same answer.
fn judge(_: &str, body: &str) -> (u16, String) {
    let req: Value = serde_json::from_str(body).unwrap();
    let function = req["tool_choice"]["function"]["name"]
        .as_str()
        .unwrap_or_default();
    let prompt = req["messages"][0]["content"].as_str().unwrap_or_default();
    let h = Sha256::digest(format!("{function}\0{prompt}").as_bytes());
    // Mostly Unsure to the first question, so the second (which is shown the whole
    // answer as json.dumps writes it) is asked too.
    let status = match function {
        "check_answer_status" => ["Solved", "Unsure", "Unsure"][h[0] as usize % 3],
        _ => ["Solved", "Unsolved", "Unsure"][h[0] as usize % 3],
    };
    let args = json!({"answer_status": status, "reason": "stub"}).to_string();
    let reply = json!({
        "id": "chatcmpl-judge", "object": "chat.completion", "created": 0, "model": req["model"],
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": null, "tool_calls": [{"id": "call_0", "type": "function",
                "function": {"name": function, "arguments": args}}]}}],
    });
    (200, reply.to_string())
}

/// The requests' bodies, as JSON values, sorted (the two programs ask in their own order).
fn bodies(stub: &Stub, from: usize) -> Vec<String> {
    let mut v: Vec<String> = stub.requests()[from..]
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn ablates_judge_agrees_with_stabletoolbenchs_eval_pass_rate_on_every_query() {
    let python = venv_python();
    let tmp = tempfile::tempdir().unwrap();
    let stub = Stub::start(0, judge);
    let pool = tmp.path().join("api_pool.json");
    std::fs::write(
        &pool,
        json!([{"api_key": "stub", "api_base": format!("{}/v1", stub.base)}]).to_string(),
    )
    .unwrap();
    let converted = stable().join("data_example/model_predictions_converted");
    let ids = stable().join("solvable_queries/test_query_ids");
    let evaluator = upstream().join("evaluators/tooleval_gpt-3.5-turbo_default");
    let k = 3;
    let mut compared = 0;
    for system in ["virtual_chatgpt_cot", "virtual_chatgpt_dfs"] {
        let results = tmp.path().join(system);
        std::fs::create_dir_all(&results).unwrap();
        let before = stub.requests().len();
        let out = Command::new(&python)
            .current_dir(upstream())
            .arg("eval_pass_rate.py")
            .arg("--converted_answer_path")
            .arg(&converted)
            .arg("--save_path")
            .arg(&results)
            .args(["--reference_model", system, "--test_ids"])
            .arg(&ids)
            .args([
                "--max_eval_threads",
                "1",
                "--evaluate_times",
                &k.to_string(),
            ])
            .args(["--test_set", "G1_instruction"])
            .env("API_POOL_FILE", &pool)
            .env_remove("OPENAI_KEY")
            .env_remove("EVAL_MODEL")
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{printed}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs_requests = bodies(&stub, before);
        let theirs: Value = serde_json::from_str(
            &std::fs::read_to_string(results.join(format!("G1_instruction_{system}.json")))
                .unwrap(),
        )
        .unwrap();

        let middle = stub.requests().len();
        let out = crate::cli::ablate(
            tmp.path(),
            &[
                "score",
                "tooleval",
                "--answers",
                converted
                    .join(system)
                    .join("G1_instruction.json")
                    .to_str()
                    .unwrap(),
                "--ids",
                ids.join("G1_instruction.json").to_str().unwrap(),
                "--evaluator",
                evaluator.to_str().unwrap(),
                "--url",
                &format!("{}/v1", stub.base),
                "--k",
                &k.to_string(),
                "--json",
            ],
        );
        let ours: Value = serde_json::from_str(&stdout_ok(&out)).unwrap();
        let ours_requests = bodies(&stub, middle);
        // The same questions, byte for byte in their prompts and equal in every other field.
        let second = |r: &Vec<String>| {
            r.iter()
                .filter(|b| b.contains("parse_answer_status"))
                .count()
        };
        assert!(
            second(&theirs_requests) > 0,
            "the whole answer was never judged"
        );
        assert_eq!(ours_requests, theirs_requests, "{system}");
        // The same status for every query and judgment.
        let theirs_q = theirs.as_object().unwrap();
        assert_eq!(ours["queries"].as_object().unwrap().len(), theirs_q.len());
        for (id, t) in theirs_q {
            for j in 0..k {
                assert_eq!(
                    ours["queries"][id]["is_solved"][j.to_string()],
                    t["is_solved"][j.to_string()],
                    "{system} {id} judgment {j}"
                );
                compared += 1;
            }
        }
        // The same rate and spread as the script prints them.
        let mean = ours["mean"].as_f64().unwrap() * 100.0;
        let sd = ours["sd"].as_f64().unwrap() * 100.0;
        let line = format!("Solve rate: {mean:.1}% Std: {sd:.1}%");
        assert!(printed.contains(&line), "{line} not in:\n{printed}");
    }
    assert_eq!(compared, 2 * 3 * k);
}

/// Fed the statuses StableToolBench recorded for its example answers, ablate's aggregation
/// gives the rates its script prints for them (the script, run on a copy of its own
/// results, asks nothing: every query is judged already).
#[test]
fn the_recorded_judgments_aggregate_to_the_scripts_rates() {
    use ablate::eval::tooleval::{sopr_rates, AnswerStatus};
    let python = venv_python();
    let tmp = tempfile::tempdir().unwrap();
    for system in ["virtual_chatgpt_cot", "virtual_chatgpt_dfs"] {
        let file = format!("G1_instruction_{system}.json");
        let recorded = stable()
            .join("data_example/pass_rate_results")
            .join(system)
            .join(&file);
        let save = tmp.path().join(system);
        std::fs::create_dir_all(&save).unwrap();
        std::fs::copy(&recorded, save.join(&file)).unwrap();
        let out = Command::new(&python)
            .current_dir(upstream())
            .arg("eval_pass_rate.py")
            .arg("--converted_answer_path")
            .arg(stable().join("data_example/model_predictions_converted"))
            .arg("--save_path")
            .arg(&save)
            .args(["--reference_model", system, "--test_ids"])
            .arg(stable().join("solvable_queries/test_query_ids"))
            .args(["--max_eval_threads", "1", "--evaluate_times", "3"])
            .args(["--test_set", "G1_instruction"])
            .env("OPENAI_KEY", "never-used")
            .without_ablate_env()
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{printed}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&recorded).unwrap()).unwrap();
        let statuses: Vec<Vec<AnswerStatus>> = v
            .as_object()
            .unwrap()
            .values()
            .map(|q| {
                (0..3)
                    .map(|j| {
                        let s = q["is_solved"][j.to_string()].as_str().unwrap();
                        AnswerStatus::parse(s.trim_start_matches("AnswerStatus.")).unwrap()
                    })
                    .collect()
            })
            .collect();
        let (_, mean, sd) = sopr_rates(&statuses, 3);
        let line = format!("Solve rate: {:.1}% Std: {:.1}%", mean * 100.0, sd * 100.0);
        assert!(
            printed.contains(&line),
            "{system}: {line} not in:\n{printed}"
        );
    }
}

fn toolbench_upstream() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/upstream/ToolBench/toolbench/tooleval")
}

/// ToolBench's ToolEval (openai < 1.0) in its own virtual environment.
fn toolbench_python() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/toolbench-venv.sh");
    let out = Command::new("bash")
        .arg(script)
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

/// What a judge's request asks, whichever API shape it comes in (ToolBench's openai < 1.0
/// sends `functions` + `function_call`, ablate and StableToolBench `tools` +
/// `tool_choice`): the function's schema, the prompt and the completion settings.
fn question(body: &str) -> Value {
    let req: Value = serde_json::from_str(body).unwrap();
    let schema = if req["functions"].is_array() {
        req["functions"][0].clone()
    } else {
        req["tools"][0]["function"].clone()
    };
    json!({
        "function": schema,
        "prompt": req["messages"][0]["content"],
        "messages": req["messages"].as_array().map(Vec::len),
        "model": req["model"],
        "temperature": req["temperature"],
        "max_tokens": req["max_tokens"],
    })
}

/// A judge for both API shapes: the status is a hash of the function and the prompt, and
/// the reply carries the call both as `tool_calls` and as the legacy `function_call`.
fn judge_both_shapes(_: &str, body: &str) -> (u16, String) {
    let q = question(body);
    let function = q["function"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let prompt = q["prompt"].as_str().unwrap_or_default();
    let h = Sha256::digest(format!("{function}\0{prompt}").as_bytes());
    let pick = |options: [&str; 3]| options[h[0] as usize % 3].to_string();
    let args = match function.as_str() {
        "check_answer_status" => json!({"answer_status": pick(["Solved", "Unsure", "Unsolved"])}),
        "parse_answer_status" => json!({"answer_status": pick(["Solved", "Unsolved", "Unsure"])}),
        _ => json!({"task_status": pick(["Solvable", "Unsolvable", "Unsure"])}),
    };
    let mut args = args;
    args["reason"] = json!("stub");
    let args = args.to_string();
    let reply = json!({
        "id": "chatcmpl-judge", "object": "chat.completion", "created": 0,
        "model": q["model"],
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": null,
            "function_call": {"name": function, "arguments": args},
            "tool_calls": [{"id": "call_0", "type": "function",
                "function": {"name": function, "arguments": args}}]}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    });
    (200, reply.to_string())
}

/// ToolBench's procedure (solvability check, Unsolvable passes, majority with ties
/// passing), measured against ToolBench's own `eval_pass_rate.py` on the shared converted
/// answers: every question asked (prompt and schema) is the same, and so is every query's
/// count of passed and failed judgments, except where ToolBench draws a random coin
/// (an Unsure judgment), which ablate replaces by a hashed one: those are counted.
#[test]
fn ablates_judge_agrees_with_toolbenchs_eval_pass_rate_except_its_coins() {
    let python = toolbench_python();
    let tmp = tempfile::tempdir().unwrap();
    let stub = Stub::start(0, judge_both_shapes);
    let pool = tmp.path().join("api_pool.json");
    std::fs::write(&pool, json!([{"api_key": "stub"}]).to_string()).unwrap();
    let shared = stable().join("data_example/model_predictions_converted");
    let ids_g1 = stable().join("solvable_queries/test_query_ids/G1_instruction.json");
    let evaluator = toolbench_upstream().join("evaluators/tooleval_gpt-3.5-turbo_default");
    let k = 4;
    // ToolBench's script reads all six groups: each is given G1_instruction's answers and
    // ids, and G1_instruction is compared.
    let groups = [
        "G1_instruction",
        "G1_category",
        "G1_tool",
        "G2_instruction",
        "G2_category",
        "G3_instruction",
    ];
    let converted = tmp.path().join("converted");
    let ids = tmp.path().join("ids");
    std::fs::create_dir_all(&ids).unwrap();
    for g in groups {
        std::fs::copy(&ids_g1, ids.join(format!("{g}.json"))).unwrap();
    }
    let (mut checked, mut coins, mut solvability_asked) = (0, 0, 0);
    for system in ["virtual_chatgpt_cot", "virtual_chatgpt_dfs"] {
        std::fs::create_dir_all(converted.join(system)).unwrap();
        for g in groups {
            std::fs::copy(
                shared.join(system).join("G1_instruction.json"),
                converted.join(system).join(format!("{g}.json")),
            )
            .unwrap();
        }
        let results = tmp.path().join(format!("results-{system}"));
        std::fs::create_dir_all(&results).unwrap();
        let before = stub.requests().len();
        let out = Command::new(&python)
            .current_dir(toolbench_upstream())
            .arg("eval_pass_rate.py")
            .arg("--converted_answer_path")
            .arg(&converted)
            .arg("--save_path")
            .arg(&results)
            .args(["--reference_model", system, "--test_ids"])
            .arg(&ids)
            .args([
                "--max_eval_threads",
                "1",
                "--evaluate_times",
                &k.to_string(),
            ])
            .env("API_POOL_FILE", &pool)
            .env("OPENAI_API_BASE", format!("{}/v1", stub.base))
            .env_remove("OPENAI_KEY")
            .without_ablate_env()
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{printed}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The first group's questions (the others repeat them).
        let asked = stub.requests().len() - before;
        let mut theirs_q: Vec<String> = stub.requests()[before..before + asked / groups.len()]
            .iter()
            .map(|r| question(&r.body).to_string())
            .collect();
        theirs_q.sort();
        let theirs: Value = serde_json::from_str(
            &std::fs::read_to_string(results.join(format!("G1_instruction_{system}.json")))
                .unwrap(),
        )
        .unwrap();

        let middle = stub.requests().len();
        let out = crate::cli::ablate(
            tmp.path(),
            &[
                "score",
                "tooleval",
                "--procedure",
                "pass_rate",
                "--answers",
                converted
                    .join(system)
                    .join("G1_instruction.json")
                    .to_str()
                    .unwrap(),
                "--ids",
                ids_g1.to_str().unwrap(),
                "--evaluator",
                evaluator.to_str().unwrap(),
                "--url",
                &format!("{}/v1", stub.base),
                "--k",
                &k.to_string(),
                "--json",
            ],
        );
        let ours: Value = serde_json::from_str(&stdout_ok(&out)).unwrap();
        let mut ours_q: Vec<String> = stub.requests()[middle..]
            .iter()
            .map(|r| question(&r.body).to_string())
            .collect();
        ours_q.sort();
        // The same questions: ToolBench asks each of its k judgments anew, ablate too.
        let only = |a: &[String], b: &[String]| -> Vec<String> {
            let mut b = b.to_vec();
            a.iter()
                .filter(|x| match b.iter().position(|y| y == *x) {
                    Some(i) => {
                        b.remove(i);
                        false
                    }
                    None => true,
                })
                .map(|x| x.chars().take(2000).collect())
                .collect()
        };
        assert!(
            ours_q == theirs_q,
            "{system}: {} questions against {}; only ablate's: {:#?}\nonly ToolBench's: {:#?}",
            ours_q.len(),
            theirs_q.len(),
            only(&ours_q, &theirs_q),
            only(&theirs_q, &ours_q)
        );
        solvability_asked += ours_q
            .iter()
            .filter(|q| q.contains("check_task_solvable"))
            .count();

        let theirs = theirs.as_object().unwrap();
        assert_eq!(ours["queries"].as_object().unwrap().len(), theirs.len());
        let (mut ours_passed, mut theirs_passed) = (0, 0);
        for (id, t) in theirs {
            let o = &ours["queries"][id];
            // Every judgment of a query asks the same questions of a deterministic judge,
            // so ToolBench's one recorded status stands for all k.
            for j in 0..k {
                assert_eq!(
                    o["is_solved"][j.to_string()],
                    t["is_solved"],
                    "{system} {id}"
                );
                let task = o["task_solvable"][j.to_string()]
                    .as_str()
                    .unwrap_or("TaskStatus.Solvable");
                assert_eq!(task, t["task_solvable"], "{system} {id}");
            }
            if o["coins"].as_u64().unwrap() > 0 {
                coins += 1;
                continue;
            }
            assert_eq!(o["passed"], t["passed"], "{system} {id}");
            assert_eq!(o["failed"], t["failed"], "{system} {id}");
            let pass = |v: &Value| v["failed"].as_u64() <= v["passed"].as_u64();
            ours_passed += pass(o) as usize;
            theirs_passed += pass(t) as usize;
            checked += 1;
        }
        assert_eq!(ours_passed, theirs_passed, "{system}");
        if ours["queries"]
            .as_object()
            .unwrap()
            .values()
            .all(|q| q["coins"] == 0)
        {
            let rate = ours["mean"].as_f64().unwrap();
            let line = format!("Test set: G1_instruction. Model: {system}. Pass rate: {rate}");
            assert!(printed.contains(&line), "{line} not in:\n{printed}");
        }
    }
    assert!(checked > 0, "no query was free of coins");
    assert!(
        solvability_asked > 0,
        "the task's solvability was never asked"
    );
    eprintln!("ToolBench agreement: {checked} queries compared, {coins} decided by coins");
}
