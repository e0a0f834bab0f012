//! What running a plan would do, read from the store without changing it: per run, the
//! stages that would run (a stage another run of the plan produces first is reused, not
//! counted twice), and the done stages that other code produced.

use std::collections::HashSet;

use serde::Serialize;

use crate::plan::{Plan, PlannedRun, Sharing};
use crate::store::{RunStatus, Stage, Store, StoreError};

fn epochs(n: usize) -> String {
    format!("{n} epoch{}", if n == 1 { "" } else { "s" })
}

#[derive(Debug, Clone, Serialize)]
pub struct RunPreview {
    pub status: RunStatus,
    /// The stages this run would run; empty when it is done.
    pub will_run: Vec<Stage>,
    /// How it gets its model when it does not train it: the epoch-prefix note, if any.
    pub sharing: Option<String>,
    /// Done stages of this run produced by other code, with why.
    pub stale: Vec<StaleStage>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StaleStage {
    pub stage: Stage,
    pub id: String,
    pub reason: String,
}

/// The preview of every run of `plan`, in plan order. `stale` says why a stored
/// provenance is not the current code's (None: same code).
pub fn preview(
    plan: &Plan,
    store: Option<&Store>,
    stale: &dyn Fn(&serde_json::Value) -> Option<String>,
) -> Result<Vec<RunPreview>, StoreError> {
    Previewer::new(store, stale).next(&plan.runs)
}

/// Previews the runs of a plan a chunk at a time, in plan order: it remembers the stages
/// the runs before would run, so that a stage two runs share is counted once.
pub struct Previewer<'a> {
    store: Option<&'a Store>,
    stale: &'a dyn Fn(&serde_json::Value) -> Option<String>,
    trainings: HashSet<String>,
    generations: HashSet<String>,
    sets: HashSet<String>,
}

impl<'a> Previewer<'a> {
    pub fn new(
        store: Option<&'a Store>,
        stale: &'a dyn Fn(&serde_json::Value) -> Option<String>,
    ) -> Self {
        Previewer {
            store,
            stale,
            trainings: HashSet::new(),
            generations: HashSet::new(),
            sets: HashSet::new(),
        }
    }

    /// The previews of the next runs of the plan.
    pub fn next(&mut self, runs: &[PlannedRun]) -> Result<Vec<RunPreview>, StoreError> {
        let (store, stale) = (self.store, self.stale);
        let (trainings, generations, sets) =
            (&mut self.trainings, &mut self.generations, &mut self.sets);
        let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
        let statuses = match store {
            Some(s) => s.statuses(&ids)?,
            None => Default::default(),
        };
        let mut out = Vec::with_capacity(runs.len());
        for r in runs {
            let status = statuses.get(&r.id).copied().unwrap_or(RunStatus::Pending);
            let s = &r.stages;
            let mut will_run = Vec::new();
            let mut stale_stages = Vec::new();
            let staged = match store {
                // A done run made by other stages (before stages existed) stays as it is.
                Some(st) if status == RunStatus::Done => {
                    st.run_training(&r.id)?.as_deref() == Some(s.training.as_str())
                }
                _ => true,
            };
            if staged {
                let needs = match store {
                    Some(st) => Some(st.stage_needs(s)?),
                    None => None,
                };
                let train = needs.as_ref().is_none_or(|n| n.train);
                let generate = needs.as_ref().is_none_or(|n| n.generate);
                if train && trainings.insert(s.training.clone()) {
                    will_run.push(Stage::Train);
                }
                if generate && generations.insert(s.generation.clone()) {
                    will_run.push(Stage::Generate);
                }
                let judge: Vec<&String> = match &needs {
                    Some(n) => n.judge.iter().map(|v| &v.id).collect(),
                    None => s.verdicts.iter().map(|v| &v.id).collect(),
                };
                let new_sets = judge
                    .into_iter()
                    .filter(|id| sets.insert((*id).clone()))
                    .count();
                if new_sets > 0 {
                    will_run.push(Stage::Judge);
                }
            }
            // What made a done run (its registered stages; a run from before stages has its
            // own), and what a pending run would reuse.
            if let Some(st) = store {
                let made = match (status, staged) {
                    (RunStatus::Done, false) => st.registered_stages(&r.id)?,
                    _ => Some(s.clone()),
                };
                if let Some(made) = made {
                    for d in st.done_stages(&made)? {
                        if let Some(reason) = d.provenance.as_ref().and_then(stale) {
                            stale_stages.push(StaleStage {
                                stage: d.stage,
                                id: d.id,
                                reason,
                            });
                        }
                    }
                }
            }
            let sharing = match &r.sharing {
                Sharing::Alone => None,
                Sharing::PrefixOf(n) => Some(format!(
                    "its model is the {n}-epoch training's checkpoint after {} \
                     (a constant schedule makes it an exact prefix)",
                    epochs(r.config.train.epochs)
                )),
                Sharing::Refused(why) => Some(format!(
                    "trains its own {} rather than a prefix of a longer run: {why}",
                    epochs(r.config.train.epochs)
                )),
            };
            out.push(RunPreview {
                status,
                will_run,
                sharing,
                stale: stale_stages,
            });
        }
        Ok(out)
    }
}
