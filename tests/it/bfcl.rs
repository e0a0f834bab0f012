//! The BFCL checker port against BFCL's own verdicts (`../shared/data/bfcl-verdicts`) and
//! BFCL's possible answers turned into predictions.

use std::path::{Path, PathBuf};

use ablate::eval::bfcl::{self, Answer, Call, Prediction, Question};
use serde_json::Value;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

fn questions(category: &str) -> Vec<Question> {
    bfcl::load_jsonl(&data().join(format!("bfcl/BFCL_v4_{category}.json"))).unwrap()
}

fn answers(category: &str) -> Vec<Answer> {
    if category == "irrelevance" {
        return vec![];
    }
    bfcl::load_jsonl(&data().join(format!("bfcl/possible_answer/BFCL_v4_{category}.json"))).unwrap()
}

const CATEGORIES: &[&str] = &[
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
];

#[test]
fn verdicts_agree_with_bfcl_on_every_example() {
    let mut total = 0;
    for cat in CATEGORIES {
        let dir = data().join("bfcl-verdicts");
        let preds: Vec<Prediction> =
            bfcl::load_jsonl(&dir.join(format!("{cat}.predictions.jsonl"))).unwrap();
        let reference: Vec<Value> =
            bfcl::load_jsonl(&dir.join(format!("{cat}.verdicts.jsonl"))).unwrap();
        let score = bfcl::score(&questions(cat), &answers(cat), &preds).unwrap();
        assert_eq!(score.verdicts.len(), reference.len(), "{cat}");
        let mut disagreements = Vec::new();
        for (ours, theirs) in score.verdicts.iter().zip(&reference) {
            assert_eq!(ours.id, theirs["id"].as_str().unwrap());
            let same_type = cat == &"irrelevance"
                || ours.verdict.error_type == theirs["error_type"].as_str().unwrap();
            if ours.verdict.valid != theirs["valid"].as_bool().unwrap() || !same_type {
                disagreements.push(format!(
                    "{} [{}]: ours {} {:?} / BFCL {} {:?}: {}",
                    ours.id,
                    theirs["kind"],
                    ours.verdict.valid,
                    ours.verdict.error_type,
                    theirs["valid"],
                    theirs["error_type"],
                    theirs["error"]
                ));
            }
        }
        assert!(
            disagreements.is_empty(),
            "{cat}: {} of {} disagree:\n{}",
            disagreements.len(),
            reference.len(),
            disagreements.join("\n")
        );
        let bfcl_passed = reference.iter().filter(|v| v["valid"] == true).count();
        assert_eq!(score.passed, bfcl_passed, "{cat}: BFCL's correct count");
        total += reference.len();
    }
    assert_eq!(total, 1240);
}

/// One allowed value made concrete: dicts (whose keys hold lists of allowed values) take
/// each key's first value, leaving optional keys out.
fn concrete(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter_map(|(k, allowed)| first_value(allowed).map(|x| (k.clone(), x)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(concrete).collect()),
        other => other.clone(),
    }
}

/// The first allowed value that is not the `""` marker, if the value is required.
fn first_value(allowed: &Value) -> Option<Value> {
    let list = allowed.as_array()?;
    if list.iter().any(|v| v == "") {
        return None;
    }
    list.first().map(concrete)
}

/// BFCL's possible answer as a prediction: every parameter with its first allowed value;
/// optional ones (`""` allowed) left out unless the schema requires them.
fn from_answer(a: &Answer, q: &Question) -> Prediction {
    let calls = a
        .ground_truth
        .iter()
        .map(|g| {
            let (name, params) = g.iter().next().unwrap();
            let doc = q
                .function
                .iter()
                .find(|d| d["name"] == name.as_str())
                .unwrap();
            let required = |k: &str| {
                doc["parameters"]["required"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x == k))
            };
            let args: serde_json::Map<String, Value> = params
                .as_object()
                .unwrap()
                .iter()
                .filter_map(|(k, allowed)| {
                    let v = first_value(allowed).or_else(|| {
                        let list = allowed.as_array()?;
                        required(k)
                            .then(|| list.iter().find(|v| *v != "").map(concrete))
                            .flatten()
                    })?;
                    Some((k.clone(), v))
                })
                .collect();
            Call {
                name: name.clone(),
                arguments: Value::Object(args),
            }
        })
        .collect();
    Prediction {
        id: a.id.clone(),
        calls,
    }
}

#[test]
fn possible_answers_score_full_marks_and_perturbations_fail_for_their_reason() {
    for cat in &CATEGORIES[..4] {
        let (qs, ans) = (questions(cat), answers(cat));
        let preds: Vec<Prediction> = ans
            .iter()
            .zip(&qs)
            .map(|(a, q)| from_answer(a, q))
            .collect();
        let score = bfcl::score(&qs, &ans, &preds).unwrap();
        let failed: Vec<_> = score.verdicts.iter().filter(|v| !v.verdict.valid).collect();
        assert!(failed.is_empty(), "{cat}: {failed:#?}");
        assert_eq!(score.accuracy, 1.0);

        // Perturb the first call of each prediction, one rule at a time.
        let perturbed = |f: &dyn Fn(&mut Prediction, &Question)| -> Vec<String> {
            let preds: Vec<Prediction> = preds
                .iter()
                .zip(&qs)
                .map(|(p, q)| {
                    let mut p = p.clone();
                    f(&mut p, q);
                    p
                })
                .collect();
            let s = bfcl::score(&qs, &ans, &preds).unwrap();
            s.verdicts
                .iter()
                .map(|v| v.verdict.error_type.clone())
                .collect()
        };
        let inner = |simple: &str| -> String {
            if cat.contains("parallel") {
                "parallel_function_checker_no_order:cannot_find_match".into()
            } else {
                simple.into()
            }
        };
        // Wrong function name.
        let types = perturbed(&|p, _| p.calls[0].name.push_str("_v2"));
        assert!(
            types
                .iter()
                .all(|t| *t == inner("simple_function_checker:wrong_func_name")),
            "{cat}: {types:?}"
        );
        // An extra call.
        let types = perturbed(&|p, _| p.calls.push(p.calls[0].clone()));
        let count = match *cat {
            "simple_python" => "simple_function_checker:wrong_count",
            "multiple" => "multiple_function_checker:wrong_count",
            _ => "parallel_function_checker_no_order:wrong_count",
        };
        assert!(types.iter().all(|t| t == count), "{cat}: {types:?}");
        // A missing required parameter (where the schema has one).
        let types = perturbed(&|p, q| {
            let doc = q
                .function
                .iter()
                .find(|d| d["name"] == p.calls[0].name.as_str())
                .unwrap();
            if let Some(r) = doc["parameters"]["required"]
                .as_array()
                .and_then(|r| r.first())
            {
                p.calls[0]
                    .arguments
                    .as_object_mut()
                    .unwrap()
                    .remove(r.as_str().unwrap());
            }
        });
        let missing = types
            .iter()
            .filter(|t| **t == inner("simple_function_checker:missing_required"))
            .count();
        assert!(
            missing * 10 >= types.len() * 8,
            "{cat}: only {missing} of {}",
            types.len()
        );
        // A parameter of the wrong type: every first argument as an object.
        let types = perturbed(&|p, _| {
            if let Some((_, v)) = p.calls[0]
                .arguments
                .as_object_mut()
                .unwrap()
                .iter_mut()
                .next()
            {
                *v = serde_json::json!({"not": "a value"});
            }
        });
        let typed = types
            .iter()
            .filter(|t| **t == inner("type_error:simple"))
            .count();
        assert!(
            typed * 10 >= types.len() * 7,
            "{cat}: only {typed} of {}",
            types.len()
        );
    }
    // Irrelevance: no call passes, any call fails.
    let qs = questions("irrelevance");
    let none: Vec<Prediction> = qs
        .iter()
        .map(|q| Prediction {
            id: q.id.clone(),
            calls: vec![],
        })
        .collect();
    assert_eq!(bfcl::score(&qs, &[], &none).unwrap().accuracy, 1.0);
    let some: Vec<Prediction> = qs
        .iter()
        .map(|q| Prediction {
            id: q.id.clone(),
            calls: vec![Call {
                name: "anything".into(),
                arguments: serde_json::json!({}),
            }],
        })
        .collect();
    assert_eq!(bfcl::score(&qs, &[], &some).unwrap().passed, 0);
    // A missing prediction is a failure.
    assert_eq!(
        bfcl::score(&qs, &[], &none[1..]).unwrap().passed,
        qs.len() - 1
    );
}

#[test]
fn bfcl_files_load_as_examples_and_model_text_is_judged_as_bfcl_would() {
    use ablate::data::bfcl as data_bfcl;
    use ablate::eval::{judge, parse_calls};
    for cat in CATEGORIES {
        let ex = data_bfcl::load(&data().join(format!("bfcl/BFCL_v4_{cat}.json"))).unwrap();
        assert_eq!(ex.len(), questions(cat).len(), "{cat}");
        for e in &ex {
            assert_eq!(e.category, *cat);
            assert!(!e.query.is_empty() && !e.tools.is_empty(), "{}", e.id);
            let prompt = ablate::data::render_prompt(e);
            assert!(e.tools.iter().all(|t| prompt.contains(&t.name)));
        }
    }
    let ex = data_bfcl::load(&data().join("bfcl/BFCL_v4_simple_python.json")).unwrap();
    let e = &ex[0]; // calculate_triangle_area(base=10, height=5)
    let right = "Thought: area.\nAction: calculate_triangle_area\nAction Input: {\"base\": 10, \"height\": 5}";
    assert_eq!(judge("bfcl", right, e).verdict, "pass");
    let float = right.replace("10,", "10.0,");
    assert_eq!(judge("bfcl", &float, e).verdict, "type_error:simple");
    assert_eq!(
        judge("bfcl", "I cannot help.", e).verdict,
        "simple_function_checker:wrong_count"
    );
    let broken = "Action: calculate_triangle_area\nAction Input: {base: 10}";
    assert_eq!(
        judge("bfcl", broken, e).verdict,
        "ast_decoder:decoder_failed"
    );
    // Two actions are two calls (parallel); Finish is not a call.
    let two = format!("{right}\nAction: calculate_triangle_area\nAction Input: {{\"base\": 1, \"height\": 2}}\nAction: Finish\nAction Input: {{}}");
    let calls = parse_calls(&two).unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].arguments["height"], 2);
    // Irrelevance: no call, or text that does not decode, passes; a call fails.
    let irr = data_bfcl::load(&data().join("bfcl/BFCL_v4_irrelevance.json")).unwrap();
    assert!(judge("bfcl", "Thought: none of these fit.", &irr[0]).passed);
    assert!(judge("bfcl", broken, &irr[0]).passed);
    assert!(!judge("bfcl", right, &irr[0]).passed);
}
