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
