//! The local executor: claims pending runs, runs N at a time on worker threads, and
//! funnels every event through one thread that owns the store (the only writer) and
//! hands the same events to the reporter (the only printer).

mod episode;
mod pipeline;

pub use pipeline::{device_for, run_dir, run_one, RunError};

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::plan::{Plan, PlannedRun};
use crate::store::{Claim, Record, RunStatus, Store, StoreError};

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
    pub jobs: usize,
    /// Results folder: run artifacts go to `<results>/runs/<id>/`.
    pub results: PathBuf,
    pub cancel: Arc<AtomicBool>,
    pub git_rev: Option<String>,
    /// What one run does: [`run_one`] (train and evaluate); benchmarks of the executor's
    /// own overhead put a no-op here.
    pub runner: Runner,
}

/// One run, start to end: `(run id, config, run options, run folder, cancel flag, emit)`.
pub type Runner = fn(
    &str,
    &crate::config::RunConfig,
    &crate::config::RunOptions,
    &std::path::Path,
    &AtomicBool,
    &dyn Fn(Event),
) -> Result<(), RunError>;

/// Rows are committed in batches of this size or this age, and always at a run's end.
const FLUSH_EVERY: usize = 512;
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// How often a process waiting for runs that another process trains looks again.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Runs the plan's runs that are not done. Store errors abort; a failing run does not.
pub fn execute(
    plan: &Plan,
    store: &mut Store,
    opts: &ExecOptions,
    reporter: &mut dyn Reporter,
) -> Result<SweepOutcome, StoreError> {
    store.register_plan(plan)?;
    let ids: Vec<String> = plan.runs.iter().map(|r| r.id.clone()).collect();
    let statuses = store.statuses(&ids)?;
    let mut outcome = SweepOutcome {
        sweep: plan.experiment.name.clone(),
        ..Default::default()
    };
    let mut queue: Vec<&PlannedRun> = Vec::new();
    for r in &plan.runs {
        if statuses.get(&r.id) == Some(&RunStatus::Done) {
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
        sweep: plan.experiment.name.clone(),
        total: plan.runs.len(),
        to_run: queue.len(),
    });
    queue.reverse(); // pop() takes them in plan order
    let host = hostname();
    let (ev_tx, ev_rx) = mpsc::channel::<Event>();
    let (work_tx, work_rx) = mpsc::channel::<PlannedRun>();
    let work_rx = Arc::new(Mutex::new(work_rx));
    let jobs = opts.jobs.max(1);

    std::thread::scope(|scope| -> Result<(), StoreError> {
        for _ in 0..jobs {
            let rx = Arc::clone(&work_rx);
            let tx = ev_tx.clone();
            let cancel = Arc::clone(&opts.cancel);
            let results = opts.results.clone();
            let run_opts = &plan.experiment.run;
            scope.spawn(move || loop {
                let next = rx.lock().expect("work queue").recv();
                let Ok(run) = next else { break };
                let t0 = Instant::now();
                let emit = |e: Event| {
                    let _ = tx.send(e);
                };
                let res = (opts.runner)(
                    &run.id,
                    &run.config,
                    run_opts,
                    &run_dir(&results, &run.id),
                    &cancel,
                    &emit,
                );
                let (status, error) = match res {
                    Ok(()) => (RunStatus::Done, None),
                    Err(RunError::Train(crate::train::TrainError::Interrupted)) => {
                        (RunStatus::Interrupted, Some("interrupted".to_string()))
                    }
                    Err(RunError::Train(e @ crate::train::TrainError::Diverged { .. })) => {
                        (RunStatus::Diverged, Some(e.to_string()))
                    }
                    Err(e) => (RunStatus::Failed, Some(e.to_string())),
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
        // Runs another process is training: polled until they end, so that this
        // process's report and exit code cover the whole sweep.
        let mut waiting: Vec<String> = Vec::new();
        let mut announced: HashSet<String> = HashSet::new();
        let mut dispatch = |store: &mut Store,
                            queue: &mut Vec<&PlannedRun>,
                            waiting: &mut Vec<String>,
                            outcome: &mut SweepOutcome,
                            reporter: &mut dyn Reporter|
         -> Result<bool, StoreError> {
            while let Some(r) = queue.pop() {
                if opts.cancel.load(Ordering::Relaxed) {
                    queue.clear();
                    return Ok(false);
                }
                match store.claim(&r.id, &host, opts.git_rev.as_deref())? {
                    Claim::Claimed => {
                        reporter.event(&Event::RunStarted {
                            run_id: r.id.clone(),
                            label: label(r),
                        });
                        let _ = work_tx.send(r.clone());
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
            for _ in 0..jobs {
                if dispatch(store, &mut queue, &mut waiting, &mut outcome, reporter)? {
                    in_flight += 1;
                }
            }
            if in_flight > 0 {
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
                            reporter.event(&ev);
                            if dispatch(store, &mut queue, &mut waiting, &mut outcome, reporter)? {
                                in_flight += 1;
                            }
                        }
                        _ => reporter.event(&ev),
                    }
                    if in_flight == 0 {
                        break;
                    }
                }
            }
            if waiting.is_empty() || opts.cancel.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(WAIT_POLL);
            // Back on the queue in plan order (pop takes from the end).
            queue.extend(plan.runs.iter().filter(|r| waiting.contains(&r.id)).rev());
            waiting.clear();
        }
        outcome.busy = waiting.len();
        drop(work_tx);
        Ok(())
    })?;
    reporter.event(&Event::SweepFinished(outcome.clone()));
    Ok(outcome)
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
