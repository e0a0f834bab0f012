//! ToolBench's released SFT files (`toolllama_G123_dfs_train.json`, `_eval.json`), read as
//! ToolBench's preprocessing writes them: a JSON list of `{"id": "Step N: <query>",
//! "conversations": [{"from", "value"}]}`, one entry per assistant step. The system turn
//! ends with the API list as Python's `str()` of a list of dicts; the last assistant turn is
//! the training target, kept byte for byte (its `Action Input` is the model's own string).

use std::path::Path;

use serde_json::Value;

use super::pyliteral::Py;
use super::toolbench::{parse_assistant, Conversation, ConversationTurn, APIS_MARKER};
use super::{pyliteral, DataError, Example, GoldCall, RawConversation, ToolSpec, Turn};

#[derive(serde::Deserialize)]
struct Entry {
    id: String,
    conversations: Vec<ConversationTurn>,
}

/// Reads an SFT file: one example per entry. Errors name `file:index`.
pub fn load(path: &Path) -> Result<Vec<Example>, DataError> {
    let file = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DataError::File {
        path: file(),
        message: e.to_string(),
    })?;
    let entries: Vec<Entry> = serde_json::from_str(&text).map_err(|e| DataError::File {
        path: file(),
        message: format!("not a list of {{id, conversations}} entries: {e}"),
    })?;
    let mut seen = std::collections::HashMap::<String, usize>::new();
    entries
        .into_iter()
        .enumerate()
        .map(|(n, entry)| {
            let short: String = entry.id.chars().take(40).collect();
            let short = if short.len() < entry.id.len() {
                format!("{short}…")
            } else {
                short
            };
            let mut ex = example(entry).map_err(|m| DataError::File {
                path: format!("{}:{n}", file()),
                message: format!("\"{short}\": {m}"),
            })?;
            // Ids are the entries' own; the rare repeat gets a suffix so verdicts stay apart.
            let k = seen.entry(ex.id.clone()).or_default();
            *k += 1;
            if *k > 1 {
                ex.id = format!("{} #{k}", ex.id);
            }
            Ok(ex)
        })
        .collect()
}

/// The SFT entries of one DFS answer file, made as ToolBench's preprocessing makes them
/// (`preprocess/preprocess_toolllama_data.py`): one entry per transcript of
/// `train_messages` that ends with a function call, id `Step <message index>: <query>`;
/// an assistant message with a call becomes `\nThought: <text of the call-less messages
/// before it>\nAction: <name>\nAction Input: <arguments as written>`, and every other
/// message its content. The system turn is the file's own system message with the API list
/// appended as Python's `str()` (key order kept). ToolBench's preprocessing also inserts an
/// output-format line into that message; ablate does not carry that text, so its system
/// turns lack the line (the comparison test checks that this is the only difference).
/// `None` for a file ToolBench marked `valid_data: false`.
pub fn from_answer_file(path: &Path) -> Result<Option<Vec<Conversation>>, DataError> {
    let bad = |message: String| DataError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    // Read order-preserving: the API list's key order is part of the text the model sees.
    let file = pyliteral::parse(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let ag = file
        .get("answer_generation")
        .ok_or_else(|| bad("no answer_generation: not a ToolBench answer file".into()))?;
    if ag.get("valid_data") == Some(&Py::Bool(false)) {
        return Ok(None);
    }
    let str_of = |v: Option<&Py>, what: &str| -> Result<String, DataError> {
        match v {
            Some(Py::Str(s)) => Ok(s.clone()),
            _ => Err(bad(format!("{what} is not a string"))),
        }
    };
    let query = str_of(ag.get("query"), "answer_generation.query")?;
    let functions = ag
        .get("function")
        .ok_or_else(|| bad("no answer_generation.function".into()))?
        .repr();
    let Some(Py::List(transcripts)) = ag.get("train_messages") else {
        return Err(bad("answer_generation.train_messages is not a list".into()));
    };
    let mut out = Vec::new();
    for (t, transcript) in transcripts.iter().enumerate() {
        let Py::List(messages) = transcript else {
            return Err(bad(format!("train_messages[{t}] is not a list")));
        };
        let mut turns = Vec::new();
        let mut react = String::new();
        for (i, m) in messages.iter().enumerate() {
            let at = |what: &str| format!("train_messages[{t}][{i}].{what}");
            let role = str_of(m.get("role"), &at("role"))?;
            let content = match m.get("content") {
                Some(Py::Str(c)) => c.clone(),
                _ => String::new(),
            };
            let call = m.get("function_call");
            let last = i + 1 == messages.len();
            if role == "assistant" {
                let Some(call) = call else {
                    if last {
                        break;
                    }
                    react.push_str(&format!("\nThought: {content}"));
                    continue;
                };
                if react.is_empty() {
                    react.push_str("\nThought: ");
                }
                react.push_str(&format!(
                    "\nAction: {}\nAction Input: {}",
                    str_of(call.get("name"), &at("function_call.name"))?,
                    str_of(call.get("arguments"), &at("function_call.arguments"))?
                ));
                turns.push(ConversationTurn {
                    from: role,
                    value: std::mem::take(&mut react),
                });
                if last {
                    out.push(Conversation {
                        id: format!("Step {i}: {query}"),
                        conversations: std::mem::take(&mut turns),
                    });
                }
            } else {
                let value = if role == "system" {
                    format!("{content}\n{APIS_MARKER}{functions}")
                } else {
                    content
                };
                turns.push(ConversationTurn { from: role, value });
                react.clear();
            }
        }
    }
    Ok(Some(out))
}

/// The functions of a system turn: the Python-literal list after the API marker.
pub fn functions(system: &str) -> Result<Vec<ToolSpec>, String> {
    let (_, list) = system
        .split_once(APIS_MARKER)
        .ok_or("the system turn has no API list")?;
    let parsed = pyliteral::parse(list).map_err(|e| format!("API list: {e}"))?;
    match parsed.to_json() {
        Value::Array(fs) => Ok(fs.iter().map(ToolSpec::from_json).collect()),
        _ => Err("API list: not a list".into()),
    }
}

fn example(entry: Entry) -> Result<Example, String> {
    let mut turns = entry.conversations;
    let target = match turns.pop() {
        Some(t) if t.from == "assistant" => t.value,
        _ => return Err("the last turn is not the assistant's".to_string()),
    };
    let system = turns
        .iter()
        .find(|t| t.from == "system")
        .ok_or("no system turn")?;
    let tools = functions(&system.value)?;
    // The query is the id's (`Step N: <query>`), as the user turn wraps it in text.
    let query = entry
        .id
        .split_once(": ")
        .filter(|(step, _)| step.starts_with("Step "))
        .map(|(_, q)| q.to_string())
        .ok_or("the id is not `Step N: <query>`")?;
    let (thought, action, input) =
        parse_assistant(&target).ok_or("the target is not `Thought: / Action: / Action Input:`")?;
    // The compact template's history: each call with its observation (DFS's retry
    // prompts, later user turns, are ToolLLaMA-template only).
    let mut history: Vec<Turn> = Vec::new();
    for (i, t) in turns.iter().enumerate() {
        match t.from.as_str() {
            "assistant" => {
                let (th, a, inp) = parse_assistant(&t.value)
                    .ok_or_else(|| format!("turn {i} is not a ReAct step"))?;
                history.push(Turn {
                    assistant: super::react_text(&th, &a, &inp),
                    observation: String::new(),
                });
            }
            "function" => {
                history
                    .last_mut()
                    .ok_or_else(|| format!("turn {i}: observation before any call"))?
                    .observation = t.value.clone();
            }
            "system" | "user" => {}
            other => return Err(format!("turn {i}: unknown role {other:?}")),
        }
    }
    Ok(Example {
        id: entry.id,
        category: "toolbench".into(),
        tools,
        query,
        thought,
        gold: GoldCall {
            name: action,
            arguments: serde_json::from_str(&input).unwrap_or(Value::String(input)),
        },
        bfcl: None,
        history,
        raw: Some(RawConversation { turns, target }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(json: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sft.json");
        std::fs::write(&p, json).unwrap();
        (d, p)
    }

    #[test]
    fn a_malformed_entry_is_named_by_file_and_index() {
        let ok = r#"{"id": "Step 1: q", "conversations": [
            {"from": "system", "value": "x\nSpecifically, you have access to the following APIs: [{'name': 'f', 'description': 'd', 'parameters': {}}]"},
            {"from": "user", "value": "q"},
            {"from": "assistant", "value": "\nThought: \nAction: f\nAction Input: {}"}]}"#;
        let bad_list = ok.replace("[{'name'", "[{'name' 'f',");
        let (_d, p) = write(&format!("[{ok}, {bad_list}]"));
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("sft.json:1: \"Step 1: q\": API list"), "{e}");
        let (_d, p) = write(&format!("[{ok}]"));
        let ex = load(&p).unwrap();
        assert_eq!(ex[0].gold.name, "f");
        assert_eq!(ex[0].tools[0].description, "d");
    }
}
