//! ToolBench episodes judged offline: the model runs free, observations are replayed from
//! the recorded trajectory when its call matches a recorded one (else a structured error
//! observation), and ToolEval's rule-based parts decide: `Finish` reached, with
//! `give_answer` and a non-empty final answer, no give-up, no hallucinated API name.
//! ToolEval's LLM judgment (is the answer right?) needs the live judge, not this.

use serde_json::Value;

use super::parse_react;
use crate::data::toolbench::Trajectory;

/// What one assistant turn of an episode amounts to.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnOutcome {
    /// A call to an offered API: the episode goes on with its observation.
    Call {
        name: String,
        arguments: Value,
        /// The turn as it goes into the history (normalised ReAct text).
        text: String,
    },
    /// The episode ends with this verdict (`pass` or the rule that failed).
    End(&'static str),
}

/// ToolEval's rules on one turn.
pub fn judge_turn(text: &str, traj: &Trajectory) -> TurnOutcome {
    let Ok(step) = parse_react(text) else {
        return TurnOutcome::End("bad_format");
    };
    if !traj.functions.iter().any(|f| f.name == step.action) {
        return TurnOutcome::End("hallucinated_name");
    }
    let Ok(args @ Value::Object(_)) = serde_json::from_str::<Value>(&step.action_input) else {
        return TurnOutcome::End("invalid_arguments");
    };
    if step.action == "Finish" {
        return TurnOutcome::End(finish_verdict(&args));
    }
    TurnOutcome::Call {
        text: format!(
            "Thought: {}\nAction: {}\nAction Input: {args}",
            step.thought.unwrap_or_default(),
            step.action
        ),
        name: step.action,
        arguments: args,
    }
}

/// ToolEval's rules on the arguments of a `Finish` call: `pass` for `give_answer` with a
/// non-empty answer, else why not.
pub fn finish_verdict(args: &Value) -> &'static str {
    match args["return_type"].as_str() {
        Some("give_answer") => {
            if args["final_answer"]
                .as_str()
                .is_some_and(|a| !a.trim().is_empty())
            {
                "pass"
            } else {
                "empty_answer"
            }
        }
        Some("give_up_and_restart") => "gave_up",
        _ => "invalid_finish",
    }
}

/// The observation for a call: the recorded one of the first unused recorded step with
/// the same API and arguments, else a structured error (there is no live API offline).
pub fn replay_observation(
    traj: &Trajectory,
    used: &mut [bool],
    name: &str,
    arguments: &Value,
) -> String {
    for (i, s) in traj.steps.iter().enumerate() {
        if used[i] || s.action != name {
            continue;
        }
        let recorded: Value =
            serde_json::from_str(&s.action_input).unwrap_or(Value::Object(Default::default()));
        if &recorded == arguments {
            if let Some(obs) = &s.observation {
                used[i] = true;
                return obs.clone();
            }
        }
    }
    serde_json::json!({
        "error": "no recorded response for this call (offline replay of the ToolBench trajectory)",
        "response": ""
    })
    .to_string()
}
