//! ToolBench loaders on every file of `../shared/data/toolbench`.

use crate::WithoutAblateEnv;
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

/// The recorded trajectory played back as the model's turns through the `recorded`
/// backend: every call of an offered function gets its recorded observation, and the
/// episode ends as the trajectory did.
#[test]
fn replaying_a_gold_trajectory_gets_its_recorded_observations() {
    use ablate::toolenv::backend::Recorded;
    use ablate::toolenv::{Env, Outcome, Task};
    let answers = toolbench::load_answers(&root().join("ToolBench/data_example/answer")).unwrap();
    assert_eq!(answers.len(), 11);
    let mut unoffered = 0;
    for t in &answers {
        let task = Task::from_trajectory(t.clone());
        let mut env = Env::new(&task, vec![Box::new(Recorded::new(t))]);
        let mut end = None;
        for s in &t.steps {
            match env.step(&s.action, &s.action_input) {
                Outcome::Observation { text, .. } => {
                    if t.functions.iter().any(|f| f.name == s.action) {
                        assert_eq!(
                            Some(&text),
                            s.observation.as_ref(),
                            "{}: {}",
                            t.id,
                            s.action
                        );
                    } else if t.functions.iter().any(|f| f.name.ends_with(&s.action)) {
                        // ToolBench's own paths are not all clean: G3-21 calls
                        // `dota_2_steam_web`, which is not offered, but ToolBench matches a
                        // name by its end, so it goes to `..._for_dota_2_steam_web`, whose
                        // recording has no such call.
                        unoffered += 1;
                        assert!(text.contains("no recorded response"), "{text}");
                    } else {
                        assert_eq!(
                            text,
                            format!(
                                r#"{{"error": "No such function name: {}", "response": ""}}"#,
                                s.action
                            )
                        );
                    }
                }
                Outcome::Answered(a) => {
                    end = Some(if a.trim().is_empty() {
                        "empty"
                    } else {
                        "give_answer"
                    });
                    break;
                }
                Outcome::GaveUp => {
                    end = Some("give_up");
                    break;
                }
                Outcome::BackendError(e) => panic!("{}: {e}", t.id),
            }
        }
        assert_eq!(end, Some(t.finish_type.as_str()), "{}", t.id);
    }
    assert!(unoffered > 0);
    // A call nobody recorded gets an error observation, and the episode goes on.
    let t = &answers[0];
    let task = Task::from_trajectory(t.clone());
    let mut env = Env::new(&task, vec![Box::new(Recorded::new(t))]);
    let Outcome::Observation { text, .. } = env.step(&t.steps[0].action, r#"{"unrecorded": 1}"#)
    else {
        panic!("an observation")
    };
    let v: Value = serde_json::from_str(&text).unwrap();
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
    use ablate::toolenv::{Env, Outcome, Task};
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
            // ToolBench's reading of the Finish call: an answer, or why not.
            let task = Task::from_trajectory(toolbench::Trajectory {
                id: id.clone(),
                group: "G1_instruction".into(),
                query: p.query.clone(),
                functions: vec![],
                steps: vec![],
                finish_type: String::new(),
            });
            let rules = match Env::new(&task, vec![]).step("Finish", &p.answer.final_answer) {
                Outcome::Answered(a) if !a.trim().is_empty() => "pass",
                other => {
                    if let Outcome::Observation { text, .. } = &other {
                        assert!(text.contains("error"), "{text}");
                    }
                    "no answer"
                }
            };
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

/// `ablate data convert` against ToolBench's own preprocessing: the shared toolllama sample
/// is `preprocess_toolllama_data.py` run on the shared G1 / G2 / G3 answer files. Every
/// entry, id and turn must come out the same, the API list byte for byte; the system turn
/// may differ only by the one output-format line ToolBench inserts (prose ablate does not
/// carry), found here as the single insertion that turns ablate's text into ToolBench's.
#[test]
fn data_convert_writes_what_toolbenchs_preprocessing_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ours: Vec<Value> = Vec::new();
    for g in ["G1", "G2", "G3"] {
        let out = tmp.path().join(format!("{g}.json"));
        let dir = root().join(format!("ToolBench/data_example/answer/{g}_answer"));
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_ablate"))
            .without_ablate_env()
            .args([
                "data",
                "convert",
                dir.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        ours.extend(v.as_array().unwrap().iter().cloned());
    }
    let theirs: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(toolllama_sample()).unwrap()).unwrap();
    assert_eq!(ours.len(), theirs.len());
    let by_id = |v: &[Value]| -> std::collections::BTreeMap<String, Value> {
        v.iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap().to_string(),
                    e["conversations"].clone(),
                )
            })
            .collect()
    };
    let (ours, theirs) = (by_id(&ours), by_id(&theirs));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    const MARKER: &str = "Specifically, you have access to the following APIs: ";
    let mut insertions = std::collections::BTreeSet::new();
    for (id, a) in &ours {
        let b = &theirs[id];
        let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
        assert_eq!(a[1..], b[1..], "{id}: turns after the system turn");
        let (ha, la) = a[0]["value"].as_str().unwrap().split_once(MARKER).unwrap();
        let (hb, lb) = b[0]["value"].as_str().unwrap().split_once(MARKER).unwrap();
        assert_eq!(la, lb, "{id}: the API list");
        let p = ha
            .bytes()
            .zip(hb.bytes())
            .take_while(|(x, y)| x == y)
            .count();
        let q = ha[p..]
            .bytes()
            .rev()
            .zip(hb[p..].bytes().rev())
            .take_while(|(x, y)| x == y)
            .count();
        assert_eq!(
            p + q,
            ha.len(),
            "{id}: the system turns differ by more than one insertion"
        );
        insertions.insert(hb[p..hb.len() - q].to_string());
    }
    // One and the same line, for every entry.
    assert_eq!(insertions.len(), 1, "{insertions:?}");
    let line = insertions.into_iter().next().unwrap();
    assert!(
        line.len() < 100 && line.contains("Action Input:"),
        "{line:?}"
    );
}

/// ToolBench's own preprocessing output (`toolllama_G123_dfs_sample.json`, 41 entries).
fn toolllama_sample() -> PathBuf {
    root().join("ToolBench/toolllama/toolllama_G123_dfs_sample.json")
}

#[test]
fn the_toolllama_sample_parses_exactly() {
    use ablate::data::{pyliteral, Template};
    let file = toolllama_sample();
    let entries: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let entries = entries.as_array().unwrap();
    let examples = ablate::data::Source::parse(file.to_str().unwrap())
        .load()
        .unwrap()
        .unwrap();
    assert_eq!(examples.len(), 41);
    assert_eq!(entries.len(), 41);
    for (entry, e) in entries.iter().zip(&examples) {
        let id = entry["id"].as_str().unwrap();
        let turns = entry["conversations"].as_array().unwrap();
        let value = |t: &Value| t["value"].as_str().unwrap().to_string();
        // The target is the file's last assistant turn, byte for byte, and the template
        // gives it back unchanged.
        let target = value(turns.last().unwrap());
        assert_eq!(Template::Toolllama.completion(e).unwrap(), target, "{id}");
        assert!(
            target.contains(&format!("\nAction: {}\n", e.gold.name)),
            "{id}"
        );
        // The query is the id's; the user turn wraps it.
        assert_eq!(
            id,
            format!("{}: {}", id.split(": ").next().unwrap(), e.query)
        );
        assert!(value(&turns[1]).contains(&e.query), "{id}");
        // Every tool recovered: the parsed list written back is the file's text exactly.
        let system = value(&turns[0]);
        let list = system
            .split_once("Specifically, you have access to the following APIs: ")
            .unwrap()
            .1;
        let parsed = pyliteral::parse(list).unwrap();
        assert_eq!(
            parsed.repr(),
            list,
            "{id}: the API list does not round-trip"
        );
        let names: Vec<String> = parsed
            .to_json()
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect();
        let got: Vec<String> = e.tools.iter().map(|t| t.name.clone()).collect();
        assert_eq!(got, names, "{id}");
        assert_eq!(got.last().map(String::as_str), Some("Finish"), "{id}");
        assert!(
            e.tools.iter().all(|t| t.parameters["type"] == "object"),
            "{id}"
        );
        // The toolllama prompt holds every earlier turn as the file has it.
        let prompt = Template::Toolllama.prompt(e).unwrap();
        for t in &turns[..turns.len() - 1] {
            assert!(
                prompt.contains(&value(t)),
                "{id}: a turn is missing from the prompt"
            );
        }
        assert!(prompt.starts_with("System: You are AutoGPT") && prompt.ends_with("\nAssistant: "));
        let calls = turns[2..turns.len() - 1]
            .iter()
            .filter(|t| t["from"] == "assistant")
            .count();
        assert_eq!(e.history.len(), calls, "{id}");
    }
}

/// Trains the tiny preset on the toolllama sample with both templates, fitting its long
/// examples with `keep_end`, and evaluates a few of them.
#[test]
fn the_toolllama_sample_trains_and_evaluates_with_both_templates() {
    // The sample split by query: the last two queries' entries are the test set, so no
    // training example shares a query with it.
    let entries: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(toolllama_sample()).unwrap()).unwrap();
    let query = |e: &Value| {
        e["id"]
            .as_str()
            .unwrap()
            .split_once(": ")
            .unwrap()
            .1
            .to_string()
    };
    let mut queries: Vec<String> = entries.iter().map(query).collect();
    queries.dedup();
    let tested = &queries[queries.len() - 2..];
    let (test, train): (Vec<&Value>, Vec<&Value>) =
        entries.iter().partition(|e| tested.contains(&query(e)));
    let tmp = tempfile::tempdir().unwrap();
    let (train_file, test_file) = (tmp.path().join("train.json"), tmp.path().join("test.json"));
    std::fs::write(&train_file, serde_json::to_string(&train).unwrap()).unwrap();
    std::fs::write(&test_file, serde_json::to_string(&test).unwrap()).unwrap();
    let n_train = train.len() as f64;
    assert!(n_train > 30.0 && test.len() >= 4);
    let sweep = format!(
        r#"
[experiment]
name = "toolllama"
[model]
name = "tiny"
[data]
train = {train_file:?}
eval = {test_file:?}
vocab_size = 2000
max_seq_len = 1024
truncation = "keep_end"
[train]
lr = 3e-3
batch_size = 8
[eval]
max_new_tokens = 8
limit = 4
batch_size = 4
[grid]
"data.template" = ["compact", "toolllama"]
"#
    );
    let (dir, _) = crate::cli::setup(&sweep);
    let d = dir.path();
    let out = crate::cli::ablate(d, &["plan", "experiments/micro.toml", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Before anything runs, the plan says how the data meets max_seq_len.
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let planned = |template: &str| -> Value {
        plan[0]["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["config"]["data"]["template"] == template)
            .unwrap()["data"]
            .clone()
    };
    assert!(!d.join("results").exists(), "plan writes nothing");
    let out = crate::cli::ablate(d, &["run", "experiments/micro.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = rusqlite::Connection::open(d.join("results/ablate.db")).unwrap();
    let metric = |template: &str, name: &str| -> f64 {
        db.query_row(
            "SELECT m.value FROM metrics m JOIN runs r ON r.id = m.run_id
             WHERE json_extract(r.config_json, '$.data.template') = ?1
               AND m.name = ?2 AND m.split = 'train'",
            [template, name],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("{template} {name}: {e}"))
    };
    for t in ["compact", "toolllama"] {
        let verdicts: i64 = db
            .query_row(
                "SELECT count(*) FROM eval_results v JOIN runs r ON r.id = v.run_id
                 WHERE json_extract(r.config_json, '$.data.template') = ?1 AND r.status = 'done'",
                [t],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(verdicts, 4, "{t}: verdicts of the evaluated examples");
        assert_eq!(metric(t, "examples"), n_train, "{t}");
        assert_eq!(metric(t, "examples_left_out"), 0.0, "{t}");
    }
    // ToolBench's own prompts (its system prompt and API documentation) run to thousands
    // of tokens, so at 1,024 some examples lose earlier steps and some cannot fit at all;
    // the compact template's are far shorter.
    let cut = |t: &str| metric(t, "examples_truncated") + metric(t, "examples_dropped");
    eprintln!(
        "compact: {} truncated, {} dropped, max {}; toolllama: {} truncated, {} dropped, max {}",
        metric("compact", "examples_truncated"),
        metric("compact", "examples_dropped"),
        metric("compact", "seq_len_max"),
        metric("toolllama", "examples_truncated"),
        metric("toolllama", "examples_dropped"),
        metric("toolllama", "seq_len_max"),
    );
    assert!(metric("toolllama", "seq_len_max") > 2.0 * metric("compact", "seq_len_max"));
    assert!(cut("toolllama") > cut("compact"));
    assert!(metric("toolllama", "examples_dropped") > 0.0);
    assert!(
        metric("toolllama", "examples_truncated") > 0.0,
        "keep_end fitted none"
    );
    assert!(metric("toolllama", "examples_dropped") < n_train);
    // The plan's figures are the runs'.
    for t in ["compact", "toolllama"] {
        let p = planned(t);
        assert_eq!(p["train"].as_f64().unwrap(), n_train, "{t}");
        for (key, name) in [
            ("truncated", "examples_truncated"),
            ("dropped", "examples_dropped"),
        ] {
            assert_eq!(p[key].as_f64().unwrap(), metric(t, name), "{t} {key}");
        }
        for (key, name) in [
            ("median", "seq_len_median"),
            ("p95", "seq_len_p95"),
            ("max", "seq_len_max"),
        ] {
            assert_eq!(
                p["tokens"][key].as_f64().unwrap(),
                metric(t, name),
                "{t} {key}"
            );
        }
    }
    let report = std::fs::read_to_string(d.join("results/reports/toolllama.md")).unwrap();
    assert!(report.contains("## Training data"), "{report}");
    let dropped = metric("toolllama", "examples_dropped") as i64;
    let row = report
        .lines()
        .find(|l| l.contains(&format!("| toolllama | {n_train} | 0 |")))
        .unwrap_or_else(|| panic!("no training-data row for toolllama:\n{report}"));
    assert!(row.contains(&format!("| {dropped} |")), "{row}");
}

/// `data.eval` may name a `test_instruction/<group>.json` file, that folder, or the folder
/// above it: each reads as a query set, in the order of `test_query_ids/`, and so does
/// every other shape of ToolBench file keep its own reading.
#[test]
fn the_six_test_groups_load_as_query_sets_in_their_id_files_order() {
    use ablate::data::Source;
    let stable = root().join("StableToolBench/solvable_queries");
    let all = toolbench::load_query_set(&stable).unwrap();
    assert_eq!(all.len(), 765);
    let mut counts = std::collections::BTreeMap::new();
    for (g, _) in &all {
        *counts.entry(g.as_str()).or_insert(0) += 1;
    }
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [
            ("G1_category", 153),
            ("G1_instruction", 163),
            ("G1_tool", 158),
            ("G2_category", 124),
            ("G2_instruction", 106),
            ("G3_instruction", 61)
        ]
    );
    let file = stable.join("test_instruction/G1_instruction.json");
    let one = toolbench::load_query_set(&file).unwrap();
    let ids: Vec<String> = one.iter().map(|(_, q)| toolbench::query_id(q)).collect();
    let id_file =
        toolbench::load_query_ids(&stable.join("test_query_ids/G1_instruction.json")).unwrap();
    assert_eq!(ids, id_file);
    for p in [stable.clone(), stable.join("test_instruction"), file] {
        assert!(
            matches!(Source::parse(p.to_str().unwrap()), Source::Queries(_)),
            "{p:?}"
        );
    }
    let sft = root().join("ToolBench/toolllama/toolllama_G123_dfs_sample.json");
    assert!(matches!(
        Source::parse(sft.to_str().unwrap()),
        Source::Conversations(_)
    ));
    let answers = root().join("ToolBench/data_example/answer");
    assert!(matches!(
        Source::parse(answers.to_str().unwrap()),
        Source::ToolBench(_)
    ));
}

/// The functions ablate offers for a test query are the ones ToolBench offered when
/// StableToolBench's example answers were made: every function of the converted answers'
/// `available_tools` (ToolBench's output), name, description and parameters, comes out
/// of the query's `api_list` the same; only Finish's description is ablate's own words.
#[test]
fn functions_are_built_from_the_api_list_as_toolbench_built_them() {
    use ablate::toolenv::Task;
    let stable = root().join("StableToolBench");
    let queries = toolbench::load_query_set(
        &stable.join("solvable_queries/test_instruction/G1_instruction.json"),
    )
    .unwrap();
    let mut compared = 0;
    for system in ["virtual_chatgpt_cot", "virtual_chatgpt_dfs"] {
        let preds = toolbench::load_converted(&stable.join(format!(
            "data_example/model_predictions_converted/{system}/G1_instruction.json"
        )))
        .unwrap();
        for (id, p) in &preds {
            let (group, q) = queries
                .iter()
                .find(|(_, q)| &toolbench::query_id(q) == id)
                .unwrap();
            let task = Task::from_query(q, group);
            assert_eq!(task.functions.len(), p.available_tools.len(), "{id}");
            for (ours, theirs) in task.functions.iter().zip(&p.available_tools) {
                assert_eq!(ours.name, theirs["name"], "{id}");
                if ours.name != "Finish" {
                    assert_eq!(ours.parameters, theirs["parameters"], "{id} {}", ours.name);
                    assert_eq!(ours.description, theirs["description"], "{id}");
                    compared += 1;
                } else {
                    // Finish: the same arguments, each described in ablate's words.
                    let shape = |v: &Value| {
                        let mut v = v.clone();
                        for p in v["properties"].as_object_mut().unwrap().values_mut() {
                            p.as_object_mut().unwrap().remove("description");
                        }
                        v
                    };
                    assert_eq!(shape(&ours.parameters), shape(&theirs["parameters"]));
                }
            }
        }
    }
    assert!(compared >= 6, "{compared}");
}
