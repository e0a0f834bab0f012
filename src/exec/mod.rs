//! The local executor: claims pending runs and the stages they need, runs N at a time on
//! worker threads, and funnels every event through one thread that owns the store (the
//! only writer) and hands the same events to the reporter (the only printer). A run whose
//! stage another run of this process is producing waits for it and then reuses it.

pub mod collect;
pub mod preview;
pub mod slurm;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::RunOptions;
use crate::eval::Prediction;
use crate::plan::stages::StageIds;
use crate::plan::{Plan, PlannedRun};
use crate::store::{
    Claim, Ownership, Record, RunStatus, Stage, StageClaim, StageNeeds, Store, StoreError,
};

/// What execution reports. Records go to the store; everything goes to the reporter.
#[derive(Debug, Clone)]
pub enum Event {
    SweepStarted {
        sweep: String,
        total: usize,
        to_run: usize,
    },
    RunSkipped {
        run_id: String,
        reason: &'static str,
    },
    RunStarted {
        run_id: String,
        label: String,
        /// The device ordinals `--devices` pinned the run to; empty when not pinned.
        devices: Vec<usize>,
        /// The stages it runs; the others are done and reused.
        stages: Vec<Stage>,
    },
    /// A stage of a run is complete: its rows are in, and it is never run again.
    StageFinished {
        run_id: String,
        stage: Stage,
        id: String,
        duration_s: f64,
        /// What produced it ([`crate::run::provenance`]).
        provenance: serde_json::Value,
    },
    /// A run continues from a checkpoint of an earlier attempt.
    RunResumed {
        run_id: String,
        step: u64,
        checkpoint: String,
    },
    Phase {
        run_id: String,
        phase: &'static str,
        total: u64,
    },
    Progress {
        run_id: String,
        pos: u64,
        message: String,
    },
    Record(Record),
    RunFinished {
        run_id: String,
        status: RunStatus,
        error: Option<String>,
        duration_s: f64,
    },
    SweepFinished(SweepOutcome),
}

/// Consumes events for display; implementations never touch the store.
pub trait Reporter {
    fn event(&mut self, e: &Event);
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepOutcome {
    pub sweep: String,
    pub done: usize,
    pub skipped: usize,
    pub failed: usize,
    pub diverged: usize,
    pub interrupted: usize,
    pub busy: usize,
}

impl SweepOutcome {
    pub fn all_ok(&self) -> bool {
        self.failed == 0 && self.diverged == 0 && self.interrupted == 0 && self.busy == 0
    }
}

pub struct ExecOptions {
    /// Runs at a time, each on its configured device (ignored with `devices`).
    pub jobs: usize,
    /// `--devices`: device ordinals to pin runs to. Each run takes `PlannedRun::devices` of
    /// them (its first is the run's device when the run is on a GPU) and holds them until
    /// it ends; the queue never hands out a device twice, and a run that needs more than
    /// are free waits, in plan order.
    pub devices: Option<Vec<usize>>,
    /// Whether a `running` row of another process is respected ([`Ownership::CheckOwner`])
    /// or taken over (a Slurm task, which the scheduler runs once).
    pub ownership: Ownership,
    /// Results folder: run artifacts go to `<results>/runs/<id>/`.
    pub results: PathBuf,
    pub cancel: Arc<AtomicBool>,
    pub git_rev: Option<String>,
    /// The database this process writes (the main one, or a Slurm task's shard); the LLM
    /// judge caches its answers there.
    pub db: Option<PathBuf>,
    /// What one run does: `run::run_stages` (its stages that are not done); benchmarks
    /// of the executor's own overhead put a no-op here.
    pub runner: Runner,
}

/// Everything one run is given.
pub struct RunContext<'a> {
    pub run_id: &'a str,
    pub config: &'a crate::config::RunConfig,
    pub options: &'a RunOptions,
    /// The run's own folder: its resolved config and stage ids.
    pub dir: &'a Path,
    /// The results folder (trainings live in `<results>/trainings/<id>/`).
    pub results: &'a Path,
    pub stages: &'a StageIds,
    /// The stages to run; the others are done.
    pub needs: &'a StageNeeds,
    /// The stored predictions, when the generation is done and verdicts are not.
    pub predictions: &'a [Prediction],
    /// See [`ExecOptions::db`].
    pub db: Option<&'a Path>,
    pub cancel: &'a AtomicBool,
    /// Events go to the store's writer and the reporter.
    pub emit: &'a dyn Fn(Event),
}

/// How a run failed, as the executor records it.
pub enum RunFailure {
    Interrupted,
    Diverged(String),
    Failed(String),
}

/// One run's stages, start to end.
pub type Runner = fn(&RunContext) -> Result<(), RunFailure>;

/// What a worker is handed: the run, its devices, what it must do and the predictions it
/// judges.
type Work = (PlannedRun, Vec<usize>, StageNeeds, Vec<Prediction>);

/// Rows are committed in batches of this size or this age, and always at a run's end.
const FLUSH_EVERY: usize = 512;
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// How often a process waiting for runs that another process trains looks again.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Registers the plan's sweep and runs the runs that are not done. Store errors abort; a
/// failing run does not.
pub fn execute(
    plan: &Plan,
    store: &mut Store,
    opts: &ExecOptions,
    reporter: &mut dyn Reporter,
) -> Result<SweepOutcome, StoreError> {
    store.register_plan(plan)?;
    execute_runs(
        &plan.experiment.name,
        &plan.runs,
        &plan.experiment.run,
        store,
        opts,
        reporter,
    )
}

/// Runs the given runs (already in the store) that are not done; `sweep` names them in
/// events. A Slurm task calls this with its one run.
pub fn execute_runs(
    sweep: &str,
    runs: &[PlannedRun],
    run_opts: &RunOptions,
    store: &mut Store,
    opts: &ExecOptions,
    reporter: &mut dyn Reporter,
) -> Result<SweepOutcome, StoreError> {
    let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    let statuses = store.statuses(&ids)?;
    let mut outcome = SweepOutcome {
        sweep: sweep.to_string(),
        ..Default::default()
    };
    // In plan order.
    let mut queue: Vec<&PlannedRun> = Vec::new();
    for r in runs {
        if statuses.get(&r.id) == Some(&RunStatus::Done)
            && !store.reopen_if_incomplete(&r.id, &r.stages)?
        {
            outcome.skipped += 1;
            reporter.event(&Event::RunSkipped {
                run_id: r.id.clone(),
                reason: "done",
            });
        } else {
            queue.push(r);
        }
    }
    reporter.event(&Event::SweepStarted {
        sweep: sweep.to_string(),
        total: runs.len(),
        to_run: queue.len(),
    });
    let host = hostname();
    let (ev_tx, ev_rx) = mpsc::channel::<Event>();
    let (work_tx, work_rx) = mpsc::channel::<Work>();
    let work_rx = Arc::new(Mutex::new(work_rx));
    let mut slots = Slots::new(opts.devices.as_deref(), opts.jobs);
    let jobs = slots.size;

    std::thread::scope(|scope| -> Result<(), StoreError> {
        for _ in 0..jobs {
            let rx = Arc::clone(&work_rx);
            let tx = ev_tx.clone();
            let cancel = Arc::clone(&opts.cancel);
            let results = opts.results.clone();
            scope.spawn(move || loop {
                let next = rx.lock().expect("work queue").recv();
                let Ok((run, devices, needs, predictions)) = next else {
                    break;
                };
                let t0 = Instant::now();
                let emit = |e: Event| {
                    let _ = tx.send(e);
                };
                let config = pinned(&run.config, &devices);
                let dir = results.join("runs").join(&run.id);
                let res = (opts.runner)(&RunContext {
                    run_id: &run.id,
                    config: &config,
                    options: run_opts,
                    dir: &dir,
                    results: &results,
                    stages: &run.stages,
                    needs: &needs,
                    predictions: &predictions,
                    db: opts.db.as_deref(),
                    cancel: &cancel,
                    emit: &emit,
                });
                let (status, error) = match res {
                    Ok(()) => (RunStatus::Done, None),
                    Err(RunFailure::Interrupted) => {
                        (RunStatus::Interrupted, Some("interrupted".to_string()))
                    }
                    Err(RunFailure::Diverged(e)) => (RunStatus::Diverged, Some(e)),
                    Err(RunFailure::Failed(e)) => (RunStatus::Failed, Some(e)),
                };
                emit(Event::RunFinished {
                    run_id: run.id.clone(),
                    status,
                    error,
                    duration_s: t0.elapsed().as_secs_f64(),
                });
            });
        }
        drop(ev_tx);

        let mut in_flight = 0usize;
        let mut pending_rows: Vec<Record> = Vec::new();
        let mut last_flush = Instant::now();
        // Runs another process is running (or producing a stage of): polled until they
        // end, so that this process's report and exit code cover the whole sweep.
        let mut waiting: Vec<String> = Vec::new();
        let mut announced: HashSet<String> = HashSet::new();
        // The stages each in-flight run is producing: a run that needs one of them waits
        // for it, then reuses it.
        let mut producing: HashMap<String, Vec<String>> = HashMap::new();
        let mut dispatch = |store: &mut Store,
                            queue: &mut Vec<&PlannedRun>,
                            waiting: &mut Vec<String>,
                            outcome: &mut SweepOutcome,
                            reporter: &mut dyn Reporter,
                            slots: &mut Slots,
                            producing: &mut HashMap<String, Vec<String>>|
         -> Result<bool, StoreError> {
            // The stages this process is producing now (none: no run need wait).
            let busy: HashSet<String> = producing.values().flatten().cloned().collect();
            let mut i = 0;
            while i < queue.len() {
                if opts.cancel.load(Ordering::Relaxed) {
                    queue.clear();
                    return Ok(false);
                }
                let r = queue[i];
                if !busy.is_empty() && !r.stages.training.is_empty() {
                    let needs = store.stage_needs(&r.stages)?;
                    if produced_ids(&r.stages, &needs)
                        .iter()
                        .any(|id| busy.contains(id))
                    {
                        i += 1;
                        continue;
                    }
                }
                // The next run waits for a slot (its devices) to free up; later runs wait
                // behind it.
                let Some(taken) = slots.peek(r.devices) else {
                    return Ok(false);
                };
                queue.remove(i);
                let devices = slots.pinned(&taken);
                let pinned_to = (!devices.is_empty()).then(|| {
                    devices
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                });
                match store.claim(
                    &r.id,
                    &host,
                    opts.git_rev.as_deref(),
                    opts.ownership,
                    pinned_to.as_deref(),
                )? {
                    Claim::Claimed => {
                        let needs = if r.stages.training.is_empty() {
                            StageNeeds::default()
                        } else {
                            // The model this run generates with: its training's final
                            // model, or the checkpoint after its epochs.
                            let model = match r.stages.checkpoint_epoch {
                                Some(e) => format!("epochs/{e}/config.json"),
                                None => "model/config.json".to_string(),
                            };
                            let present = |dir: &str| opts.results.join(dir).join(&model).is_file();
                            match store.claim_stages(&r.stages, &host, opts.ownership, &present)? {
                                StageClaim::Claimed(n) => n,
                                StageClaim::Busy => {
                                    store.unclaim(&r.id)?;
                                    if announced.insert(r.id.clone()) {
                                        reporter.event(&Event::RunSkipped {
                                            run_id: r.id.clone(),
                                            reason: "a stage it needs is running in another process; waiting for it",
                                        });
                                    }
                                    waiting.push(r.id.clone());
                                    continue;
                                }
                            }
                        };
                        let predictions = if !needs.generate && !needs.judge.is_empty() {
                            store.predictions(&r.stages.generation)?
                        } else {
                            Vec::new()
                        };
                        producing.insert(r.id.clone(), produced_ids(&r.stages, &needs));
                        slots.take(&r.id, &taken);
                        reporter.event(&Event::RunStarted {
                            run_id: r.id.clone(),
                            label: label(r),
                            devices: devices.clone(),
                            stages: needs.stages(),
                        });
                        let _ = work_tx.send((r.clone(), devices, needs, predictions));
                        return Ok(true);
                    }
                    Claim::AlreadyDone => {
                        outcome.skipped += 1;
                        reporter.event(&Event::RunSkipped {
                            run_id: r.id.clone(),
                            reason: "done by another process",
                        });
                    }
                    Claim::Busy => {
                        if announced.insert(r.id.clone()) {
                            reporter.event(&Event::RunSkipped {
                                run_id: r.id.clone(),
                                reason: "running in another process; waiting for it",
                            });
                        }
                        waiting.push(r.id.clone());
                    }
                }
            }
            Ok(false)
        };
        loop {
            while dispatch(
                store,
                &mut queue,
                &mut waiting,
                &mut outcome,
                reporter,
                &mut slots,
                &mut producing,
            )? {
                in_flight += 1;
            }
            if in_flight > 0 {
                // Events until a run finishes or a stage is done: either may let queued
                // runs start.
                for ev in ev_rx.iter() {
                    match &ev {
                        Event::Record(r) => {
                            pending_rows.push(r.clone());
                            if pending_rows.len() >= FLUSH_EVERY
                                || last_flush.elapsed() >= FLUSH_AFTER
                            {
                                store.write(&pending_rows)?;
                                pending_rows.clear();
                                last_flush = Instant::now();
                            }
                        }
                        Event::StageFinished {
                            run_id,
                            stage,
                            id,
                            duration_s,
                            provenance,
                        } => {
                            // The stage's last rows and its status land together.
                            store.finish_stage(
                                *stage,
                                id,
                                *duration_s,
                                provenance,
                                &pending_rows,
                            )?;
                            pending_rows.clear();
                            if let Some(p) = producing.get_mut(run_id) {
                                p.retain(|x| x != id);
                            }
                            reporter.event(&ev);
                            break;
                        }
                        Event::RunFinished {
                            run_id,
                            status,
                            error,
                            duration_s,
                        } => {
                            // Rows and final status land in one transaction.
                            store.finish(
                                run_id,
                                *status,
                                error.as_deref(),
                                *duration_s,
                                &pending_rows,
                            )?;
                            pending_rows.clear();
                            match status {
                                RunStatus::Done => outcome.done += 1,
                                RunStatus::Diverged => outcome.diverged += 1,
                                RunStatus::Interrupted => outcome.interrupted += 1,
                                _ => outcome.failed += 1,
                            }
                            in_flight -= 1;
                            slots.give_back(run_id);
                            producing.remove(run_id);
                            reporter.event(&ev);
                            break;
                        }
                        _ => reporter.event(&ev),
                    }
                }
                continue;
            }
            if waiting.is_empty() || opts.cancel.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(WAIT_POLL);
            // Back on the queue in plan order.
            let mut back: Vec<&PlannedRun> =
                runs.iter().filter(|r| waiting.contains(&r.id)).collect();
            back.append(&mut queue);
            queue = back;
            waiting.clear();
        }
        outcome.busy = waiting.len();
        drop(work_tx);
        Ok(())
    })?;
    reporter.event(&Event::SweepFinished(outcome.clone()));
    Ok(outcome)
}

/// The ids of the stages a run with these needs produces.
fn produced_ids(stages: &StageIds, needs: &StageNeeds) -> Vec<String> {
    let mut out = Vec::new();
    if needs.train {
        out.push(stages.training.clone());
    }
    if needs.generate {
        out.push(stages.generation.clone());
    }
    out.extend(needs.judge.iter().map(|v| v.id.clone()));
    out
}

/// Run slots. Without `--devices`, `jobs` anonymous slots and a run takes one; with it,
/// the device ordinals, a run takes its `devices` and is pinned to them. A slot is held
/// from the run's claim to its end, so no more runs are claimed than can run.
struct Slots {
    /// Whether slots are devices the runs are pinned to.
    pinned: bool,
    size: usize,
    /// Free slots, lowest first.
    free: Vec<usize>,
    held: std::collections::HashMap<String, Vec<usize>>,
}

impl Slots {
    fn new(devices: Option<&[usize]>, jobs: usize) -> Slots {
        let free: Vec<usize> = match devices {
            Some(d) => d.to_vec(),
            None => (0..jobs.max(1)).collect(),
        };
        Slots {
            pinned: devices.is_some(),
            size: free.len().max(1),
            free,
            held: Default::default(),
        }
    }

    /// The lowest free slots for a run that needs `devices`, if that many are free. A
    /// need is capped at the pool's size (the command line refuses such a plan before it
    /// runs); without `--devices` every run needs one.
    fn peek(&self, devices: usize) -> Option<Vec<usize>> {
        let need = if self.pinned {
            devices.clamp(1, self.size)
        } else {
            1
        };
        (need <= self.free.len()).then(|| self.free[..need].to_vec())
    }

    /// The devices a run holding `slots` is pinned to: none without `--devices`.
    fn pinned(&self, slots: &[usize]) -> Vec<usize> {
        if self.pinned {
            slots.to_vec()
        } else {
            Vec::new()
        }
    }

    fn take(&mut self, run_id: &str, slots: &[usize]) {
        self.free.retain(|d| !slots.contains(d));
        self.held.insert(run_id.to_string(), slots.to_vec());
    }

    fn give_back(&mut self, run_id: &str) {
        if let Some(d) = self.held.remove(run_id) {
            self.free.extend(d);
            self.free.sort_unstable();
        }
    }
}

/// The config a run executes with: a GPU run pinned by `--devices` runs on its first
/// device (the run id, computed from the planned config, does not change). CPU runs stay
/// on the CPU; the devices only limit how many run at once.
fn pinned(config: &crate::config::RunConfig, devices: &[usize]) -> crate::config::RunConfig {
    let mut c = config.clone();
    if let Some(&first) = devices.first() {
        if c.model.device.is_gpu() {
            c.model.device = crate::config::DeviceSpec::Cuda(first);
        }
    }
    c
}

/// `key=value` pairs of a run's varying axes, for display.
pub fn label(r: &PlannedRun) -> String {
    r.axes
        .iter()
        .map(|(k, v)| {
            let name = k.rsplit('.').next().unwrap_or(k);
            format!("{name}={}", crate::plan::display_value(Some(v)))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// The git revision of the working directory, if it is a repository.
pub fn git_rev() -> Option<String> {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn nap(_: &RunContext) -> Result<(), RunFailure> {
        std::thread::sleep(Duration::from_millis(15));
        Ok(())
    }

    /// Options that run every run as a short nap.
    fn nap_options(dir: &std::path::Path, jobs: usize, devices: Option<Vec<usize>>) -> ExecOptions {
        ExecOptions {
            jobs,
            devices,
            ownership: Ownership::CheckOwner,
            results: dir.to_path_buf(),
            cancel: Arc::new(AtomicBool::new(false)),
            git_rev: None,
            db: None,
            runner: nap,
        }
    }

    /// Every device held by a running run, replayed from the events in the order the
    /// executor emitted them.
    #[derive(Default)]
    struct Ledger {
        held: HashMap<String, Vec<usize>>,
        max_runs: usize,
        started: Vec<(String, Vec<usize>)>,
        violations: Vec<String>,
    }

    use std::collections::HashMap;

    impl Reporter for Ledger {
        fn event(&mut self, e: &Event) {
            match e {
                Event::RunStarted {
                    run_id, devices, ..
                } => {
                    let in_use: BTreeSet<usize> = self.held.values().flatten().copied().collect();
                    if devices.iter().any(|d| in_use.contains(d)) {
                        self.violations
                            .push(format!("{run_id} got {devices:?} while {in_use:?} in use"));
                    }
                    self.held.insert(run_id.clone(), devices.clone());
                    self.max_runs = self.max_runs.max(self.held.len());
                    self.started.push((run_id.clone(), devices.clone()));
                }
                Event::RunFinished { run_id, .. } => {
                    self.held.remove(run_id);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn devices_are_never_handed_out_twice_and_big_runs_take_several() {
        let text = r#"
            [model]
            name = "tiny"
            [grid]
            "train.seed" = [1, 2, 3, 4, 5, 6]
            "train.epochs" = [1, 2]
            [[resources]]
            devices = 2
            where = { "train.epochs" = 2 }
        "#;
        let exp =
            crate::config::load_experiment_text(std::path::Path::new("t.toml"), text, None, &[])
                .unwrap();
        let plan = crate::plan::expand(&exp).unwrap();
        let needs: HashMap<String, usize> = plan
            .runs
            .iter()
            .map(|r| (r.id.clone(), r.devices))
            .collect();
        assert_eq!(needs.values().filter(|n| **n == 2).count(), 6);

        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("a.db")).unwrap();
        let pool = vec![3, 5, 7];
        let opts = nap_options(dir.path(), 1, Some(pool.clone()));
        let mut ledger = Ledger::default();
        let outcome = execute(&plan, &mut store, &opts, &mut ledger).unwrap();
        assert_eq!(outcome.done, 12);
        assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
        for (id, devices) in &ledger.started {
            assert_eq!(devices.len(), needs[id], "{id}");
            assert!(devices.iter().all(|d| pool.contains(d)), "{devices:?}");
        }
        // Three devices: two one-device runs, or one of each kind, run side by side.
        assert!(ledger.max_runs >= 2, "never ran two at once");
        // Started in plan order (the queue does not skip ahead of a waiting big run).
        let order: Vec<&String> = ledger.started.iter().map(|(id, _)| id).collect();
        let planned: Vec<&String> = plan.runs.iter().map(|r| &r.id).collect();
        assert_eq!(order, planned);
        // The store records where each run ran.
        let pinned: i64 = store
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM runs WHERE devices IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(pinned, 12);
    }

    #[test]
    fn without_devices_no_more_runs_are_claimed_than_jobs() {
        let text = "[model]\nname = \"tiny\"\n[grid]\n\"train.seed\" = [1, 2, 3, 4, 5, 6, 7, 8]\n";
        let exp =
            crate::config::load_experiment_text(std::path::Path::new("t.toml"), text, None, &[])
                .unwrap();
        let plan = crate::plan::expand(&exp).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("a.db")).unwrap();
        let opts = nap_options(dir.path(), 2, None);
        let mut ledger = Ledger::default();
        let outcome = execute(&plan, &mut store, &opts, &mut ledger).unwrap();
        assert_eq!(outcome.done, 8);
        // A run is claimed (and announced) only when a worker is free for it.
        assert_eq!(ledger.max_runs, 2);
        assert!(
            ledger.started.iter().all(|(_, d)| d.is_empty()),
            "not pinned"
        );
    }
}
