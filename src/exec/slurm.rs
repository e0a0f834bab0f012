//! The Slurm launcher. ablate does not schedule on a cluster: it writes an sbatch script for
//! a job array (one task per pending run) with a manifest that freezes each task's run, and
//! asks `squeue` what is queued or running. Each task runs `ablate task`, which writes its
//! run to a shard database of its own; `ablate collect` merges the shards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{RunConfig, RunOptions, SlurmSpec};
use crate::plan::PlannedRun;

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("{command} could not be started: {message} (is Slurm installed and on PATH?)")]
    Spawn { command: String, message: String },
    #[error("{command} failed: {message}")]
    Failed { command: String, message: String },
    #[error("{path}: {message}")]
    Manifest { path: String, message: String },
}

/// One task of a submitted array: the run it executes, frozen at submission so that
/// editing the experiment files later does not change what a queued task runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestTask {
    pub run_id: String,
    pub sweep: String,
    pub axes: std::collections::BTreeMap<String, Value>,
    pub devices: usize,
    pub config: RunConfig,
    /// Its stage ids, as the submitting plan computed them (absent in manifests written
    /// before stages: the task computes them).
    #[serde(default)]
    pub stages: Option<crate::plan::stages::StageIds>,
    pub run: RunOptions,
    /// The task's own database.
    pub shard: PathBuf,
}

/// `manifest.json` in a submission folder; task `i` of the array runs `tasks[i]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// The results folder (run artifacts and checkpoints go to `<results>/runs/<id>/`).
    pub results: PathBuf,
    pub tasks: Vec<ManifestTask>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, SlurmError> {
        let bad = |message: String| SlurmError::Manifest {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
    }

    pub fn task(&self, index: usize) -> Option<PlannedRun> {
        self.tasks.get(index).map(|t| PlannedRun {
            id: t.run_id.clone(),
            axes: t.axes.clone(),
            is_baseline: false,
            devices: t.devices,
            config: t.config.clone(),
            stages: t.stages.clone().unwrap_or_default(),
            sharing: Default::default(),
        })
    }
}

/// Where a run's shard database lives: `<results>/shards/<run id>.db`, beside the main one.
pub fn shard_path(results: &Path, run_id: &str) -> PathBuf {
    results.join("shards").join(format!("{run_id}.db"))
}

/// The sbatch options of one array: the experiment's `[slurm]` table with the command
/// line's flags on top.
pub fn merge_spec(file: &SlurmSpec, flags: &SlurmSpec) -> SlurmSpec {
    SlurmSpec {
        partition: flags.partition.clone().or_else(|| file.partition.clone()),
        gres: flags.gres.clone().or_else(|| file.gres.clone()),
        time: flags.time.clone().or_else(|| file.time.clone()),
        mem: flags.mem.clone().or_else(|| file.mem.clone()),
        cpus_per_task: flags.cpus_per_task.or(file.cpus_per_task),
        max_parallel: flags.max_parallel.or(file.max_parallel),
        sbatch_args: file
            .sbatch_args
            .iter()
            .chain(&flags.sbatch_args)
            .cloned()
            .collect(),
        setup: file.setup.iter().chain(&flags.setup).cloned().collect(),
        ablate: flags.ablate.clone().or_else(|| file.ablate.clone()),
    }
}

/// Quotes a word for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What the sbatch script of one array needs.
pub struct ScriptInputs<'a> {
    pub job_name: &'a str,
    pub tasks: usize,
    /// Devices each task takes (the array's runs share it).
    pub devices: usize,
    /// Whether the runs train on a GPU (then `gres` defaults to `gpu:<devices>`).
    pub gpu: bool,
    pub spec: &'a SlurmSpec,
    pub submit_dir: &'a Path,
    pub workdir: &'a Path,
    pub ablate: &'a Path,
    pub manifest: &'a Path,
}

/// The sbatch script: options as `#SBATCH` lines, the `[slurm] setup` lines, then
/// `ablate task`. `--requeue` lets a preempted task run again; it resumes from its
/// run's last checkpoint.
pub fn script(i: &ScriptInputs) -> String {
    let s = i.spec;
    let throttle = s.max_parallel.map(|n| format!("%{n}")).unwrap_or_default();
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        "# Written by `ablate submit --slurm`: one array task per run; manifest.json says which."
            .to_string(),
        format!("#SBATCH --job-name={}", sh_quote(i.job_name)),
        format!("#SBATCH --array=0-{}{throttle}", i.tasks.saturating_sub(1)),
        format!(
            "#SBATCH --output={}",
            sh_quote(&i.submit_dir.join("task-%a.out").display().to_string())
        ),
        format!(
            "#SBATCH --chdir={}",
            sh_quote(&i.workdir.display().to_string())
        ),
        "#SBATCH --requeue".to_string(),
        "#SBATCH --ntasks=1".to_string(),
    ];
    let mut opt = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            lines.push(format!("#SBATCH --{name}={}", sh_quote(&v)));
        }
    };
    opt("partition", s.partition.clone());
    let gres = s
        .gres
        .clone()
        .or_else(|| i.gpu.then(|| format!("gpu:{}", i.devices)));
    opt("gres", gres);
    opt("time", s.time.clone());
    opt("mem", s.mem.clone());
    opt("cpus-per-task", s.cpus_per_task.map(|n| n.to_string()));
    for a in &s.sbatch_args {
        lines.push(format!("#SBATCH {a}"));
    }
    lines.push(String::new());
    lines.extend(s.setup.iter().cloned());
    lines.push(format!(
        "exec {} task {}",
        sh_quote(&i.ablate.display().to_string()),
        sh_quote(&i.manifest.display().to_string())
    ));
    lines.join("\n") + "\n"
}

fn run(cmd: &mut Command) -> Result<String, SlurmError> {
    let name = format!("{:?}", cmd.get_program());
    let name = name.trim_matches('"').to_string();
    let out = cmd.output().map_err(|e| SlurmError::Spawn {
        command: name.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(SlurmError::Failed {
            command: name,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Submits a script; returns the job id.
pub fn sbatch(script: &Path) -> Result<String, SlurmError> {
    let out = run(Command::new("sbatch").arg("--parsable").arg(script))?;
    // --parsable prints "jobid" or "jobid;cluster".
    Ok(out.trim().split(';').next().unwrap_or("").to_string())
}

/// Cancels whole jobs.
pub fn scancel(job_ids: &[String]) -> Result<(), SlurmError> {
    if job_ids.is_empty() {
        return Ok(());
    }
    run(Command::new("scancel").args(job_ids)).map(drop)
}

/// A task's state in the queue, as squeue names it (PENDING, RUNNING, COMPLETING, ...).
pub type Queue = HashMap<(String, i64), String>;

/// This user's array tasks that the controller still knows (queued, running, ending).
/// A failing squeue is an error, never an empty queue: "nothing queued" must be true.
pub fn squeue() -> Result<Queue, SlurmError> {
    let out = run(Command::new("squeue").args(["--me", "-h", "-r", "-o", "%i|%T"]))?;
    Ok(parse_squeue(&out))
}

fn parse_squeue(out: &str) -> Queue {
    out.lines()
        .filter_map(|l| {
            let (id, state) = l.trim().split_once('|')?;
            let (job, task) = id.split_once('_')?;
            Some(((job.to_string(), task.parse().ok()?), state.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_become_task_states() {
        let q = parse_squeue("12_0|RUNNING\n12_1|PENDING\n13|RUNNING\n\n12_[2-4]|PENDING\n");
        assert_eq!(q.len(), 2);
        assert_eq!(q[&("12".to_string(), 0)], "RUNNING");
        assert_eq!(q[&("12".to_string(), 1)], "PENDING");
    }

    #[test]
    fn words_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(sh_quote("/a/b-c_1.db"), "/a/b-c_1.db");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn the_script_holds_the_options_and_defaults_gres_for_gpu_runs() {
        let spec = SlurmSpec {
            partition: Some("gpu".into()),
            time: Some("04:00:00".into()),
            max_parallel: Some(2),
            sbatch_args: vec!["--account=lab".into()],
            setup: vec!["module load cuda".into()],
            ..Default::default()
        };
        let inputs = ScriptInputs {
            job_name: "ablate-scaling",
            tasks: 3,
            devices: 2,
            gpu: true,
            spec: &spec,
            submit_dir: Path::new("/r/slurm/scaling-1"),
            workdir: Path::new("/w"),
            ablate: Path::new("/bin/ablate"),
            manifest: Path::new("/r/slurm/scaling-1/manifest.json"),
        };
        let s = script(&inputs);
        for line in [
            "#SBATCH --array=0-2%2",
            "#SBATCH --partition=gpu",
            "#SBATCH --gres=gpu:2",
            "#SBATCH --time=04:00:00",
            "#SBATCH --account=lab",
            "#SBATCH --output=/r/slurm/scaling-1/task-%a.out",
            "module load cuda",
            "exec /bin/ablate task /r/slurm/scaling-1/manifest.json",
        ] {
            assert!(s.lines().any(|l| l == line), "{line} missing from\n{s}");
        }
        let cpu = script(&ScriptInputs {
            gpu: false,
            ..inputs
        });
        assert!(!cpu.contains("--gres"), "{cpu}");
    }

    #[test]
    fn flags_win_over_the_file_and_lists_add_up() {
        let file = SlurmSpec {
            partition: Some("a".into()),
            mem: Some("8G".into()),
            sbatch_args: vec!["--x".into()],
            ..Default::default()
        };
        let flags = SlurmSpec {
            partition: Some("b".into()),
            sbatch_args: vec!["--y".into()],
            ..Default::default()
        };
        let m = merge_spec(&file, &flags);
        assert_eq!(m.partition.as_deref(), Some("b"));
        assert_eq!(m.mem.as_deref(), Some("8G"));
        assert_eq!(m.sbatch_args, vec!["--x", "--y"]);
    }
}
