//! `ablate submit --slurm`, `ablate task`, `ablate collect` and `ablate status`: the
//! cluster path. Submitting writes an sbatch script and a manifest per job array; each
//! task writes its own shard database; collect merges the shards into the main one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::{exit, internal, load_plans, results_dir, store_failure, user, Failure, Inputs};
use crate::config::SlurmSpec;
use crate::exec::collect::{task_states, TaskReport, TaskState};
use crate::exec::slurm::{self, Manifest, ManifestTask, ScriptInputs, SlurmError};
use crate::exec::{self, ExecOptions};
use crate::plan::{canonical_json, PlannedRun};
use crate::store::{Ownership, RunStatus, SlurmTask, Store, StoreError};
use crate::ui;

/// sbatch options on the command line; each wins over the experiment's `[slurm]` table.
#[derive(Debug, Args, Default)]
pub struct SlurmFlags {
    /// Partition (queue) to submit to.
    #[arg(long)]
    pub partition: Option<String>,
    /// Generic resources per task, e.g. gpu:1 (default: gpu:<devices> for GPU runs).
    #[arg(long)]
    pub gres: Option<String>,
    /// Time limit per task, e.g. 04:00:00.
    #[arg(long)]
    pub time: Option<String>,
    /// Memory per task, e.g. 32G.
    #[arg(long)]
    pub mem: Option<String>,
    /// CPUs per task.
    #[arg(long)]
    pub cpus_per_task: Option<usize>,
    /// At most this many tasks of an array at once.
    #[arg(long)]
    pub max_parallel: Option<usize>,
    /// Any other sbatch option, as on sbatch's command line (repeatable), e.g.
    /// --sbatch-arg=--account=lab.
    #[arg(long = "sbatch-arg", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
}

impl SlurmFlags {
    fn spec(&self) -> SlurmSpec {
        SlurmSpec {
            partition: self.partition.clone(),
            gres: self.gres.clone(),
            time: self.time.clone(),
            mem: self.mem.clone(),
            cpus_per_task: self.cpus_per_task,
            max_parallel: self.max_parallel,
            sbatch_args: self.sbatch_args.clone(),
            ..Default::default()
        }
    }
}

fn slurm_failure(e: SlurmError) -> Failure {
    match e {
        SlurmError::Manifest { .. } => user(e),
        _ => Failure {
            code: exit::SCHEDULER,
            error: e.into(),
        },
    }
}

fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(p)
        .with_context(|| format!("resolving {}", p.display()))
        .map_err(internal)
}

/// A fresh submission folder `<results>/slurm/<sweep>-<n>`.
fn submission_dir(results: &Path, sweep: &str) -> Result<PathBuf, Failure> {
    let base = results.join("slurm");
    std::fs::create_dir_all(&base)
        .with_context(|| format!("creating {}", base.display()))
        .map_err(internal)?;
    for n in 1.. {
        let dir = base.join(format!("{sweep}-{n}"));
        // create_dir fails on an existing folder, so two submitters never share one.
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(internal(
                    anyhow::Error::new(e).context(format!("creating {}", dir.display())),
                ))
            }
        }
    }
    unreachable!("some submission folder name is free")
}

/// The squeue answer, or None with a warning (a dry run, or collect on a machine that is
/// not a submit host, can go on without it).
fn queue_or_warn() -> Option<slurm::Queue> {
    match slurm::squeue() {
        Ok(q) => Some(q),
        Err(e) => {
            eprintln!("warning: {e}; queue states are unknown");
            None
        }
    }
}

pub fn cmd_submit(
    db: &Path,
    inputs: &Inputs,
    flags: &SlurmFlags,
    dry_run: bool,
    json: bool,
) -> Result<u8, Failure> {
    let plans = load_plans(inputs)?;
    let db = absolute(db)?;
    let results = results_dir(&db);
    let mut store = Store::open(&db).map_err(store_failure)?;
    // The schema and the runs exist before any task starts: tasks never create the main DB.
    for p in &plans {
        store.register_plan(p).map_err(store_failure)?;
    }
    let queue = if dry_run {
        queue_or_warn()
    } else {
        Some(slurm::squeue().map_err(slurm_failure)?)
    };
    // Finished shards first, so that only what is really not done is submitted again.
    let tasks = store.slurm_tasks().map_err(store_failure)?;
    let states: HashMap<String, TaskState> = task_states(&mut store, tasks, queue.as_ref(), true)
        .map_err(store_failure)?
        .into_iter()
        .map(|r| (r.task.run_id, r.state))
        .collect();

    let workdir = absolute(Path::new("."))?;
    let ablate_bin = std::env::current_exe()
        .context("locating the ablate binary")
        .map_err(internal)?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut arrays = Vec::new();
    let mut in_queue = 0usize;
    for p in &plans {
        let ids: Vec<String> = p.runs.iter().map(|r| r.id.clone()).collect();
        let statuses = store.statuses(&ids).map_err(store_failure)?;
        // One array per device need (and CPU or GPU), since an array's tasks share options.
        let mut groups: BTreeMap<(usize, bool), Vec<&PlannedRun>> = BTreeMap::new();
        for r in &p.runs {
            if statuses.get(&r.id) == Some(&RunStatus::Done) || !seen.insert(r.id.clone()) {
                continue;
            }
            match states.get(&r.id) {
                Some(s) if !s.needs_resubmit() && *s != TaskState::Done => {
                    in_queue += 1;
                    continue;
                }
                _ => {}
            }
            // `auto` asks for a GPU on the compute node (this one may have none).
            let gpu = r.config.model.device != crate::config::DeviceSpec::Cpu;
            groups.entry((r.devices, gpu)).or_default().push(r);
        }
        let spec = slurm::merge_spec(&p.experiment.slurm, &flags.spec());
        let ablate = spec
            .ablate
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| ablate_bin.clone());
        for ((devices, gpu), runs) in groups {
            let dir = submission_dir(&results, &p.experiment.name)?;
            let manifest = Manifest {
                version: 1,
                results: results.clone(),
                tasks: runs
                    .iter()
                    .map(|r| ManifestTask {
                        run_id: r.id.clone(),
                        sweep: p.experiment.name.clone(),
                        axes: r.axes.clone(),
                        devices: r.devices,
                        config: r.config.clone(),
                        stages: Some(task_stages(r)),
                        run: p.experiment.run.clone(),
                        shard: slurm::shard_path(&results, &r.id),
                    })
                    .collect(),
            };
            let manifest_path = dir.join("manifest.json");
            let text = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
            std::fs::write(&manifest_path, text)
                .with_context(|| format!("writing {}", manifest_path.display()))
                .map_err(internal)?;
            let script = slurm::script(&ScriptInputs {
                job_name: &format!("ablate-{}", p.experiment.name),
                tasks: runs.len(),
                devices,
                gpu,
                spec: &spec,
                submit_dir: &dir,
                workdir: &workdir,
                ablate: &ablate,
                manifest: &manifest_path,
            });
            let script_path = dir.join("submit.sbatch");
            std::fs::write(&script_path, &script)
                .with_context(|| format!("writing {}", script_path.display()))
                .map_err(internal)?;
            let job_id = if dry_run {
                None
            } else {
                let job = slurm::sbatch(&script_path).map_err(slurm_failure)?;
                let tasks: Vec<SlurmTask> = manifest
                    .tasks
                    .iter()
                    .enumerate()
                    .map(|(i, t)| SlurmTask {
                        job_id: job.clone(),
                        task_id: i as i64,
                        run_id: t.run_id.clone(),
                        shard: t.shard.clone(),
                        submit_dir: dir.clone(),
                    })
                    .collect();
                store.record_slurm_tasks(&tasks).map_err(store_failure)?;
                Some(job)
            };
            arrays.push(serde_json::json!({
                "sweep": p.experiment.name,
                "job_id": job_id,
                "tasks": runs.len(),
                "run_ids": runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
                "devices": devices,
                "dir": dir.display().to_string(),
                "script": script_path.display().to_string(),
            }));
            if !json {
                match &job_id {
                    Some(j) => eprintln!(
                        "submitted job {j}: {} tasks of {} ({})",
                        runs.len(),
                        p.experiment.name,
                        dir.display()
                    ),
                    None => {
                        eprintln!("dry run: would submit {}", script_path.display());
                        print!("{script}");
                    }
                }
            }
        }
    }
    if json {
        let v =
            serde_json::json!({"arrays": arrays, "already_queued": in_queue, "dry_run": dry_run});
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else if arrays.is_empty() {
        eprintln!(
            "nothing to submit: every run is done{}",
            if in_queue > 0 {
                format!(" or already queued ({in_queue})")
            } else {
                String::new()
            }
        );
    } else if !dry_run {
        eprintln!("watch with `ablate status`; merge results with `ablate collect`");
    }
    Ok(exit::OK)
}

/// One task of a submitted array: its run, into its shard.
/// A task's stages: its own training, never a longer run's (array tasks run apart, so a
/// task cannot wait for another's epochs; each trains in its own folder).
fn task_stages(r: &PlannedRun) -> crate::plan::stages::StageIds {
    match r.stages.checkpoint_epoch {
        None => r.stages.clone(),
        Some(_) => crate::plan::stages::stage_ids(
            &r.config,
            r.stages.left_out.as_deref(),
            r.config.train.epochs,
        ),
    }
}

pub fn cmd_task(manifest: &Path, index: Option<usize>) -> Result<u8, Failure> {
    let index = match index {
        Some(i) => i,
        None => std::env::var("SLURM_ARRAY_TASK_ID")
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                user(anyhow::anyhow!(
                    "no task index: pass --index or run under Slurm (SLURM_ARRAY_TASK_ID)"
                ))
            })?,
    };
    let m = Manifest::load(manifest).map_err(slurm_failure)?;
    let run = m.task(index).ok_or_else(|| {
        user(anyhow::anyhow!(
            "{}: no task {index} ({} tasks)",
            manifest.display(),
            m.tasks.len()
        ))
    })?;
    let task = &m.tasks[index];
    let mut run = run;
    if run.stages.training.is_empty() {
        // A manifest from before stages: the task computes its own.
        let mut one = [run];
        crate::plan::assign_stages(&mut one, &manifest.display().to_string())
            .map_err(|p| user(anyhow::anyhow!("{p}")))?;
        let [r] = one;
        run = r;
    }
    let mut shard = Store::open(&task.shard).map_err(store_failure)?;
    shard
        .ensure_run(&run.id, &canonical_json(&run.config))
        .map_err(store_failure)?;
    // Tasks of one array may share a training id: each trains in its run's folder.
    shard
        .ensure_stages(
            &run.id,
            &run.stages,
            Some(&format!("runs/{}/training", run.id)),
        )
        .map_err(store_failure)?;
    let opts = ExecOptions {
        jobs: 1,
        // Slurm numbers a task's GPUs from 0 (CUDA_VISIBLE_DEVICES): a GPU run uses cuda:0.
        devices: Some((0..run.devices.max(1)).collect()),
        ownership: Ownership::Exclusive,
        results: m.results.clone(),
        cancel: super::install_ctrlc(),
        git_rev: exec::git_rev(),
        db: Some(task.shard.clone()),
        runner: crate::run::runner,
    };
    let outcome = exec::execute_runs(
        &task.sweep,
        std::slice::from_ref(&run),
        &task.run,
        &mut shard,
        &opts,
        &mut ui::JsonReporter,
    )
    .map_err(store_failure)?;
    Ok(if outcome.interrupted > 0 {
        exit::INTERRUPTED
    } else if outcome.all_ok() {
        exit::OK
    } else {
        exit::RUNS_FAILED
    })
}

fn task_rows(reports: &[&TaskReport]) -> Vec<Vec<String>> {
    reports
        .iter()
        .map(|r| {
            vec![
                r.task.run_id.clone(),
                format!("{}_{}", r.task.job_id, r.task.task_id),
                r.state.name().to_string(),
                r.state.detail(),
            ]
        })
        .collect()
}

pub fn cmd_collect(db: &Path, json: bool) -> Result<u8, Failure> {
    // Collecting into a database that does not exist is a mistake, not a new database.
    if !db.exists() {
        return Err(store_failure(StoreError::Missing(db.display().to_string())));
    }
    // Opening a current database writes nothing, so a collect with nothing to merge
    // leaves the file as it was.
    let mut store = Store::open(db).map_err(store_failure)?;
    let tasks = store.slurm_tasks().map_err(store_failure)?;
    if tasks.is_empty() {
        if !json {
            eprintln!(
                "no Slurm tasks in {} (submit with `ablate submit --slurm`)",
                db.display()
            );
        } else {
            println!("{}", serde_json::json!({"tasks": []}));
        }
        return Ok(exit::OK);
    }
    let queue = queue_or_warn();
    let reports = task_states(&mut store, tasks, queue.as_ref(), true).map_err(store_failure)?;
    let count = |f: &dyn Fn(&TaskReport) -> bool| reports.iter().filter(|r| f(r)).count();
    let bad = count(&|r| r.state.needs_resubmit());
    if json {
        let v = serde_json::json!({ "tasks": reports });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        let not_done: Vec<&TaskReport> = reports
            .iter()
            .filter(|r| r.state != TaskState::Done)
            .collect();
        if !not_done.is_empty() {
            let headers = ["run", "task", "state", "detail"].map(String::from);
            print!("{}", ui::table(&headers, &task_rows(&not_done)));
        }
        let merged = count(&|r| r.merged);
        println!(
            "merged {merged} run{} ({} were merged before); {} failed, {} missing, {} queued or running",
            if merged == 1 { "" } else { "s" },
            count(&|r| r.state == TaskState::Done && !r.merged),
            count(&|r| matches!(r.state, TaskState::Failed { .. })),
            count(&|r| r.state == TaskState::Missing),
            count(&|r| matches!(
                r.state,
                TaskState::Queued | TaskState::Running { .. } | TaskState::Other { .. }
            )),
        );
        if bad > 0 {
            println!("resubmit the failed and missing runs (only those) with `ablate submit --slurm` and the same experiments");
        }
    }
    Ok(if bad > 0 { exit::RUNS_FAILED } else { exit::OK })
}

/// A local run in progress: `local: step 12 of 60, loss 3.1024, ETA 1m 20s`.
fn local_detail(p: Option<&crate::store::Progress>) -> String {
    let Some(p) = p else {
        return "local".into();
    };
    let mut parts = Vec::new();
    if let Some(step) = p.step {
        parts.push(match p.total_steps {
            Some(t) => format!("step {step} of {t}"),
            None => format!("step {step}"),
        });
    }
    if let Some(loss) = p.loss {
        parts.push(format!("loss {loss:.4}"));
    }
    if let Some(eta) = p.eta_s() {
        parts.push(format!("ETA {}", crate::report::format::duration(eta)));
    }
    if parts.is_empty() {
        "local".into()
    } else {
        format!("local: {}", parts.join(", "))
    }
}

pub fn cmd_status(db: &Path, sweeps: &[String], json: bool) -> Result<u8, Failure> {
    let mut store = Store::open_for_reading(db).map_err(store_failure)?;
    let sweeps = if sweeps.is_empty() {
        store.sweep_names().map_err(store_failure)?
    } else {
        sweeps.to_vec()
    };
    let tasks = store.slurm_tasks().map_err(store_failure)?;
    let queue = if tasks.is_empty() {
        None
    } else {
        queue_or_warn()
    };
    let reports: HashMap<String, TaskReport> =
        task_states(&mut store, tasks, queue.as_ref(), false)
            .map_err(store_failure)?
            .into_iter()
            .map(|r| (r.task.run_id.clone(), r))
            .collect();
    // Where each local run in progress stands (the live page's data).
    let progress: HashMap<String, crate::store::Progress> = store
        .progress()
        .map_err(store_failure)?
        .into_iter()
        .map(|p| (p.run_id.clone(), p))
        .collect();
    let mut out = Vec::new();
    let mut text = String::new();
    for sweep in &sweeps {
        let runs = store.sweep_runs(sweep).map_err(store_failure)?;
        if runs.is_empty() {
            return Err(user(anyhow::anyhow!(
                "no sweep named {sweep} in {} (try `ablate status` for all)",
                db.display()
            )));
        }
        let ids: Vec<String> = runs.iter().map(|r| r.0.clone()).collect();
        let statuses = store.statuses(&ids).map_err(store_failure)?;
        let mut rows = Vec::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &ids {
            let status = statuses.get(id).copied().unwrap_or(RunStatus::Pending);
            let (state, detail, task) = match (status, reports.get(id)) {
                (RunStatus::Done, _) => ("done", String::new(), None),
                (_, Some(r)) if r.state == TaskState::Done => (
                    "done",
                    "finished; not merged yet (ablate collect)".to_string(),
                    Some(r),
                ),
                (_, Some(r)) => (r.state.name(), r.state.detail(), Some(r)),
                (RunStatus::Running, None) => ("running", local_detail(progress.get(id)), None),
                (s, None) => (s.as_str(), String::new(), None),
            };
            *counts.entry(state).or_default() += 1;
            let task_name = task.map(|r| format!("{}_{}", r.task.job_id, r.task.task_id));
            out.push(serde_json::json!({
                "sweep": sweep, "run_id": id, "state": state, "detail": detail,
                "task": task_name,
            }));
            rows.push(vec![
                id.clone(),
                state.to_string(),
                task_name.unwrap_or_default(),
                detail,
            ]);
        }
        let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        text.push_str(&format!(
            "{sweep}: {} runs: {}\n",
            ids.len(),
            summary.join(", ")
        ));
        let headers = ["run", "state", "task", "detail"].map(String::from);
        text.push_str(&ui::table(&headers, &rows));
        text.push('\n');
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    } else {
        print!("{}", text.trim_end_matches('\n'));
        println!();
    }
    Ok(exit::OK)
}
