//! What a router can read about an answer at inference time, without any gold answer: the
//! small model's own output and what it was offered. A deployment can compute every one of
//! these before deciding to hand a query to a larger model.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::parse_react;
use crate::data::ToolSpec;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Signals {
    /// No call could be read: no `Action:` / `Action Input:`, or an input that is not a
    /// JSON object.
    pub format: bool,
    /// A call to a function that was not offered.
    pub hallucinated: bool,
    /// `Finish` with `give_up_and_restart`.
    pub gave_up: bool,
    /// An episode that ended without an answer (out of turns or context, or empty).
    pub no_finish: bool,
}

impl Signals {
    pub fn any(&self) -> bool {
        self.format || self.hallucinated || self.gave_up || self.no_finish
    }

    /// The signals by name, in a fixed order.
    pub fn named(&self) -> [(&'static str, bool); 4] {
        [
            ("format", self.format),
            ("hallucinated", self.hallucinated),
            ("gave_up", self.gave_up),
            ("no_finish", self.no_finish),
        ]
    }
}

/// The signals of one generated step, given the functions its prompt offered.
pub fn of_step(text: &str, tools: &[ToolSpec]) -> Signals {
    let mut s = Signals::default();
    match parse_react(text) {
        Err(_) => s.format = true,
        Ok(step) if step.action == "Finish" => {
            s.gave_up = step.action_input.contains("give_up_and_restart");
        }
        Ok(step) => {
            if !tools.iter().any(|t| t.name == step.action) {
                s.hallucinated = true;
            } else if !serde_json::from_str::<Value>(step.action_input.trim())
                .is_ok_and(|v| v.is_object())
            {
                s.format = true;
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn step_signals_need_no_gold() {
        let tools = vec![ToolSpec::from_json(&json!({"name": "get_weather"}))];
        let call = |a: &str, i: &str| format!("Thought: t\nAction: {a}\nAction Input: {i}");
        assert!(!of_step(&call("get_weather", "{\"city\": \"Oslo\"}"), &tools).any());
        assert!(of_step(&call("get_wether", "{}"), &tools).hallucinated);
        assert!(of_step(&call("get_weather", "Oslo"), &tools).format);
        assert!(of_step("I don't know", &tools).format);
        let give_up = call("Finish", "{\"return_type\": \"give_up_and_restart\"}");
        assert!(of_step(&give_up, &tools).gave_up);
    }
}
