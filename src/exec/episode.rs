//! ToolBench episodes: the model answers a query turn by turn, with observations replayed
//! from the recorded trajectory, until it calls `Finish`, breaks a ToolEval rule or runs
//! out of turns (`eval.max_turns`). One verdict per trajectory, evaluator `episode`.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use super::pipeline::RunError;
use super::Event;
use crate::config::RunConfig;
use crate::data::toolbench::{Trajectory, MAX_OBSERVATION_CHARS};
use crate::data::{self, Example, GoldCall, Turn, EOS_ID};
use crate::eval::toolbench::{judge_turn, replay_observation, TurnOutcome};
use crate::model::{self, Decoding, GenerateOptions, Opt};
use crate::store::Record;
use crate::train::TrainError;

/// Runs every trajectory's episode; returns how many passed.
pub fn run_episodes(
    run_id: &str,
    model: &Opt,
    tok: &tokenizers::Tokenizer,
    trajectories: &[Trajectory],
    cfg: &RunConfig,
    cancel: &AtomicBool,
    emit: &dyn Fn(Event),
) -> Result<usize, RunError> {
    emit(Event::Phase {
        run_id: run_id.to_string(),
        phase: "episodes",
        total: trajectories.len() as u64,
    });
    let max_positions = model.config().max_position_embeddings;
    let mut passed = 0;
    for (n, traj) in trajectories.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(TrainError::Interrupted.into());
        }
        let mut history: Vec<Turn> = Vec::new();
        let mut used = vec![false; traj.steps.len()];
        let mut transcript = String::new();
        let mut verdict = "no_finish";
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
            };
            let prompt = data::encode_prompt(tok, &example)?;
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
            let out = model::generate(model, &[prompt], &opts, &|_| false)?;
            let text = data::decode(tok, &out[0])?;
            transcript.push_str(&format!("<|assistant|>\n{text}\n"));
            match judge_turn(&text, traj) {
                TurnOutcome::End(v) => {
                    verdict = v;
                    break;
                }
                TurnOutcome::Call {
                    name,
                    arguments,
                    text,
                } => {
                    let obs = replay_observation(traj, &mut used, &name, &arguments);
                    let obs: String = obs.chars().take(MAX_OBSERVATION_CHARS).collect();
                    transcript.push_str(&format!("<|function|>\n{obs}\n"));
                    history.push(Turn {
                        assistant: text,
                        observation: obs,
                    });
                }
            }
        }
        let ok = verdict == "pass";
        passed += ok as usize;
        let gold = traj.steps.last().map(|s| s.action_input.clone());
        emit(Event::Record(Record::Verdict {
            run_id: run_id.to_string(),
            dataset: "toolbench".into(),
            example_id: traj.id.clone(),
            category: traj.group.clone(),
            evaluator: "episode".into(),
            verdict: verdict.into(),
            passed: ok,
            prediction: transcript,
            gold: gold.unwrap_or_default(),
        }));
        emit(Event::Progress {
            run_id: run_id.to_string(),
            pos: n as u64 + 1,
            message: format!("episodes passed {passed}/{}", n + 1),
        });
    }
    Ok(passed)
}
