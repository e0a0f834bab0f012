//! The cluster path against a real single-node Slurm cluster, which this test installs
//! (Debian's packages) and starts with `scripts/slurm-local.sh`, and stops by PID at the
//! end. Where the machine cannot host one (not root, no apt-get) the test says so and
//! skips; `ABLATE_SKIP_SLURM=1` skips it on purpose.

use crate::WithoutAblateEnv;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::Value;

use crate::cli::MICRO;
use crate::reliability::content;

/// One run of 30 epochs of 3 steps with a checkpoint every 2 steps: long enough to be
/// cancelled (or watched) mid-training.
pub(crate) const LONG: &str = r#"
[experiment]
name = "long"

[model]
name = "tiny"

[data]
n_train = 48
n_test = 6
vocab_size = 512
max_seq_len = 128

[train]
lr = 3e-3
batch_size = 16
epochs = 30

[eval]
max_new_tokens = 10

[run]
checkpoint_every = 2
"#;

/// The cluster, stopped on drop if this test started it (a panic included).
struct Cluster {
    started: bool,
    script: std::path::PathBuf,
}

impl Cluster {
    fn up() -> Option<Cluster> {
        if std::env::var("ABLATE_SKIP_SLURM").is_ok_and(|v| v == "1") {
            eprintln!("skipping the Slurm test: ABLATE_SKIP_SLURM=1");
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-local.sh");
        let out = Command::new(&script).arg("up").output().expect("bash runs");
        match out.status.code() {
            Some(0) => Some(Cluster {
                started: String::from_utf8_lossy(&out.stdout).contains("started"),
                script,
            }),
            // The machine cannot host a cluster (a developer's laptop): skip, loudly.
            Some(3) => {
                eprintln!(
                    "skipping the Slurm test: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            _ => panic!(
                "scripts/slurm-local.sh up failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.started {
            let _ = Command::new(&self.script).arg("down").output();
        }
    }
}

fn ablate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ablate"))
        .current_dir(dir)
        .args(args)
        .without_ablate_env()
        .stdin(Stdio::null())
        .output()
        .expect("ablate runs")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Submits and returns (job id, run ids) of the one array submitted.
fn submit(dir: &Path, experiment: &str) -> (String, Vec<String>) {
    let out = ablate(dir, &["submit", "--slurm", experiment, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    let arrays = v["arrays"].as_array().unwrap();
    assert_eq!(arrays.len(), 1, "{v}");
    let job = arrays[0]["job_id"].as_str().unwrap().to_string();
    let runs = arrays[0]["run_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    (job, runs)
}

/// Waits until squeue no longer knows the job. A failing squeue other than "Invalid job
/// id" (the controller is down) fails the test rather than passing for "finished".
fn wait_for_job(job: &str, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let out = Command::new("squeue")
            .args(["-h", "-j", job, "-o", "%i %T"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("Invalid job id") || (out.status.success() && out.stdout.is_empty()) {
            return;
        }
        assert!(out.status.success(), "squeue failed: {stderr}");
        assert!(
            t0.elapsed() < limit,
            "job {job} still queued after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn status_of(dir: &Path, sweep: &str) -> Vec<Value> {
    let out = ablate(dir, &["status", sweep, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_of(&out).as_array().unwrap().clone()
}

#[test]
fn a_sweep_runs_as_a_slurm_array_collects_idempotently_and_resubmits_only_failures() {
    let Some(_cluster) = Cluster::up() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("experiments")).unwrap();
    std::fs::write(d.join("experiments/micro.toml"), MICRO).unwrap();
    std::fs::write(d.join("experiments/long.toml"), LONG).unwrap();
    let db = d.join("results/ablate.db");

    // The sweep as an array of 4 tasks, each into its own shard.
    let (job, runs) = submit(d, "experiments/micro.toml");
    assert_eq!(runs.len(), 4);
    wait_for_job(&job, Duration::from_secs(300));
    for r in &runs {
        assert!(
            d.join(format!("results/shards/{r}.db")).is_file(),
            "shard of {r}"
        );
    }
    let first = ablate(d, &["collect"]);
    assert!(
        first.status.success(),
        "{}{}",
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("merged 4 runs"));
    let once = std::fs::read(&db).unwrap();
    let second = ablate(d, &["collect"]);
    assert!(second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("merged 0 runs"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    assert_eq!(
        once,
        std::fs::read(&db).unwrap(),
        "a second collect changed the file"
    );
    assert!(status_of(d, "micro").iter().all(|r| r["state"] == "done"));

    // The same sweep run locally: the same run ids, metrics and verdicts, bit for bit.
    let local = ablate(
        d,
        &[
            "--db",
            "local/ablate.db",
            "run",
            "experiments/micro.toml",
            "--no-report",
        ],
    );
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    assert_eq!(content(&db), content(&d.join("local/ablate.db")));
    // Every run went through Slurm: one attempt each, on this host, recorded as tasks.
    let c = Connection::open(&db).unwrap();
    let tasks: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM slurm_tasks WHERE job_id = ?1",
            [&job],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tasks, 4);

    // A task cancelled mid-run is reported failed; submitting again submits it alone,
    // and it resumes from its checkpoint.
    let (job, runs) = submit(d, "experiments/long.toml");
    assert_eq!(runs.len(), 1);
    let t0 = Instant::now();
    loop {
        let s = status_of(d, "long");
        if s[0]["state"] == "running"
            && s[0]["detail"]
                .as_str()
                .is_some_and(|d| d != "step 0" && !d.is_empty())
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "never ran: {s:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // A checkpoint exists by step 2; wait for it so that the resume has something to use.
    let ckpts = d.join(format!("results/runs/{}/training/checkpoints", runs[0]));
    while std::fs::read_dir(&ckpts).map_or(true, |mut r| r.next().is_none()) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = Command::new("scancel").arg(&job).output().unwrap();
    assert!(out.status.success());
    wait_for_job(&job, Duration::from_secs(60));
    let collected = ablate(d, &["collect", "--json"]);
    assert_eq!(
        collected.status.code(),
        Some(1),
        "a failed task makes collect exit 1"
    );
    let v = json_of(&collected);
    let task = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["run_id"] == runs[0].as_str())
        .unwrap();
    assert_eq!(task["state"], "failed", "{task}");
    assert_eq!(status_of(d, "long")[0]["state"], "failed");
    // What a user reads, job ids aside (and so the column padding, which follows their
    // width).
    let text = |args: &[&str]| {
        let out = ablate(d, args);
        String::from_utf8_lossy(&out.stdout)
            .replace(&format!(" {job}_"), " [JOB]_")
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    insta::assert_snapshot!("slurm_collect_after_cancel", text(&["collect"]));
    insta::assert_snapshot!("slurm_status_after_cancel", text(&["status", "long"]));

    let (job2, again) = submit(d, "experiments/long.toml");
    assert_eq!(again, runs, "only the failed run is submitted again");
    assert_ne!(job2, job);
    // Everything else is done: submitting the first sweep again submits nothing.
    let none = json_of(&ablate(
        d,
        &["submit", "--slurm", "experiments/micro.toml", "--json"],
    ));
    assert_eq!(none["arrays"].as_array().unwrap().len(), 0, "{none}");
    wait_for_job(&job2, Duration::from_secs(300));
    let last = ablate(d, &["collect"]);
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stdout)
    );
    let (status, attempts): (String, i64) = c
        .query_row(
            "SELECT status, attempts FROM runs WHERE id = ?1",
            [&runs[0]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), attempts), ("done", 2));
    let log = std::fs::read_to_string(
        Connection::open(&db)
            .unwrap()
            .query_row(
                "SELECT submit_dir FROM slurm_tasks WHERE job_id = ?1",
                [&job2],
                |r| r.get::<_, String>(0),
            )
            .map(|d| Path::new(&d).join("task-0.out"))
            .unwrap(),
    )
    .unwrap();
    assert!(
        log.contains("\"run_resumed\""),
        "the resubmitted task resumed:\n{log}"
    );
    // Its metrics are those of an uninterrupted run of the same config.
    let local = ablate(
        d,
        &[
            "--db",
            "local2/ablate.db",
            "run",
            "experiments/long.toml",
            "--no-report",
        ],
    );
    assert!(local.status.success());
    let only = |db: &Path| -> Vec<String> {
        content(db)
            .into_iter()
            .filter(|l| l.starts_with(runs[0].as_str()))
            .collect()
    };
    assert_eq!(only(&db), only(&d.join("local2/ablate.db")));
}

/// A dry run needs no cluster: it writes the script and the manifest, prints the script,
/// submits nothing and records no task.
#[test]
fn a_dry_run_writes_the_script_and_manifest_and_submits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("experiments")).unwrap();
    let text = format!(
        "{MICRO}\n[slurm]\npartition = \"cpu\"\nmem = \"4G\"\nsetup = [\"echo setting up\"]\n"
    );
    std::fs::write(d.join("experiments/micro.toml"), text).unwrap();
    let out = ablate(
        d,
        &[
            "submit",
            "--slurm",
            "experiments/micro.toml",
            "--dry-run",
            "--partition",
            "gpu",
            "--time",
            "01:00:00",
            "--sbatch-arg=--account=lab",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8_lossy(&out.stdout)
        .replace(env!("CARGO_BIN_EXE_ablate"), "[ABLATE]")
        .replace(&d.display().to_string(), "[DIR]");
    insta::assert_snapshot!("slurm_dry_run_script", script);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("results/slurm/micro-1/manifest.json")).unwrap(),
    )
    .unwrap();
    let plan = json_of(&ablate(d, &["plan", "experiments/micro.toml", "--json"]));
    let planned: Vec<&Value> = plan[0]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    let tasks: Vec<&Value> = manifest["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["run_id"])
        .collect();
    assert_eq!(tasks, planned, "one task per planned run, in plan order");
    let c = Connection::open(d.join("results/ablate.db")).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM slurm_tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    // Not a Slurm task: `ablate task` without an index says how to give one.
    let out = ablate(d, &["task", "results/slurm/micro-1/manifest.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLURM_ARRAY_TASK_ID"));
}

/// `--devices`: runs take the devices `[[resources]]` gives them, the database records
/// which, and a plan needing more devices than given fails before anything runs.
#[test]
fn devices_pin_runs_and_a_plan_needing_more_fails_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("experiments")).unwrap();
    let text = format!("{MICRO}\n[[resources]]\ndevices = 2\nwhere = {{ \"train.epochs\" = 2 }}\n");
    std::fs::write(d.join("experiments/micro.toml"), text).unwrap();

    let out = ablate(
        d,
        &[
            "run",
            "experiments/micro.toml",
            "--devices",
            "4",
            "--no-report",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs 2 devices, but --devices gives 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.join("results/ablate.db").exists(), "nothing ran");
    let out = ablate(
        d,
        &[
            "run",
            "experiments/micro.toml",
            "--devices",
            "1,1",
            "--no-report",
        ],
    );
    assert_eq!(out.status.code(), Some(2));

    let out = ablate(
        d,
        &[
            "run",
            "experiments/micro.toml",
            "--devices",
            "4,6",
            "--json",
            "--no-report",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "run_started")
        .collect();
    assert_eq!(started.len(), 4);
    let c = Connection::open(d.join("results/ablate.db")).unwrap();
    let mut s = c
        .prepare(
            "SELECT json_extract(s.axes_json, '$.\"train.epochs\"'), r.devices
             FROM runs r JOIN sweep_runs s ON s.run_id = r.id ORDER BY s.position",
        )
        .unwrap();
    let rows: Vec<(i64, String)> = s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (epochs, devices) in &rows {
        let want = if *epochs == 2 { "4,6" } else { "4" };
        // A one-device run takes the lowest free device, so it is 4 or, beside another, 6.
        assert!(
            devices == want || (*epochs == 1 && devices == "6"),
            "epochs {epochs}: {devices}"
        );
    }
}
