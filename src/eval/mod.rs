//! Evaluation: the ReAct parser and the rule-based evaluator. Each evaluator gives one
//! verdict per example; the pass rate is derived from the stored verdicts.

pub mod llm_judge;
pub mod signals;
pub mod tooleval;

use serde::Serialize;
use serde_json::Value;

use crate::bfcl;
use crate::config::Evaluator;
use crate::data::{Example, ToolSpec};

/// The version of an evaluator's verdict code, hashed into its verdict sets. Bump it when
/// a change can flip a stored verdict: `ablate run` and `ablate rescore` then re-judge the
/// stored predictions (and the report shows what flipped) instead of regenerating.
pub fn version(e: Evaluator) -> &'static str {
    match e {
        Evaluator::Rules => "rules-1",
        Evaluator::Bfcl => "bfcl-1",
        Evaluator::Episode => "episode-1",
        Evaluator::LlmJudge => "llm_judge-2",
    }
}

/// What an evaluator's rate measures, in the words reports use: a "pass rate" is
/// ToolEval's verdict on an agent's whole answer; the others say what they count.
pub fn measure(e: Evaluator, dataset: &str) -> &'static str {
    match (e, dataset) {
        (Evaluator::Rules, "toolbench") => "step accuracy: the next call, teacher-forced",
        (Evaluator::Rules, _) => "exact-match accuracy of the call",
        (Evaluator::Bfcl, _) => "BFCL AST accuracy",
        (Evaluator::Episode, _) => "answer rate: the agent gave a final answer, not judged",
        (Evaluator::LlmJudge, _) => "pass rate: an LLM judge, ToolEval's procedure",
    }
}

/// A parsed assistant turn: `Thought: ... Action: ... Action Input: {...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReactStep {
    pub thought: Option<String>,
    pub action: String,
    pub action_input: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no `Action:` line")]
    NoAction,
    #[error("no `Action Input:` after the action")]
    NoActionInput,
    #[error("empty action name")]
    EmptyAction,
}

/// Parses the first Thought / Action / Action Input of a turn. The thought is optional
/// (ToolBench sometimes omits it); the action input runs to the end of its JSON value or,
/// failing that, to the end of the line block.
pub fn parse_react(text: &str) -> Result<ReactStep, ParseError> {
    // The action is the last `Action:` before the first `Action Input:`: real thoughts
    // (ToolBench's among them) sometimes say "Action: call the ... function" in prose.
    // ("Action Input:" does not contain "Action:".)
    let a_start = match text.find("Action Input:") {
        Some(ai) => text[..ai].rfind("Action:"),
        None => text.find("Action:"),
    }
    .ok_or(ParseError::NoAction)?;
    let thought = text[..a_start]
        .find("Thought:")
        .map(|i| text[i + "Thought:".len()..a_start].trim().to_string());
    let after_action = &text[a_start + "Action:".len()..];
    let ai = after_action
        .find("Action Input:")
        .ok_or(ParseError::NoActionInput)?;
    let action = after_action[..ai].trim().to_string();
    if action.is_empty() {
        return Err(ParseError::EmptyAction);
    }
    let raw = after_action[ai + "Action Input:".len()..].trim_start();
    // Take exactly one JSON value when there is one, so trailing text (an Observation,
    // a second step) does not spoil a well-formed call.
    let mut de = serde_json::Deserializer::from_str(raw).into_iter::<Value>();
    let action_input = match de.next() {
        Some(Ok(_)) => raw[..de.byte_offset()].to_string(),
        _ => raw
            .split("\nObservation:")
            .next()
            .unwrap_or(raw)
            .trim_end()
            .to_string(),
    };
    Ok(ReactStep {
        thought,
        action,
        action_input,
    })
}

/// A verdict: `pass`, or the first check that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    BadFormat,
    UnknownTool,
    InvalidJson,
    MissingRequired,
    UnknownArgument,
    WrongTool,
    WrongArguments,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::BadFormat => "bad_format",
            Verdict::UnknownTool => "unknown_tool",
            Verdict::InvalidJson => "invalid_json",
            Verdict::MissingRequired => "missing_required",
            Verdict::UnknownArgument => "unknown_argument",
            Verdict::WrongTool => "wrong_tool",
            Verdict::WrongArguments => "wrong_arguments",
        }
    }
}

/// The rule-based evaluator, in order: format, tool name among those offered (no
/// hallucinated API), arguments a JSON object with every required and no unknown
/// parameter, then equality with the gold call (arguments compared as JSON values).
pub fn rules_verdict(
    prediction: &str,
    tools: &[ToolSpec],
    gold_name: &str,
    gold_args: &Value,
) -> Verdict {
    let Ok(step) = parse_react(prediction) else {
        return Verdict::BadFormat;
    };
    let Some(tool) = tools.iter().find(|t| t.name == step.action) else {
        return Verdict::UnknownTool;
    };
    let Ok(Value::Object(args)) = serde_json::from_str::<Value>(&step.action_input) else {
        return Verdict::InvalidJson;
    };
    if tool.required().iter().any(|r| !args.contains_key(r)) {
        return Verdict::MissingRequired;
    }
    let props = tool.properties();
    if args.keys().any(|k| !props.contains(k)) {
        return Verdict::UnknownArgument;
    }
    if step.action != gold_name {
        return Verdict::WrongTool;
    }
    if !json_equal(&Value::Object(args), gold_args) {
        return Verdict::WrongArguments;
    }
    Verdict::Pass
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// What a generation produced for one test step or one ToolBench episode: the unit that
/// evaluators judge and that is stored, so a new evaluator re-judges without generating.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Prediction {
    pub kind: PredictionKind,
    pub example_id: String,
    pub dataset: String,
    pub category: String,
    /// The decoded text (an episode's transcript).
    pub prediction: String,
    pub gold: String,
    /// An episode's ending, final answer and path (ToolEval's `answer_details`), or the
    /// ending of a step whose prompt did not fit (`context_overflow`).
    pub detail: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PredictionKind {
    Step,
    Episode,
}

impl PredictionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionKind::Step => "step",
            PredictionKind::Episode => "episode",
        }
    }

    pub fn parse(s: &str) -> PredictionKind {
        if s == "episode" {
            PredictionKind::Episode
        } else {
            PredictionKind::Step
        }
    }
}

impl Prediction {
    /// How the generation ended for this example when it ended early: `context_overflow`,
    /// or an episode's ending (`pass`, `no_finish`, `bad_format`, ...).
    pub fn ending(&self) -> Option<&str> {
        self.detail.as_ref()?.get("ending")?.as_str()
    }
}

/// One evaluator's decision on one example: passed or not, and the verdict stored with
/// it (`pass`, or the first failed check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgment {
    pub passed: bool,
    pub verdict: String,
}

/// The verdict of a named evaluator. Validation has already checked that the evaluator
/// fits the dataset (`bfcl`: a BFCL file). `rules` is exact match against one gold call:
/// the synthetic task's, a ToolBench step's, or BFCL's first allowed values (so it is
/// stricter than BFCL's checker, which is what comparing the two measures).
pub fn judge(evaluator: Evaluator, prediction: &str, e: &Example) -> Judgment {
    match (evaluator, &e.bfcl) {
        (Evaluator::Bfcl, Some(truth)) => {
            let v = match parse_calls(prediction) {
                Ok(calls) => {
                    bfcl::check(&e.category, &truth.functions, &calls, &truth.ground_truth)
                }
                // As BFCL: output that does not decode is no call for the relevance
                // runner, and a failure for the AST categories.
                Err(_) if e.category.contains("irrelevance") => {
                    bfcl::check(&e.category, &[], &[], &[])
                }
                Err(why) => bfcl::Verdict {
                    valid: false,
                    error_type: "ast_decoder:decoder_failed".into(),
                    error: why,
                },
            };
            Judgment {
                passed: v.valid,
                verdict: if v.valid { "pass".into() } else { v.error_type },
            }
        }
        // Rules on a BFCL irrelevance question: the one right answer is no call.
        (Evaluator::Rules, Some(truth)) if truth.ground_truth.is_empty() => {
            let called = !matches!(parse_react(prediction), Err(ParseError::NoAction));
            Judgment {
                passed: !called,
                verdict: if called { "unexpected_call" } else { "pass" }.into(),
            }
        }
        _ => {
            let v = rules_verdict(prediction, &e.tools, &e.gold.name, &e.gold.arguments);
            Judgment {
                passed: v == Verdict::Pass,
                verdict: v.as_str().into(),
            }
        }
    }
}

/// Every `Action:` / `Action Input:` pair of a turn as a BFCL call, in order (several for
/// parallel calls). No `Action:` (or `Action: Finish`) is no call; an action input that is
/// not a JSON object does not decode.
pub fn parse_calls(text: &str) -> Result<Vec<bfcl::Call>, String> {
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("Action:") {
        let block = &rest[i..];
        let next = block["Action:".len()..]
            .find("\nAction:")
            .map(|j| j + "Action:".len() + 1)
            .unwrap_or(block.len());
        let step = parse_react(&block[..next]).map_err(|e| e.to_string())?;
        rest = &block[next..];
        if step.action == "Finish" {
            continue;
        }
        match serde_json::from_str::<Value>(&step.action_input) {
            Ok(args @ Value::Object(_)) => calls.push(bfcl::Call {
                name: step.action,
                arguments: args,
            }),
            _ => {
                return Err(format!(
                    "Action Input of {} is not a JSON object",
                    step.action
                ))
            }
        }
    }
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<ToolSpec> {
        crate::data::synthetic::tools()
    }

    #[test]
    fn parses_a_react_turn() {
        let s = parse_react("Thought: need weather\nAction: get_weather\nAction Input: {\"city\": \"Paris\"}\nObservation: sunny").unwrap();
        assert_eq!(s.thought.as_deref(), Some("need weather"));
        assert_eq!(s.action, "get_weather");
        assert_eq!(s.action_input, "{\"city\": \"Paris\"}");
        let s = parse_react("Action: x\nAction Input: not json\nObservation: y").unwrap();
        assert_eq!(s.thought, None);
        assert_eq!(s.action_input, "not json");
        assert_eq!(parse_react("Thought: hmm"), Err(ParseError::NoAction));
        assert_eq!(parse_react("Action: x"), Err(ParseError::NoActionInput));
        assert_eq!(
            parse_react("Action: \nAction Input: {}"),
            Err(ParseError::EmptyAction)
        );
    }

    #[test]
    fn rule_verdicts_in_order() {
        let t = tools();
        let gold = json!({"city": "Paris"});
        let v = |p: &str| rules_verdict(p, &t, "get_weather", &gold);
        assert_eq!(
            v("Thought: x\nAction: get_weather\nAction Input: {\"city\": \"Paris\"}"),
            Verdict::Pass
        );
        assert_eq!(v("nothing"), Verdict::BadFormat);
        assert_eq!(
            v("Action: get_wether\nAction Input: {}"),
            Verdict::UnknownTool
        );
        assert_eq!(
            v("Action: get_weather\nAction Input: {city: Paris}"),
            Verdict::InvalidJson
        );
        assert_eq!(
            v("Action: get_weather\nAction Input: [1]"),
            Verdict::InvalidJson
        );
        assert_eq!(
            v("Action: get_weather\nAction Input: {\"unit\": \"celsius\"}"),
            Verdict::MissingRequired
        );
        assert_eq!(
            v("Action: get_weather\nAction Input: {\"city\": \"Paris\", \"x\": 1}"),
            Verdict::UnknownArgument
        );
        assert_eq!(
            v("Action: get_stock_price\nAction Input: {\"symbol\": \"IBM\"}"),
            Verdict::WrongTool
        );
        assert_eq!(
            v("Action: get_weather\nAction Input: {\"city\": \"Rome\"}"),
            Verdict::WrongArguments
        );
        let g2 = json!({"hour": 7, "minute": 5});
        assert_eq!(
            rules_verdict(
                "Action: set_alarm\nAction Input: {\"minute\": 5.0, \"hour\": 7}",
                &t,
                "set_alarm",
                &g2
            ),
            Verdict::Pass
        );
    }
}
