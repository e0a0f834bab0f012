//! BFCL question files as evaluation examples: the functions become the offered tools of
//! the shared chat template, the user turn the query, and the possible answers travel
//! with the example for the `bfcl` evaluator.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{BfclTruth, DataError, Example, GoldCall, ToolSpec};
use crate::eval::bfcl::{category_of, load_jsonl, Answer, BfclError, Question};

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

fn example(q: Question, ground_truth: Vec<Map<String, Value>>) -> Example {
    let tools = q.function.iter().map(ToolSpec::from_json).collect();
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
    let gold = ground_truth
        .first()
        .and_then(|g| g.iter().next())
        .map(|(name, params)| GoldCall {
            name: name.clone(),
            arguments: Value::Object(
                params
                    .as_object()
                    .map(|p| {
                        p.iter()
                            .filter_map(|(k, allowed)| {
                                let list = allowed.as_array()?;
                                (!list.iter().any(|v| v == ""))
                                    .then(|| list.first().cloned())
                                    .flatten()
                                    .map(|v| (k.clone(), v))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
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
    }
}
