//! The BFCL checker port against BFCL's own verdicts (`../shared/data/bfcl-verdicts`) and
//! BFCL's possible answers turned into predictions.

use std::path::{Path, PathBuf};

use ablate::bfcl::{self, Answer, Call, Prediction, Question};
use ablate::config::Evaluator;
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
    // Java and JavaScript: the tools offered carry BFCL's language notes and every
    // parameter as a string; the model's literals are read back before the checks.
    for (cat, note) in [
        ("simple_java", "Java 8 SDK syntax"),
        ("simple_javascript", "JavaScript syntax"),
    ] {
        let ex = data_bfcl::load(&data().join(format!("bfcl/BFCL_v4_{cat}.json"))).unwrap();
        assert_eq!(ex.len(), questions(cat).len(), "{cat}");
        for e in &ex {
            assert_eq!(e.category, cat);
            assert!(
                e.tools.iter().all(|t| t.description.contains(note)),
                "{}",
                e.id
            );
            assert!(e.tools.iter().all(|t| t.parameters["properties"]
                .as_object()
                .unwrap()
                .values()
                .all(|p| p["type"] == "string"
                    && p["description"]
                        .as_str()
                        .unwrap()
                        .contains("in string representation"))));
        }
    }
    let java = data_bfcl::load(&data().join("bfcl/BFCL_v4_simple_java.json")).unwrap();
    let e = &java[22]; // ids: ArrayList<long> [101, 202, 303]
    assert_eq!(
        e.gold.arguments["ids"],
        "new ArrayList<>(Arrays.asList(101L, 202L, 303L))"
    );
    let args = serde_json::to_string(&e.gold.arguments).unwrap();
    let right = format!(
        "Thought: go.\nAction: {}\nAction Input: {args}",
        e.gold.name
    );
    assert_eq!(judge(Evaluator::Bfcl, &right, e).verdict, "pass");
    // A long written without its L stays the string "101", which the nested type check
    // of ArrayList<long> refuses.
    let ints = right.replace("101L", "101");
    assert_eq!(
        judge(Evaluator::Bfcl, &ints, e).verdict,
        "type_error:nested"
    );

    let ex = data_bfcl::load(&data().join("bfcl/BFCL_v4_simple_python.json")).unwrap();
    let e = &ex[0]; // calculate_triangle_area(base=10, height=5)
    let right = "Thought: area.\nAction: calculate_triangle_area\nAction Input: {\"base\": 10, \"height\": 5}";
    assert_eq!(judge(Evaluator::Bfcl, right, e).verdict, "pass");
    let float = right.replace("10,", "10.0,");
    assert_eq!(
        judge(Evaluator::Bfcl, &float, e).verdict,
        "type_error:simple"
    );
    assert_eq!(
        judge(Evaluator::Bfcl, "I cannot help.", e).verdict,
        "simple_function_checker:wrong_count"
    );
    let broken = "Action: calculate_triangle_area\nAction Input: {base: 10}";
    assert_eq!(
        judge(Evaluator::Bfcl, broken, e).verdict,
        "ast_decoder:decoder_failed"
    );
    // Two actions are two calls (parallel); Finish is not a call.
    let two = format!("{right}\nAction: calculate_triangle_area\nAction Input: {{\"base\": 1, \"height\": 2}}\nAction: Finish\nAction Input: {{}}");
    let calls = parse_calls(&two).unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].arguments["height"], 2);
    // Irrelevance: no call, or text that does not decode, passes; a call fails.
    let irr = data_bfcl::load(&data().join("bfcl/BFCL_v4_irrelevance.json")).unwrap();
    assert!(judge(Evaluator::Bfcl, "Thought: none of these fit.", &irr[0]).passed);
    assert!(judge(Evaluator::Bfcl, broken, &irr[0]).passed);
    assert!(!judge(Evaluator::Bfcl, right, &irr[0]).passed);
}

/// `tests/fixtures/bfcl`: BFCL's own checker (bfcl-eval 2026.3.23, through
/// `scripts/bfcl-reference.sh`) on predictions for every Java and JavaScript question.
fn fixture(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/bfcl/{name}"));
    bfcl::load_jsonl(&path).unwrap()
}

/// The kinds of prediction in a fixture, in file order (see the generator's docstring).
fn kinds(cat: &str) -> Vec<String> {
    let mut kinds: Vec<String> = Vec::new();
    for r in fixture(&format!("{cat}.jsonl")) {
        let k = r["kind"].as_str().unwrap();
        if kinds.last().map(String::as_str) != Some(k) {
            kinds.push(k.to_string());
        }
    }
    kinds
}

/// Our verdicts on one kind of prediction, beside BFCL's, in file order.
fn java_js_verdicts(cat: &str, kind: &str) -> Vec<(bfcl::Scored, Value)> {
    let rows: Vec<Value> = fixture(&format!("{cat}.jsonl"))
        .into_iter()
        .filter(|r| r["kind"] == kind)
        .collect();
    let preds: Vec<Prediction> = rows
        .iter()
        .map(|r| serde_json::from_value(r.clone()).unwrap())
        .collect();
    let score = bfcl::score(&questions(cat), &answers(cat), &preds).unwrap();
    assert_eq!(score.verdicts.len(), rows.len(), "{cat} {kind}");
    score.verdicts.into_iter().zip(rows).collect()
}

#[test]
fn java_and_javascript_verdicts_agree_with_bfcl_on_every_prediction() {
    let mut compared = 0;
    for cat in ["simple_java", "simple_javascript"] {
        let kinds = kinds(cat);
        assert_eq!(kinds.len(), 7, "{cat}: {kinds:?}");
        for kind in &kinds {
            let mut disagreements = Vec::new();
            for (ours, theirs) in java_js_verdicts(cat, kind) {
                assert_eq!(ours.id, theirs["id"].as_str().unwrap());
                let their_type = match theirs["error_type"].as_str().unwrap() {
                    t if t.starts_with("exception:") => "ast_checker:converter_raised",
                    t => t,
                };
                if ours.verdict.valid != theirs["valid"].as_bool().unwrap()
                    || ours.verdict.error_type != their_type
                {
                    disagreements.push(format!(
                        "{}: ours {} {:?} ({}) / BFCL {} {:?}: {}",
                        ours.id,
                        ours.verdict.valid,
                        ours.verdict.error_type,
                        ours.verdict.error,
                        theirs["valid"],
                        their_type,
                        theirs["error"]
                    ));
                }
                compared += 1;
            }
            assert!(
                disagreements.is_empty(),
                "{cat} {kind}: {} disagree:\n{}",
                disagreements.len(),
                disagreements.join("\n")
            );
        }
    }
    assert_eq!(compared, 150 * 7);
}

#[test]
fn java_and_javascript_possible_answers_pass_and_perturbations_fail_for_their_reason() {
    for (cat, lang_error) in [
        ("simple_java", "type_error:java"),
        ("simple_javascript", "type_error:js"),
    ] {
        // Every possible answer written as source literals passes, in both syntaxes,
        // except two Java questions that no output can pass under BFCL's rules: their
        // ArrayList<any> answers hold a number and booleans, and BFCL's converter reads
        // every element of an `any` list as a string ("42" is not 42).
        for kind in ["a_exact", "b_alt_syntax"] {
            let failed: Vec<(String, String)> = java_js_verdicts(cat, kind)
                .into_iter()
                .filter(|(v, _)| !v.verdict.valid)
                .map(|(v, _)| (v.id, v.verdict.error_type))
                .collect();
            let expected: Vec<(String, String)> = if cat == "simple_java" {
                ["simple_java_36", "simple_java_65"]
                    .iter()
                    .map(|id| (id.to_string(), "value_error:list/tuple".to_string()))
                    .collect()
            } else {
                vec![]
            };
            assert_eq!(failed, expected, "{cat} {kind}");
        }
        // The same from ablate's side: the gold call of each loaded example, its
        // arguments written as literals by the port's own writer.
        let examples =
            ablate::data::bfcl::load(&data().join(format!("bfcl/BFCL_v4_{cat}.json"))).unwrap();
        let gold: Vec<Prediction> = examples
            .iter()
            .map(|e| Prediction {
                id: e.id.clone(),
                calls: vec![Call {
                    name: e.gold.name.clone(),
                    arguments: e.gold.arguments.clone(),
                }],
            })
            .collect();
        assert!(gold.iter().all(|p| p.calls[0]
            .arguments
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_string)));
        let score = bfcl::score(&questions(cat), &answers(cat), &gold).unwrap();
        let failed: Vec<&str> = score
            .verdicts
            .iter()
            .filter(|v| !v.verdict.valid)
            .map(|v| v.id.as_str())
            .collect();
        let expected: &[&str] = if cat == "simple_java" {
            &["simple_java_36", "simple_java_65"]
        } else {
            &[]
        };
        assert_eq!(failed, expected, "{cat}: gold calls of the loaded examples");
        let all_fail_with = |kind: &str, ok: &dyn Fn(&str) -> bool| {
            for (v, _) in java_js_verdicts(cat, kind) {
                assert!(
                    !v.verdict.valid && ok(&v.verdict.error_type),
                    "{cat} {kind} {}: {:?}",
                    v.id,
                    v.verdict
                );
            }
        };
        // An argument given as a JSON value, not a source string.
        all_fail_with("c_untyped", &|t| t == lang_error);
        // A value not allowed: the string, list, dict or other-value rule says which.
        all_fail_with("d_wrong_value", &|t| t.starts_with("value_error:"));
        all_fail_with("e_wrong_name", &|t| {
            t == "simple_function_checker:wrong_func_name"
        });
        all_fail_with("f_missing", &|t| {
            t == "simple_function_checker:missing_required"
        });
    }
}

#[test]
fn java_and_javascript_literals_convert_as_bfcl_converts_them() {
    use ablate::bfcl::{Language, Raised};
    let rows = fixture("converters.jsonl");
    assert!(rows.len() > 90);
    for r in rows {
        let lang = match r["lang"].as_str().unwrap() {
            "java" => Language::Java,
            _ => Language::JavaScript,
        };
        let ours = lang.convert(
            r["value"].as_str().unwrap(),
            r["type"].as_str().unwrap(),
            r["nested"].as_str(),
        );
        match (&ours, r.get("result"), r.get("raised")) {
            // Value equality keeps 1 and 1.0 apart, as BFCL's type check does.
            (Ok(v), Some(expected), None) => assert_eq!(v, expected, "{r}"),
            (Err(Raised(why)), None, Some(raised)) => {
                let raised = raised.as_str().unwrap();
                let message = raised.split_once(": ").map_or(raised, |(_, m)| m);
                assert_eq!(why.replace('"', "'"), message.replace('"', "'"), "{r}");
            }
            _ => panic!("{r}: ours {ours:?}"),
        }
    }
}
