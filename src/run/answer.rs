//! Who answers a prompt: the run's model, decoded here, or a model behind an
//! OpenAI-compatible endpoint (`model.name = "openai:<model>"`). Both give the text and,
//! where they can, the token log-probabilities a router reads.

use std::time::Duration;

use serde_json::{json, Value};

use super::train::Loaded;
use super::RunError;
use crate::chat::{self, Client, Verdict};
use crate::config::RunConfig;
use crate::data::{self, Example};
use crate::model::{self, Decoding, GenerateOptions};

/// One answer: its text, and the summed log-probability of its tokens with their count.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub logprob: Option<(f64, usize)>,
}

impl Answer {
    pub fn mean_logprob(&self) -> Option<f64> {
        self.logprob.and_then(mean)
    }
}

/// The mean of a (sum, count) of token log-probabilities; None over no tokens.
pub fn mean((sum, n): (f64, usize)) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

/// What to do with a prompt longer than the model's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Leave out the oldest earlier steps as far as needed (test steps).
    DropOldestSteps,
    /// Take it whole or not at all (an episode's turn: its history is what it saw).
    Whole,
}

pub trait Answerer {
    /// One answer per example, in order; None where the prompt does not fit. `seed` seeds
    /// sampling (the first example's; the rest follow in order).
    fn answer(
        &mut self,
        examples: &[Example],
        seed: u64,
        fit: Fit,
    ) -> Result<Vec<Option<Answer>>, RunError>;

    /// How many examples to answer at once.
    fn batch(&self) -> usize;
}

fn decoding(cfg: &RunConfig, seed: u64) -> Decoding {
    let e = &cfg.eval;
    if e.temperature > 0.0 {
        Decoding::Sample {
            temperature: e.temperature,
            top_k: e.top_k,
            top_p: e.top_p,
            seed,
        }
    } else {
        Decoding::Greedy
    }
}

/// The run's model, decoded in batches of `eval.batch_size`.
pub struct Local<'a> {
    pub m: &'a Loaded,
    pub cfg: &'a RunConfig,
}

impl Answerer for Local<'_> {
    fn answer(
        &mut self,
        examples: &[Example],
        seed: u64,
        fit: Fit,
    ) -> Result<Vec<Option<Answer>>, RunError> {
        let (cfg, tok, model) = (self.cfg, &self.m.tokenizer, &self.m.model);
        let e = &cfg.eval;
        let opts = GenerateOptions {
            max_new_tokens: e.max_new_tokens,
            eos: data::EOS_ID,
            decoding: decoding(cfg, seed),
        };
        // Stop strings are matched on the decoded text of the new tokens.
        let stop = |ids: &[u32]| -> bool {
            !e.stop.is_empty()
                && data::decode(tok, ids)
                    .is_ok_and(|t| e.stop.iter().any(|s| t.contains(s.as_str())))
        };
        let max_positions = model.config().max_position_embeddings;
        let room = max_positions.saturating_sub(e.max_new_tokens);
        let fitted = examples
            .iter()
            .map(|ex| match fit {
                Fit::DropOldestSteps => data::fit_prompt(tok, ex, cfg.data.template, room),
                Fit::Whole => data::encode_prompt(tok, ex, cfg.data.template)
                    .map(|p| (p.len() + e.max_new_tokens <= max_positions).then_some(p)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prompts: Vec<Vec<u32>> = fitted.iter().flatten().cloned().collect();
        let mut outs = if prompts.is_empty() {
            Vec::new()
        } else {
            model::generate_scored(model, &prompts, &opts, &stop)?
        }
        .into_iter();
        fitted
            .iter()
            .map(|f| {
                let Some(_) = f else { return Ok(None) };
                let g = outs.next().expect("one output per fitted prompt");
                Ok(Some(Answer {
                    text: data::decode(tok, &g.tokens)?,
                    logprob: Some((g.logprob_sum, g.scored)),
                }))
            })
            .collect()
    }

    fn batch(&self) -> usize {
        self.cfg.eval.batch_size.max(1)
    }
}

/// A model behind an OpenAI-compatible endpoint: the study's prompt as one user message,
/// decoded as `eval` says (temperature, `max_new_tokens` as `max_tokens`, stop strings),
/// with token log-probabilities asked for.
pub struct Endpoint<'a> {
    client: Client,
    model: String,
    cfg: &'a RunConfig,
}

impl<'a> Endpoint<'a> {
    pub fn new(cfg: &'a RunConfig, model: &str) -> Endpoint<'a> {
        let ep = &cfg.model.endpoint;
        Endpoint {
            client: Client::new(
                &ep.url,
                std::env::var(&ep.api_key_env).ok(),
                Duration::from_secs(ep.timeout_s.max(1)),
            ),
            model: model.to_string(),
            cfg,
        }
    }

    fn body(&self, prompt: &str, seed: u64) -> Value {
        let e = &self.cfg.eval;
        let mut body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": e.max_new_tokens,
            "temperature": e.temperature,
            "logprobs": true,
        });
        if e.temperature > 0.0 {
            body["top_p"] = json!(e.top_p);
            body["seed"] = json!(seed);
        }
        if !e.stop.is_empty() {
            body["stop"] = json!(e.stop);
        }
        body
    }
}

impl Answerer for Endpoint<'_> {
    fn answer(
        &mut self,
        examples: &[Example],
        seed: u64,
        _fit: Fit,
    ) -> Result<Vec<Option<Answer>>, RunError> {
        let mut out = Vec::with_capacity(examples.len());
        for (i, ex) in examples.iter().enumerate() {
            let prompt = self.cfg.data.template.prompt(ex)?;
            let body = self.body(&prompt, seed.wrapping_add(i as u64));
            let answer = self.client.post(&body, |v| match chat::content(&v) {
                Some(text) => Verdict::Use(Answer {
                    text: self.client.scrub(text),
                    logprob: chat::logprob_sum(&v),
                }),
                None if v["choices"][0]["finish_reason"] == "length" => Verdict::Use(Answer {
                    text: String::new(),
                    logprob: None,
                }),
                None => Verdict::Fail(format!(
                    "the reply has no message content: {}",
                    v.to_string().chars().take(300).collect::<String>()
                )),
            });
            out.push(Some(answer.map_err(|e| {
                RunError::Endpoint(format!(
                    "model.name = \"{}{}\": {e}",
                    crate::config::ENDPOINT_PREFIX,
                    self.model
                ))
            })?));
        }
        Ok(out)
    }

    fn batch(&self) -> usize {
        self.cfg.eval.batch_size.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_asked_as_eval_decodes() {
        let mut cfg = RunConfig::default();
        cfg.model.name = "openai:m".into();
        cfg.eval.max_new_tokens = 7;
        cfg.eval.stop = vec!["\nObservation:".into()];
        let ep = Endpoint::new(&cfg, "m");
        let b = ep.body("hi", 3);
        assert_eq!(b["model"], "m");
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["stop"], json!(["\nObservation:"]));
        assert_eq!(b["messages"][0]["content"], "hi");
        assert!(b.get("seed").is_none(), "greedy asks no seed");
        cfg.eval.temperature = 0.7;
        let ep = Endpoint::new(&cfg, "m");
        assert_eq!(ep.body("hi", 3)["seed"], 3);
    }
}
