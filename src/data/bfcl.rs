//! BFCL question files as evaluation examples: the functions become the offered tools of
//! the shared chat template, the user turn the query, and the possible answers travel
//! with the example for the `bfcl` evaluator.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{BfclTruth, DataError, Example, GoldCall, ToolSpec};
use crate::bfcl::python::json_dumps;
use crate::bfcl::{
    as_literals, category_of, find_description, load_jsonl, Answer, BfclError, Language, Question,
};

/// Keeps the file (and line) in front, where `DataError` prints its path.
fn file_err(e: BfclError) -> DataError {
    match e {
        BfclError::Io { path, message } => DataError::File { path, message },
        BfclError::Line {
            path,
            line,
            message,
        } => DataError::File {
            path: format!("{path}:{line}"),
            message,
        },
        BfclError::Unsupported(message) => DataError::File {
            path: "BFCL".into(),
            message,
        },
    }
}

/// BFCL keeps the possible answers of `X/BFCL_v4_c.json` in `X/possible_answer/BFCL_v4_c.json`.
pub fn answers_path(questions: &Path) -> PathBuf {
    let name = questions.file_name().unwrap_or_default();
    questions
        .parent()
        .unwrap_or(Path::new("."))
        .join("possible_answer")
        .join(name)
}

/// Loads a BFCL question file (and its possible answers, paired by line as BFCL pairs
/// them) as examples.
pub fn load(questions: &Path) -> Result<Vec<Example>, DataError> {
    let qs: Vec<Question> = load_jsonl(questions).map_err(file_err)?;
    let irrelevance = qs
        .iter()
        .all(|q| category_of(&q.id).contains("irrelevance"));
    let answers: Vec<Answer> = if irrelevance {
        vec![]
    } else {
        load_jsonl(&answers_path(questions)).map_err(file_err)?
    };
    if !irrelevance && answers.len() != qs.len() {
        return Err(DataError::File {
            path: answers_path(questions).display().to_string(),
            message: format!("{} answers for {} questions", answers.len(), qs.len()),
        });
    }
    Ok(qs
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let ground_truth = answers
                .get(i)
                .map(|a| a.ground_truth.clone())
                .unwrap_or_default();
            example(q, ground_truth)
        })
        .collect())
}

/// A possible answer made concrete: each parameter (and each key of a dict parameter)
/// takes its first allowed value; optional ones (`""` allowed) are left out.
fn concrete(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter_map(|(k, allowed)| {
                    let list = allowed.as_array()?;
                    if list.iter().any(|v| v == "") {
                        return None;
                    }
                    list.first().map(|first| (k.clone(), concrete(first)))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(concrete).collect()),
        other => other.clone(),
    }
}

/// BFCL's `_func_doc_language_specific_pre_processing`, applied to the documents a
/// model is shown (the checker keeps the originals): a language note on each function,
/// and in Java and JavaScript every parameter becomes a `string` whose description names
/// the real type, since the model writes each argument as a source literal.
pub fn prompt_function(doc: &Value, lang: Language) -> Value {
    let mut doc = doc.clone();
    let hint = match lang {
        Language::Java => " Note that the provided function is in Java 8 SDK syntax.",
        Language::JavaScript => " Note that the provided function is in JavaScript syntax.",
        Language::Python => " Note that the provided function is in Python 3 syntax.",
    };
    let description = format!("{}{hint}", doc["description"].as_str().unwrap_or_default());
    doc["description"] = Value::String(description);
    let name = match lang {
        Language::Java => "Java",
        Language::JavaScript => "JavaScript",
        Language::Python => return doc,
    };
    if let Some(props) = doc["parameters"]["properties"].as_object_mut() {
        for p in props.values_mut() {
            let Some(p) = p.as_object_mut() else { continue };
            let ty = p
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut d = p
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if ty == "any" {
                d += &format!(
                    " This parameter can be of any type of {name} object in string representation."
                );
            } else {
                d += &format!(" This is {name} {ty} type parameter in string representation.");
            }
            let listy = match lang {
                Language::Java => ty == "ArrayList" || ty == "Array",
                _ => ty == "array",
            };
            if listy {
                let items = p
                    .get("items")
                    .map(|i| i["type"].as_str().unwrap_or_default().to_string());
                d += &format!(
                    " The list elements are of type {}; they are not in string representation.",
                    items.unwrap_or_default()
                );
                p.remove("items");
            }
            if lang == Language::JavaScript && ty == "dict" {
                if let Some(schema) = p.remove("properties") {
                    d += &format!(
                        " The dictionary entries have the following schema; they are not in string representation. {}",
                        json_dumps(&schema)
                    );
                }
            }
            p.insert("description".into(), Value::String(d));
            p.insert("type".into(), Value::String("string".into()));
        }
    }
    doc
}

fn example(q: Question, ground_truth: Vec<Map<String, Value>>) -> Example {
    let lang = Language::of(category_of(&q.id));
    let tools = q
        .function
        .iter()
        .map(|f| ToolSpec::from_json(&prompt_function(f, lang)))
        .collect();
    // The user messages of the (single) turn.
    let query = q.question[0]
        .as_array()
        .map(|turn| {
            turn.iter()
                .filter(|m| m["role"] == "user")
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    // Java and JavaScript arguments are written as source literals, as the model must.
    let literal = |name: &str, args: Value| match find_description(&q.function, name) {
        Some(doc) => as_literals(lang, doc, &args),
        None => args,
    };
    let gold = ground_truth
        .first()
        .and_then(|g| g.iter().next())
        .map(|(name, params)| GoldCall {
            name: name.clone(),
            arguments: literal(name, concrete(params)),
        })
        .unwrap_or(GoldCall {
            name: String::new(),
            arguments: Value::Object(Map::new()),
        });
    Example {
        category: category_of(&q.id).to_string(),
        id: q.id,
        tools,
        query,
        thought: String::new(),
        gold,
        bfcl: Some(BfclTruth {
            functions: q.function,
            ground_truth,
        }),
        history: vec![],
        raw: None,
    }
}
