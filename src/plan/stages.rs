//! The identities of a run's stages. A *training* hashes the keys that change the trained
//! weights; a *generation* hashes its training and the decoding keys; a *verdict set*
//! hashes its generation, the evaluator, the evaluator's version and the settings that can
//! change a verdict. A stage whose identity is done is never run again, so an evaluation
//! axis never retrains and a new evaluator re-scores stored predictions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::{DataConfig, Evaluator, RunConfig, Scheduler};

/// Hashed into every stage id: bumped when a code change makes old stages incomparable.
pub const STAGE_ID_VERSION: &str = "ablate-stages-v1";

/// A run's stages, in the order they run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageIds {
    pub training: String,
    pub generation: String,
    /// One per evaluator, in `eval.evaluators` order.
    pub verdicts: Vec<VerdictSetId>,
    /// Set when the training is a longer one whose checkpoint after this many epochs is
    /// exactly this run's model (epoch-prefix sharing).
    pub checkpoint_epoch: Option<usize>,
    /// The training's own length: the run's `train.epochs`, or the longer run's it shares.
    pub train_epochs: usize,
    /// The leak guard's digest of the training queries left out (part of the training's
    /// keys), None when it leaves none out.
    pub left_out: Option<String>,
    /// The keys each id hashes, stored beside the stage so a user can see what it is.
    pub keys: StageKeys,
}

/// Each key as compact JSON text: keys are only written out (to the database, the run's
/// folder, a Slurm manifest), and a tree of values per run was most of a large plan's
/// memory. They serialize as the JSON they hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageKeys {
    pub training: Box<RawValue>,
    pub generation: Box<RawValue>,
    pub verdicts: Vec<Box<RawValue>>,
}

fn raw(v: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(v).expect("a JSON value serializes")
}

impl Default for StageKeys {
    fn default() -> Self {
        StageKeys {
            training: raw(&Value::Null),
            generation: raw(&Value::Null),
            verdicts: Vec::new(),
        }
    }
}

impl PartialEq for StageKeys {
    fn eq(&self, other: &Self) -> bool {
        self.training.get() == other.training.get()
            && self.generation.get() == other.generation.get()
            && self.verdicts.len() == other.verdicts.len()
            && self
                .verdicts
                .iter()
                .zip(&other.verdicts)
                .all(|(a, b)| a.get() == b.get())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictSetId {
    pub evaluator: Evaluator,
    pub id: String,
    /// The evaluator's code version ([`crate::eval::version`]).
    pub version: String,
}

/// Which predictions a generation makes: test steps (for step-wise evaluators) and/or
/// ToolBench episodes (for `episode`, which `llm_judge` then reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kinds {
    pub steps: bool,
    pub episodes: bool,
}

impl Kinds {
    pub fn of(cfg: &RunConfig) -> Kinds {
        // Test queries have nothing but episodes; answer files give them to `episode`.
        let queries = cfg.data.eval.is_query_set();
        let episodes = queries
            || (cfg.eval.evaluators.contains(&Evaluator::Episode) && cfg.data.eval.is_toolbench());
        let steps = !queries
            && cfg.eval.evaluators.iter().any(|e| match e {
                Evaluator::Episode => false,
                Evaluator::LlmJudge => !episodes,
                _ => true,
            });
        Kinds { steps, episodes }
    }
}

/// The prediction kind an evaluator reads, given what the generation makes.
pub fn reads_episodes(evaluator: Evaluator, kinds: Kinds) -> bool {
    match evaluator {
        Evaluator::Episode => true,
        Evaluator::LlmJudge => kinds.episodes,
        _ => false,
    }
}

/// The version of the episode loop, hashed into episode generations: bump it when a change
/// can change what an episode does with the same model.
pub const EPISODE_PROTOCOL: &str = "toolbench-react-2";

/// The id of a stage: a hash of the stage kind and its keys.
pub fn digest(tag: &str, key: &Value) -> String {
    let mut h = Sha256::new();
    h.update(STAGE_ID_VERSION.as_bytes());
    h.update(b"\n");
    h.update(tag.as_bytes());
    h.update(b"\n");
    h.update(key.to_string().as_bytes());
    h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether the synthetic validation split (sized by `n_test`) is the validation set.
fn synthetic_val(d: &DataConfig) -> bool {
    d.val == "synthetic" || (d.val.is_empty() && d.val_fraction == 0.0 && d.train == "synthetic")
}

/// The keys that change the trained weights. `left_out` names the training queries the
/// leak guard leaves out because the evaluation set asks them (a digest; absent when there
/// are none), so two evaluation sets share a training exactly when they leave out the
/// same queries. `epochs` is the training's own length (a longer one under sharing).
pub fn training_key(cfg: &RunConfig, left_out: Option<&str>, epochs: usize) -> Value {
    let d = &cfg.data;
    let mut data = json!({
        "train": d.train,
        "vocab_size": d.vocab_size,
        "max_seq_len": d.max_seq_len,
        "template": d.template,
        "truncation": d.truncation,
        "val": d.val,
        "val_fraction": d.val_fraction,
    });
    // The synthetic generator's keys matter only when it makes a training split.
    if d.train == "synthetic" || d.val == "synthetic" {
        data["seed"] = json!(d.seed);
    }
    if d.train == "synthetic" {
        data["n_train"] = json!(d.n_train);
    }
    if synthetic_val(d) {
        data["n_test"] = json!(d.n_test);
    }
    if d.val_fraction > 0.0 {
        data["seed"] = json!(d.seed);
    }
    let mut train = serde_json::to_value(&cfg.train).expect("config serializes");
    train["epochs"] = json!(epochs);
    let mut model =
        json!({"name": cfg.model.name, "init": cfg.model.init, "device": cfg.model.device});
    // An endpoint's model is named by the server too (not by its key or timeout).
    if cfg.model.endpoint_model().is_some() {
        model["endpoint"] = json!(cfg.model.endpoint.url.trim_end_matches('/'));
    }
    json!({
        "run_id_version": super::RUN_ID_VERSION,
        "model": model,
        "data": data,
        "train": train,
        "left_out": left_out,
    })
}

/// The decoding keys of a generation, on top of its training.
pub fn generation_key(cfg: &RunConfig, training: &str, epoch: Option<usize>) -> Value {
    let d = &cfg.data;
    let e = &cfg.eval;
    let kinds = Kinds::of(cfg);
    let mut eval_data = json!({"eval": d.eval, "limit": e.limit});
    if d.eval == "synthetic" {
        eval_data["n_test"] = json!(d.n_test);
        eval_data["seed"] = json!(d.seed);
    }
    let mut decoding = json!({
        "max_new_tokens": e.max_new_tokens,
        "batch_size": e.batch_size,
        "temperature": e.temperature,
        "stop": e.stop,
    });
    if e.temperature > 0.0 {
        decoding["top_k"] = json!(e.top_k);
        decoding["top_p"] = json!(e.top_p);
        decoding["seed"] = json!(cfg.train.seed);
    }
    if kinds.episodes {
        decoding["max_turns"] = json!(e.max_turns);
        // ToolBench's step rules (a wrong name or input is answered and the episode goes
        // on) replaced ending the episode at the first mistake.
        decoding["protocol"] = json!(EPISODE_PROTOCOL);
        let t = &e.tools;
        let mut tools = json!({"backends": t.backends, "cache": t.cache, "url": t.url});
        if t.backends.contains(&crate::config::ToolBackend::Simulate) {
            // The simulator's prompt is part of what it answers: its text, hashed.
            let s = &t.simulator;
            let prompt = std::fs::read(&s.prompt)
                .map(|b| format!("{:x}", Sha256::digest(&b)))
                .unwrap_or_default();
            tools["simulator"] = json!({"url": s.url, "model": s.model,
                "temperature": s.temperature, "prompt": prompt});
        }
        decoding["tools"] = tools;
    }
    json!({
        "training": training,
        "checkpoint_epoch": epoch,
        "data": eval_data,
        "decoding": decoding,
        "kinds": kinds,
    })
}

/// The settings of `evaluator` that can change a verdict (never an API key's variable or
/// a timeout).
pub fn verdict_key(cfg: &RunConfig, generation: &str, evaluator: Evaluator) -> Value {
    let settings = match evaluator {
        Evaluator::LlmJudge => {
            let j = &cfg.eval.judge;
            let mut s =
                json!({"url": j.url, "model": j.model, "k": j.k, "temperature": j.temperature});
            // Keys added later are left out at their defaults, so earlier verdict sets keep
            // their ids.
            if j.procedure != crate::config::JudgeProcedure::PassRate {
                s["procedure"] = json!(j.procedure);
            }
            if !j.evaluator.trim().is_empty() {
                // The folder's prompts and schemas decide the verdicts: its content, hashed.
                let f = crate::eval::tooleval::EvaluatorFolder::load(std::path::Path::new(
                    j.evaluator.trim(),
                ));
                if let Ok(f) = &f {
                    // What the judge will use: the folder's model, ToolEval's k.
                    if j.model.trim().is_empty() {
                        s["model"] = json!(f.model());
                    }
                    s["k"] = json!(j.k.unwrap_or(4));
                }
                s["evaluator"] = json!(f.map(|f| f.digest).unwrap_or_default());
            }
            s
        }
        _ => json!({}),
    };
    json!({
        "generation": generation,
        "evaluator": evaluator,
        "version": crate::eval::version(evaluator),
        "settings": settings,
    })
}

/// Why a run of `epochs` epochs under this schedule is, or is not, the first epochs of a
/// longer run of the same keys. Ok(()) when it is: the learning rate at every step of the
/// first `epochs` epochs does not depend on the total.
pub fn prefix_exact(cfg: &RunConfig) -> Result<(), String> {
    let t = &cfg.train;
    match t.scheduler {
        Scheduler::Constant if t.warmup_ratio == 0.0 => Ok(()),
        Scheduler::Constant => Err(format!(
            "warmup_ratio = {} makes the warmup's length depend on the total steps",
            t.warmup_ratio
        )),
        s => Err(format!(
            "the {} schedule decays over the total steps, so runs of different lengths \
             differ from the first step",
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        )),
    }
}

/// The stage ids of a run; `train_epochs` is the training it takes its model from (its own
/// `train.epochs`, or a longer run's under epoch-prefix sharing).
pub fn stage_ids(cfg: &RunConfig, left_out: Option<&str>, train_epochs: usize) -> StageIds {
    let shared = train_epochs != cfg.train.epochs;
    let training_key = training_key(cfg, left_out, train_epochs);
    let training = digest("training", &training_key);
    let epoch = shared.then_some(cfg.train.epochs);
    let generation_key = generation_key(cfg, &training, epoch);
    let generation = digest("generation", &generation_key);
    let verdict_keys: Vec<Value> = cfg
        .eval
        .evaluators
        .iter()
        .map(|&ev| verdict_key(cfg, &generation, ev))
        .collect();
    let verdicts = cfg
        .eval
        .evaluators
        .iter()
        .zip(&verdict_keys)
        .map(|(&ev, key)| VerdictSetId {
            evaluator: ev,
            id: digest("verdicts", key),
            version: crate::eval::version(ev).to_string(),
        })
        .collect();
    StageIds {
        training,
        generation,
        verdicts,
        checkpoint_epoch: epoch,
        train_epochs,
        left_out: left_out.map(String::from),
        keys: StageKeys {
            training: raw(&training_key),
            generation: raw(&generation_key),
            verdicts: verdict_keys.iter().map(raw).collect(),
        },
    }
}

/// Digests of the queries the leak guard leaves out, one per distinct pair of training and
/// evaluation data, computed once each.
#[derive(Default)]
pub struct LeakGuards {
    done: BTreeMap<String, Option<String>>,
}

impl LeakGuards {
    pub fn of(&mut self, d: &DataConfig) -> Result<Option<String>, crate::data::DataError> {
        let key = json!([d.train, d.eval, d.n_train, d.n_test, d.seed]).to_string();
        if let Some(v) = self.done.get(&key) {
            return Ok(v.clone());
        }
        let queries = crate::data::left_out_queries(&d.split_spec()?)?;
        let v = (!queries.is_empty()).then(|| {
            let mut h = Sha256::new();
            for q in &queries {
                h.update(q.as_bytes());
                h.update(b"\0");
            }
            format!("{} queries, sha256 {:x}", queries.len(), h.finalize())
        });
        self.done.insert(key, v.clone());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RunConfig {
        RunConfig::default()
    }

    #[test]
    fn evaluation_keys_leave_the_training_alone() {
        let a = cfg();
        let mut b = cfg();
        b.eval.max_new_tokens = 7;
        b.eval.evaluators = vec![Evaluator::Rules, Evaluator::Bfcl];
        b.data.eval = "other.json".into();
        let (ia, ib) = (stage_ids(&a, None, 1), stage_ids(&b, None, 1));
        assert_eq!(ia.training, ib.training);
        assert_ne!(ia.generation, ib.generation);
        // What the leak guard leaves out is part of the training.
        assert_ne!(stage_ids(&a, Some("1 queries"), 1).training, ia.training);
    }

    #[test]
    fn training_keys_change_every_stage() {
        let a = cfg();
        let mut b = cfg();
        b.train.lr = 1e-3;
        let (ia, ib) = (stage_ids(&a, None, 1), stage_ids(&b, None, 1));
        assert_ne!(ia.training, ib.training);
        assert_ne!(ia.generation, ib.generation);
        assert_ne!(ia.verdicts[0].id, ib.verdicts[0].id);
    }

    #[test]
    fn an_added_evaluator_keeps_the_generation_and_the_other_verdicts() {
        let a = cfg();
        let mut b = cfg();
        b.data.eval = "../x.json".into();
        b.eval.evaluators = vec![Evaluator::Rules, Evaluator::Bfcl];
        let mut c = b.clone();
        c.eval.evaluators = vec![Evaluator::Rules];
        let (ib, ic) = (stage_ids(&b, None, 1), stage_ids(&c, None, 1));
        assert_eq!(ib.generation, ic.generation);
        assert_eq!(ib.verdicts[0], ic.verdicts[0]);
        assert_eq!(stage_ids(&a, None, 1).training, ib.training);
        // A judge's model changes its verdicts, its key variable does not.
        let mut j = cfg();
        j.eval.evaluators = vec![Evaluator::LlmJudge];
        j.eval.judge.model = "m1".into();
        let mut k = j.clone();
        k.eval.judge.api_key_env = "OTHER".into();
        k.eval.judge.timeout_s = 5;
        assert_eq!(
            stage_ids(&j, None, 1).verdicts,
            stage_ids(&k, None, 1).verdicts
        );
        k.eval.judge.model = "m2".into();
        let (ij, ik) = (stage_ids(&j, None, 1), stage_ids(&k, None, 1));
        assert_eq!(ij.generation, ik.generation);
        assert_ne!(ij.verdicts[0].id, ik.verdicts[0].id);
    }

    #[test]
    fn a_prefix_is_exact_only_under_a_constant_schedule_without_warmup() {
        let mut c = cfg();
        c.train.scheduler = Scheduler::Constant;
        assert!(prefix_exact(&c).is_ok());
        c.train.warmup_ratio = 0.1;
        assert!(prefix_exact(&c).unwrap_err().contains("warmup"));
        c.train.scheduler = Scheduler::Linear;
        c.train.warmup_ratio = 0.0;
        assert!(prefix_exact(&c).unwrap_err().contains("linear"));
    }
}
