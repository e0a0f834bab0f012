//! ToolBench loaders on every file of `../shared/data/toolbench`.

use std::path::{Path, PathBuf};

use ablate::data::{render_prompt, toolbench};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/toolbench")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_answer_file_loads_as_a_trajectory_with_its_steps() {
    let mut valid = 0;
    for group in ["G1", "G2", "G3"] {
        for f in json_files(&root().join(format!("ToolBench/data_example/answer/{group}_answer"))) {
            let raw: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
            let ag = &raw["answer_generation"];
            let t = toolbench::load_answer(&f).unwrap();
            if ag["valid_data"] == false {
                assert!(t.is_none(), "{f:?}");
                continue;
            }
            let t = t.unwrap();
            valid += 1;
            let transcript = ag["train_messages"].as_array().unwrap().last().unwrap();
            let assistant = transcript
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["role"] == "assistant" && m["function_call"].is_object())
                .count();
            assert_eq!(t.steps.len(), assistant, "{f:?}");
            assert_eq!(t.group, group);
            assert_eq!(t.steps.last().unwrap().action, "Finish", "{f:?}");
            assert_eq!(t.finish_type, ag["finish_type"].as_str().unwrap());
            assert!(t.functions.iter().any(|f| f.name == "Finish"));
            assert!(!t.query.is_empty() && !t.query.ends_with("Begin!"));
            // Every non-final step has its observation; the steps' prompts carry the
            // gold history.
            assert!(t.steps[..t.steps.len() - 1]
                .iter()
                .all(|s| s.observation.is_some()));
            let ex = t.step_examples();
            assert_eq!(ex.len(), t.steps.len());
            for (k, e) in ex.iter().enumerate() {
                assert_eq!(e.history.len(), k);
                assert_eq!(e.gold.name, t.steps[k].action);
                assert!(
                    e.gold.arguments.is_object(),
                    "{}: {:?}",
                    e.id,
                    e.gold.arguments
                );
                let prompt = render_prompt(e);
                if k > 0 {
                    let obs = t.steps[k - 1].observation.as_deref().unwrap();
                    let head: String = obs.chars().take(100).collect();
                    assert!(prompt.contains(&head), "{}", e.id);
                    assert!(prompt.matches("<|function|>").count() == k);
                }
            }
        }
    }
    assert_eq!(valid, 11);
}

#[test]
fn every_query_set_loads_with_its_ids() {
    for (file, n) in [
        ("G1_query.json", 5),
        ("G2_query.json", 3),
        ("G3_query.json", 2),
        ("inference_query_demo.json", 1),
    ] {
        let qs =
            toolbench::load_queries(&root().join("ToolBench/data_example/instruction").join(file))
                .unwrap();
        assert_eq!(qs.len(), n, "{file}");
        assert!(
            qs.iter()
                .all(|q| !q.query.is_empty() && !q.api_list.is_empty()),
            "{file}"
        );
    }
    let open = toolbench::load_queries(
        &root().join("ToolBench/data_example/instruction/inference_query_demo_open_domain.json"),
    )
    .unwrap();
    assert!(open.len() == 1 && open[0].api_list.is_empty());

    let stable = root().join("StableToolBench/solvable_queries");
    for (group, n) in [
        ("G1_instruction", 163),
        ("G1_category", 153),
        ("G1_tool", 158),
        ("G2_instruction", 106),
        ("G2_category", 124),
        ("G3_instruction", 61),
    ] {
        let qs = toolbench::load_queries(&stable.join(format!("test_instruction/{group}.json")))
            .unwrap();
        assert_eq!(qs.len(), n, "{group}");
        assert!(qs
            .iter()
            .all(|q| !q.relevant_apis.is_empty() && !q.api_list.is_empty()));
        let mut ids =
            toolbench::load_query_ids(&stable.join(format!("test_query_ids/{group}.json")))
                .unwrap();
        let mut from_queries: Vec<String> = qs.iter().map(|q| q.query_id.to_string()).collect();
        ids.sort();
        from_queries.sort();
        assert_eq!(ids, from_queries, "{group}");
    }
    // A file of another shape is refused with its name.
    let e = toolbench::load_queries(
        &root().join("ToolBench/data_example/answer/G1_answer/10_ChatGPT_DFS_woFilter_w2.json"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("10_ChatGPT_DFS_woFilter_w2.json"));
}

/// The recorded trajectory played back as the model's turns: every call must get its
/// recorded observation, and the episode ends as the trajectory did.
#[test]
fn replaying_a_gold_trajectory_passes_toolevals_rules() {
    use ablate::eval::toolbench::{judge_turn, replay_observation, TurnOutcome};
    let answers = toolbench::load_answers(&root().join("ToolBench/data_example/answer")).unwrap();
    assert_eq!(answers.len(), 11);
    for t in &answers {
        let mut used = vec![false; t.steps.len()];
        let mut end = None;
        for s in &t.steps {
            let text = format!(
                "Thought: {}\nAction: {}\nAction Input: {}",
                s.thought, s.action, s.action_input
            );
            match judge_turn(&text, t) {
                TurnOutcome::Call {
                    name, arguments, ..
                } => {
                    let obs = replay_observation(t, &mut used, &name, &arguments);
                    assert_eq!(Some(&obs), s.observation.as_ref(), "{}: {name}", t.id);
                }
                TurnOutcome::End(v) => {
                    end = Some(v);
                    break;
                }
            }
        }
        // ToolBench's own paths are not all clean: G3-21 calls `dota_2_steam_web`, which is
        // not among its functions, and the rules say so.
        let hallucinates = t
            .steps
            .iter()
            .any(|s| !t.functions.iter().any(|f| f.name == s.action));
        let want = match (hallucinates, t.finish_type.as_str()) {
            (true, _) => "hallucinated_name",
            (false, "give_answer") => "pass",
            _ => "gave_up",
        };
        assert_eq!(end, Some(want), "{}", t.id);
    }
    let t = &answers[0];
    // Rules that end an episode, each for its reason.
    let call = |a: &str, i: &str| format!("Thought: x\nAction: {a}\nAction Input: {i}");
    assert_eq!(
        judge_turn("I think the answer is 4.", t),
        TurnOutcome::End("bad_format")
    );
    assert_eq!(
        judge_turn(&call("made_up_api", "{}"), t),
        TurnOutcome::End("hallucinated_name")
    );
    assert_eq!(
        judge_turn(
            &call(
                "Finish",
                "{\"return_type\": \"give_answer\", \"final_answer\": \" \"}"
            ),
            t
        ),
        TurnOutcome::End("empty_answer")
    );
    assert_eq!(
        judge_turn(
            &call("Finish", "{\"return_type\": \"give_up_and_restart\"}"),
            t
        ),
        TurnOutcome::End("gave_up")
    );
    // A call nobody recorded gets a structured error observation.
    let mut used = vec![false; t.steps.len()];
    let obs = replay_observation(
        t,
        &mut used,
        &t.steps[0].action,
        &serde_json::json!({"unrecorded": 1}),
    );
    let v: Value = serde_json::from_str(&obs).unwrap();
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("no recorded response"));
}

/// StableToolBench's worked example: raw answers, converted predictions, the judge's
/// pass-rate and preference results all load, and ToolEval's rules are a necessary
/// condition of the recorded LLM verdicts (a rule failure is never judged Solved).
#[test]
fn stabletoolbench_example_files_load_and_rules_agree_with_the_judge() {
    use ablate::eval::toolbench::finish_verdict;
    let ex = root().join("StableToolBench/data_example");
    for system in ["virtual_chatgpt_cot", "virtual_chatgpt_dfs"] {
        for f in json_files(&ex.join(format!("answer/{system}/G1_instruction"))) {
            // Either a trajectory or ToolBench's `valid_data: false`; never an error.
            toolbench::load_answer(&f).unwrap();
        }
        let preds = toolbench::load_converted(&ex.join(format!(
            "model_predictions_converted/{system}/G1_instruction.json"
        )))
        .unwrap();
        let judged = toolbench::load_pass_rate(&ex.join(format!(
            "pass_rate_results/{system}/G1_instruction_{system}.json"
        )))
        .unwrap();
        let table = toolbench::load_tsv(&ex.join(format!(
            "pass_rate_results/{system}/G1_instruction_{system}.csv"
        )))
        .unwrap();
        assert_eq!(preds.len(), 3);
        assert_eq!(judged.len(), 3);
        assert_eq!(table.len(), 3);
        assert!(table
            .iter()
            .all(|r| r.contains_key("is_solved") && r.contains_key("query_id")));
        for (id, p) in &preds {
            let j = &judged[id];
            assert_eq!(j.is_solved.len(), 3);
            assert_eq!(p.query.trim(), j.query.trim());
            let calls = p.tool_calls();
            assert!(
                calls.iter().all(|(name, _, _)| !name.is_empty()),
                "{system} {id}"
            );
            let finish: Value = serde_json::from_str(&p.answer.final_answer).unwrap_or(Value::Null);
            let rules = finish_verdict(&finish);
            if rules != "pass" {
                assert_ne!(j.majority(), "Solved", "{system} {id}: rules say {rules}");
            }
        }
    }
    let pref: Value = serde_json::from_str(
        &std::fs::read_to_string(ex.join(
            "preference_results/G1_instruction_virtual_chatgpt_cot_virtual_chatgpt_dfs.json",
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(pref.as_object().unwrap().len(), 3);
    let rows = toolbench::load_tsv(
        &ex.join("preference_results/G1_instruction_virtual_chatgpt_cot_virtual_chatgpt_dfs.csv"),
    )
    .unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|r| r.contains_key("preference_label")));
}

#[test]
fn answer_files_round_trip_through_toolbench_conversations_format() {
    use ablate::data::toolbench::{load_answers, load_conversations, Conversation};
    let tmp = tempfile::tempdir().unwrap();
    for dir in [
        "toolbench/ToolBench/data_example/answer",
        "toolbench/StableToolBench/data_example/answer",
    ] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data")
            .join(dir);
        let trajectories = load_answers(&src).unwrap();
        assert!(!trajectories.is_empty(), "{dir}");
        let convs: Vec<Conversation> = trajectories.iter().map(|t| t.to_conversation()).collect();
        // ToolBench's layout: system, user, then assistant / function turns.
        for c in &convs {
            let froms: Vec<&str> = c.conversations.iter().map(|t| t.from.as_str()).collect();
            assert_eq!(&froms[..2], ["system", "user"], "{}", c.id);
            assert!(froms[2..]
                .iter()
                .all(|f| *f == "assistant" || *f == "function"));
            assert!(c.conversations[2].value.contains("\nAction Input: "));
        }
        let file = tmp.path().join("conversations.json");
        std::fs::write(&file, serde_json::to_string(&convs).unwrap()).unwrap();
        let back = load_conversations(&file).unwrap();
        assert_eq!(back.len(), trajectories.len(), "{dir}");
        for (b, t) in back.iter().zip(&trajectories) {
            assert_eq!((&b.id, &b.group, &b.query), (&t.id, &t.group, &t.query));
            // The format has no outcome field: it is read from the last Finish call, and
            // must agree wherever the answer file records one.
            if !t.finish_type.is_empty() {
                assert_eq!(b.finish_type, t.finish_type, "{}", t.id);
            }
            assert!(b.functions == t.functions, "{}: functions differ", t.id);
            assert_eq!(b.steps.len(), t.steps.len(), "{}", t.id);
            for (k, (x, y)) in b.steps.iter().zip(&t.steps).enumerate() {
                assert_eq!(x, y, "{} step {k}", t.id);
            }
        }
        // As a data source it gives the same step-wise examples as the answer files.
        let spec = file.to_str().unwrap();
        let from_file = ablate::data::Source::parse(spec).load().unwrap().unwrap();
        let from_dir = ablate::data::Source::parse(src.to_str().unwrap())
            .load()
            .unwrap()
            .unwrap();
        assert_eq!(from_file, from_dir);
    }
    // A broken conversation names the file, the conversation and the turn.
    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"id": "G1-1", "conversations": [{"from": "system", "value": "no list"}]}]"#,
    )
    .unwrap();
    let e = load_conversations(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.json") && e.contains("conversation 0 (G1-1)") && e.contains("turn 0"),
        "{e}"
    );
}
