//! ToolBench episodes: the model answers a query turn by turn, with observations replayed
//! from the recorded trajectory, until it calls `Finish`, breaks a ToolEval rule or runs
//! out of turns (`eval.max_turns`). Each episode is stored whole as a prediction: its
//! transcript, its ending, the final answer and the path as ToolEval's nodes, which the
//! `episode` and `llm_judge` evaluators read.

use std::sync::atomic::Ordering;

use serde_json::Value;

use super::train::Loaded;
use super::RunError;
use crate::data::toolbench::{Trajectory, MAX_OBSERVATION_CHARS};
use crate::data::{self, Example, GoldCall, Turn, EOS_ID};
use crate::eval::toolbench::{judge_turn, replay_observation, TurnOutcome};
use crate::eval::{parse_react, Prediction, PredictionKind};
use crate::exec::{Event, RunContext};
use crate::model::{self, Decoding, GenerateOptions};
use crate::train::TrainError;

/// Runs every trajectory's episode.
pub fn run_episodes(
    ctx: &RunContext,
    m: &Loaded,
    trajectories: &[Trajectory],
) -> Result<Vec<Prediction>, RunError> {
    let (run_id, cfg, cancel, emit) = (ctx.run_id, ctx.config, ctx.cancel, ctx.emit);
    let (model, tok) = (&m.model, &m.tokenizer);
    emit(Event::Phase {
        run_id: run_id.to_string(),
        phase: "episodes",
        total: trajectories.len() as u64,
    });
    let max_positions = model.config().max_position_embeddings;
    let mut passed = 0;
    let mut out = Vec::with_capacity(trajectories.len());
    for (n, traj) in trajectories.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(TrainError::Interrupted.into());
        }
        let mut history: Vec<Turn> = Vec::new();
        let mut used = vec![false; traj.steps.len()];
        let mut transcript = String::new();
        let mut verdict = "no_finish";
        // The answer given with Finish (None: the episode never finished), and the path as
        // ToolEval's nodes, for the judge.
        let mut final_answer: Option<String> = None;
        let mut nodes: Vec<Value> = Vec::new();
        for turn in 0..cfg.eval.max_turns {
            let example = Example {
                id: format!("{}-turn{turn}", traj.id),
                category: traj.group.clone(),
                tools: traj.functions.clone(),
                query: traj.query.clone(),
                thought: String::new(),
                gold: GoldCall {
                    name: String::new(),
                    arguments: Value::Null,
                },
                bfcl: None,
                history: history.clone(),
                raw: None,
            };
            let prompt = data::encode_prompt(tok, &example, cfg.data.template)?;
            if prompt.len() + cfg.eval.max_new_tokens > max_positions {
                verdict = "context_overflow";
                break;
            }
            let opts = GenerateOptions {
                max_new_tokens: cfg.eval.max_new_tokens,
                eos: EOS_ID,
                decoding: if cfg.eval.temperature > 0.0 {
                    Decoding::Sample {
                        temperature: cfg.eval.temperature,
                        top_k: cfg.eval.top_k,
                        top_p: cfg.eval.top_p,
                        seed: cfg.train.seed.wrapping_add((n * 1000 + turn) as u64),
                    }
                } else {
                    Decoding::Greedy
                },
            };
            let gen = model::generate(model, &[prompt], &opts, &|_| false)?;
            let text = data::decode(tok, &gen[0])?;
            transcript.push_str(&format!("<|assistant|>\n{text}\n"));
            nodes.push(serde_json::json!({"role": "assistant", "message": text}));
            match judge_turn(&text, traj) {
                TurnOutcome::End(v) => {
                    verdict = v;
                    final_answer = finish_answer(&text, v);
                    break;
                }
                TurnOutcome::Call {
                    name,
                    arguments,
                    text,
                } => {
                    let obs = replay_observation(traj, &mut used, &name, &arguments);
                    let obs: String = obs.chars().take(MAX_OBSERVATION_CHARS).collect();
                    nodes.push(serde_json::json!({"role": "tool", "message": {
                        "name": name, "arguments": arguments, "response": obs}}));
                    transcript.push_str(&format!("<|function|>\n{obs}\n"));
                    history.push(Turn {
                        assistant: text,
                        observation: obs,
                    });
                }
            }
        }
        passed += (verdict == "pass") as usize;
        let p = Prediction {
            kind: PredictionKind::Episode,
            example_id: traj.id.clone(),
            dataset: "toolbench".into(),
            category: traj.group.clone(),
            prediction: transcript,
            gold: traj
                .steps
                .last()
                .map(|s| s.action_input.clone())
                .unwrap_or_default(),
            detail: Some(serde_json::json!({
                "ending": verdict,
                "final_answer": final_answer,
                "details": chain(nodes),
            })),
        };
        super::generate::emit_prediction(ctx, &p);
        out.push(p);
        emit(Event::Progress {
            run_id: run_id.to_string(),
            pos: n as u64 + 1,
            message: format!("episodes finished {passed}/{}", n + 1),
        });
    }
    Ok(out)
}

/// The final answer of a `Finish` call that ended an episode with `verdict`: the answer
/// given, "give_up_and_restart" for a give-up; None when the episode never finished.
fn finish_answer(text: &str, verdict: &str) -> Option<String> {
    match verdict {
        "gave_up" => Some("give_up_and_restart".into()),
        "pass" | "empty_answer" => {
            let step = parse_react(text).ok()?;
            let args: Value = serde_json::from_str(&step.action_input).ok()?;
            Some(
                args["final_answer"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }
        _ => None,
    }
}

/// ToolEval's `answer_details`: the path's nodes, each the parent of the next.
fn chain(nodes: Vec<Value>) -> Value {
    nodes
        .into_iter()
        .rev()
        .fold(Value::Array(vec![]), |next, mut node| {
            node["next"] = next;
            Value::Array(vec![node])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_answer_is_what_finish_gave() {
        let finish = r#"Thought: done
Action: Finish
Action Input: {"return_type": "give_answer", "final_answer": "Paris"}"#;
        assert_eq!(finish_answer(finish, "pass").as_deref(), Some("Paris"));
        assert_eq!(
            finish_answer(finish, "gave_up").as_deref(),
            Some("give_up_and_restart")
        );
        let empty = r#"Action: Finish
Action Input: {"return_type": "give_answer", "final_answer": ""}"#;
        assert_eq!(finish_answer(empty, "empty_answer").as_deref(), Some(""));
        assert_eq!(finish_answer("gibberish", "bad_format"), None);
    }

    #[test]
    fn the_path_is_a_chain_of_nodes() {
        let v = chain(vec![
            serde_json::json!({"role": "assistant", "message": "a"}),
            serde_json::json!({"role": "tool", "message": {"name": "t"}}),
        ]);
        assert_eq!(v[0]["role"], "assistant");
        assert_eq!(v[0]["next"][0]["role"], "tool");
        assert_eq!(v[0]["next"][0]["next"], serde_json::json!([]));
        assert_eq!(chain(vec![]), serde_json::json!([]));
    }
}
