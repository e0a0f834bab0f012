//! End-to-end tests of the `ablate` binary: plan → run → report on micro sweeps, bad input,
//! crash recovery, and read-only queries.

use crate::WithoutAblateEnv;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// Four tiny runs (epochs × clip norm) on the synthetic task: seconds each.
pub(crate) const MICRO: &str = r#"
[experiment]
name = "micro"
description = "micro sweep for tests"
baseline = { "train.epochs" = 1, "train.clip_norm" = 0.3 }

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

[eval]
max_new_tokens = 10

[grid]
"train.epochs" = [1, 2]
"train.clip_norm" = [0.3, "none"]
"#;

pub(crate) fn ablate(dir: &Path, args: &[&str]) -> Output {
    ablate_command(dir, args).output().expect("ablate runs")
}

/// The `ablate` binary in `dir`, free of the caller's `ABLATE_*` variables.
pub(crate) fn ablate_command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ablate"));
    c.current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .without_ablate_env();
    c
}

pub(crate) fn setup(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("experiments")).unwrap();
    let f = dir.path().join("experiments/micro.toml");
    std::fs::write(&f, text).unwrap();
    (dir, f)
}

/// Runs the experiment `text` (without a report), asserting success; returns the
/// directory and its database.
pub(crate) fn run_ok(text: &str) -> (tempfile::TempDir, PathBuf) {
    let (dir, _) = setup(text);
    let out = ablate(
        dir.path(),
        &["run", "experiments/micro.toml", "--no-report"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = dir.path().join("results/ablate.db");
    (dir, db)
}

fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn plan_run_report_and_rerun_trains_nothing() {
    let (dir, _) = setup(MICRO);
    let d = dir.path();
    let out = ablate(d, &["plan", "experiments/", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan[0]["runs"].as_array().unwrap().len(), 4);
    assert!(
        !d.join("results").exists(),
        "plan must not create the database"
    );

    let out = ablate(d, &["run", "experiments/micro.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = d.join("results/ablate.db");
    assert_eq!(
        count(&db, "SELECT count(*) FROM runs WHERE status = 'done'"),
        4
    );
    // 48 examples / batch 16 = 3 steps per epoch; epochs 1 and 2, twice: 18 steps, 6 metrics each.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM metrics WHERE split = 'train' AND step >= 1"
        ),
        18 * 6
    );
    assert_eq!(count(&db, "SELECT count(*) FROM eval_results"), 4 * 6);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM run_summary WHERE pass_rate IS NOT NULL"
        ),
        4
    );
    let clipped = count(
        &db,
        "SELECT count(*) FROM metrics WHERE name = 'clip_coef' AND value < 1.0",
    );
    assert!(clipped > 0, "clip norm 0.3 should clip");
    let report = std::fs::read_to_string(d.join("results/reports/micro.md")).unwrap();
    assert!(
        report.contains("| train.clip_norm | train.epochs |"),
        "{report}"
    );
    assert_eq!(report.matches("| done |").count(), 4, "{report}");
    assert_eq!(report.matches("` ★ |").count(), 1, "{report}");
    assert!(d.join("results/runs").read_dir().unwrap().count() == 4);
    insta::with_settings!({filters => vec![
        (r"-?\d+\.\d+%?", "[num]"),
        (r"\(\d+/\d+\)", "([k]/[n])"),
        (r"\| \d+ / \d+ \|", "| [a] / [b] |"),
        (r"[+-]\[num\]", "[num]"),
        (r"Highest pass rate: `\w+`", "Highest pass rate: [run]"),
    ]}, {
        insta::assert_snapshot!("micro_report", report);
    });

    let t0 = Instant::now();
    let out = ablate(d, &["run", "experiments/micro.toml"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("  skip  ").count(), 4, "{err}");
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_eq!(count(&db, "SELECT sum(attempts) FROM runs"), 4);

    let out = ablate(d, &["plan", "experiments/micro.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(" done").count(), 4, "{text}");
    insta::assert_snapshot!("plan_after_run", text);
}

#[test]
fn bad_experiments_fail_with_one_line_per_problem_and_touch_nothing() {
    let (dir, f) = setup(
        "[train]\nlrr = 1e-3\nbatch_size = \"big\"\n[grid]\n\"train.epochs\" = []\n\
         [[grid.zip]]\n\"train.lr\" = [1e-3, 2e-3]\n\"train.seed\" = [1]\n",
    );
    let out = ablate(dir.path(), &["plan", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    for l in &lines {
        assert!(
            l.starts_with("error: ") && l.contains("micro.toml: "),
            "{l}"
        );
    }
    assert!(err.contains("train.batch_size: invalid type"), "{err}");
    assert!(
        err.contains("train.lrr: unknown key (did you mean `train.lr`?)"),
        "{err}"
    );
    assert!(err.contains("grid.\"train.epochs\": empty axis"), "{err}");
    assert!(
        err.contains("grid.zip[0]: zipped axes must have equal lengths"),
        "{err}"
    );
    let out = ablate(dir.path(), &["run", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !dir.path().join("results").exists(),
        "no database for a bad file"
    );
}

#[test]
fn query_is_read_only_and_prints_csv() {
    let (dir, _) = setup(MICRO);
    let d = dir.path();
    let out = ablate(d, &["query", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(2), "no database yet");
    let out = ablate(d, &["plan"]);
    assert!(out.status.success());
    // Create the database through a run of a one-run sweep.
    let one = MICRO
        .replace("\"train.epochs\" = [1, 2]", "\"train.epochs\" = [1]")
        .replace(", \"none\"]", "]");
    std::fs::write(d.join("experiments/micro.toml"), one).unwrap();
    assert!(ablate(d, &["run", "experiments/micro.toml", "--no-report"])
        .status
        .success());
    let out = ablate(d, &["query", "DELETE FROM runs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
    assert_eq!(
        count(&d.join("results/ablate.db"), "SELECT count(*) FROM runs"),
        1
    );
    let out = ablate(
        d,
        &[
            "query",
            "SELECT status, count(*) AS n FROM runs GROUP BY status",
            "--csv",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "status,n\ndone,1\n");
    // A second statement is refused, not silently dropped; a trailing `;` is one statement.
    let out = ablate(d, &["query", "SELECT 1; SELECT 2"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("one statement at a time; this SQL has 2"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let out = ablate(d, &["query", "SELECT 1 AS one;  ", "--csv"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\n1\n");
    // What SQLite refuses in the statement itself is the user's error (2), not ablate's.
    let deep = format!("SELECT 1{}", "+1".repeat(3000));
    for sql in [
        "ATTACH 'no/such/dir/x.db' AS x",
        "SELECT load_extension('nope')",
        deep.as_str(),
        "SELECT * FROM no_such_table",
    ] {
        let out = ablate(d, &["query", sql]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sql:.40}: {err}");
        assert!(
            err.starts_with("error: ") && err.lines().count() == 1,
            "{err}"
        );
    }
    assert!(!d.join("no").exists());
}

#[test]
fn two_experiments_of_one_name_are_refused_together() {
    let (dir, _) = setup(MICRO);
    let d = dir.path();
    std::fs::write(d.join("experiments/other.toml"), MICRO).unwrap();
    let out = ablate(d, &["plan", "experiments"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("experiment.name: \"micro\" is also the name of experiments/"),
        "{err}"
    );
    assert!(!d.join("results").exists());
}

#[test]
fn sigkill_mid_sweep_then_rerun_completes_without_duplicates() {
    let text = MICRO
        .replace("n_train = 48", "n_train = 160")
        .replace("\"train.epochs\" = [1, 2]", "\"train.epochs\" = [2, 3]");
    let (dir, _) = setup(&text);
    let d = dir.path();
    let db = d.join("results/ablate.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .without_ablate_env()
        .current_dir(d)
        .args(["run", "experiments/micro.toml"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once one run is done and another has written rows.
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if db.exists() {
            let conn = Connection::open(&db).unwrap();
            let q = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0);
            if q("SELECT count(*) FROM runs WHERE status = 'done'") >= 1
                && q("SELECT count(*) FROM training_metrics m JOIN trainings t ON t.id = m.training_id WHERE t.status = 'running'") > 0
            {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "sweep never got going"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "sweep ended before it could be killed"
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(count(&db, "SELECT count(*) FROM runs WHERE status != 'done'") >= 1);

    let out = ablate(d, &["run", "experiments/micro.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM runs WHERE status = 'done'"),
        4
    );
    let conn = Connection::open(&db).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    // 10 steps per epoch; epochs 2 and 3, twice: 100 steps, 6 train metrics each.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM metrics WHERE split = 'train' AND step >= 1"
        ),
        100 * 6
    );
    assert_eq!(count(&db, "SELECT count(*) FROM eval_results"), 4 * 6);

    // The same sweep without interruption gives the same losses, bit for bit.
    let (dir2, _) = setup(&text);
    assert!(ablate(
        dir2.path(),
        &["run", "experiments/micro.toml", "--no-report"]
    )
    .status
    .success());
    let losses = |db: &Path| -> Vec<(String, i64, f64)> {
        let c = Connection::open(db).unwrap();
        let mut s = c
            .prepare("SELECT run_id, step, value FROM metrics WHERE name = 'loss' ORDER BY run_id, split, step")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(losses(&db), losses(&dir2.path().join("results/ablate.db")));
}

/// Every metric of a database except the timings, in a stable order.
fn metrics_without_timings(db: &Path) -> Vec<(String, String, i64, f64)> {
    let c = Connection::open(db).unwrap();
    let mut s = c
        .prepare(
            "SELECT name, split, step, value FROM metrics
             WHERE name NOT IN ('tokens_per_s', 'step_time_s') ORDER BY name, split, step",
        )
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn sigkill_then_resume_from_checkpoint_is_bit_identical() {
    // One run: 3 epochs of 10 steps, checkpoints every 4 steps, validation every 5, with
    // dropout (its masks must come back the same after the kill).
    let text = MICRO
        .replace("n_train = 48", "n_train = 160")
        .replace("\"train.epochs\" = [1, 2]", "\"train.seed\" = [7]")
        .replace("\"train.clip_norm\" = [0.3, \"none\"]", "")
        .replace(
            "baseline = { \"train.epochs\" = 1, \"train.clip_norm\" = 0.3 }",
            "",
        )
        .replace(
            "batch_size = 16",
            "batch_size = 16\nepochs = 3\ndropout = 0.1",
        )
        + "\n[run]\ncheckpoint_every = 4\nval_every = 5\nkeep_checkpoints = 2\n";
    let (dir, _) = setup(&text);
    let d = dir.path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .without_ablate_env()
        .current_dir(d)
        .args(["run", "experiments/micro.toml", "--no-report"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runs = d.join("results/runs");
    let checkpoints = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&runs)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|r| std::fs::read_dir(r.path().join("training/checkpoints")).into_iter())
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("step-")
                    && p.join("state.json").is_file()
            })
            .collect();
        v.sort();
        v
    };
    let t0 = Instant::now();
    while checkpoints().is_empty() {
        std::thread::sleep(Duration::from_millis(10));
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint");
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before it could be killed"
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let db = d.join("results/ablate.db");
    assert_eq!(
        count(&db, "SELECT count(*) FROM runs WHERE status = 'done'"),
        0
    );

    let out = ablate(
        d,
        &["run", "experiments/micro.toml", "--no-report", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let resumed = events
        .iter()
        .find(|e| e["event"] == "run_resumed")
        .unwrap_or_else(|| panic!("no run_resumed event in {events:?}"));
    let from = resumed["step"].as_u64().unwrap();
    assert!((4..30).contains(&from), "resumed from step {from}");
    // Checkpoints at 4, 8, 10 (epoch end), 12, ...: at most two are kept.
    assert!(checkpoints().len() <= 2, "{:?}", checkpoints());

    // An uninterrupted run of the same file: same parameters, bit for bit, and the same
    // logged metrics (timings aside) and verdicts.
    let (dir2, _) = setup(&text);
    assert!(ablate(
        dir2.path(),
        &["run", "experiments/micro.toml", "--no-report"]
    )
    .status
    .success());
    let db2 = dir2.path().join("results/ablate.db");
    let model = |root: &Path| -> Vec<u8> {
        let run = std::fs::read_dir(root.join("results/runs"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::read(run.join("training/model/model.safetensors")).unwrap()
    };
    assert!(model(d) == model(dir2.path()), "final parameters differ");
    let (m1, m2) = (metrics_without_timings(&db), metrics_without_timings(&db2));
    assert_eq!(m1, m2);
    // 30 train steps with 4 metrics each, validation at 5, 10, 15, 20, 25, 30, each
    // split's 7 fit metrics, the training split's count left out by the leak guard and
    // its steps per epoch.
    assert_eq!(m1.iter().filter(|m| m.1 == "train").count(), 30 * 4 + 7 + 2);
    assert_eq!(m1.iter().filter(|m| m.1 == "val").count(), 6 + 7);
    let verdicts = |db: &Path| -> Vec<(String, String)> {
        let c = Connection::open(db).unwrap();
        let mut s = c
            .prepare("SELECT example_id, prediction FROM eval_results ORDER BY example_id")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(verdicts(&db), verdicts(&db2));
}

#[test]
fn a_diverging_run_is_marked_diverged_and_the_sweep_goes_on() {
    let text = MICRO
        .replace(
            "baseline = { \"train.epochs\" = 1, \"train.clip_norm\" = 0.3 }",
            "",
        )
        .replace(
            "\"train.epochs\" = [1, 2]",
            "\"train.lr\" = [3e-3, 1e12, 1e-3]",
        )
        .replace("\"train.clip_norm\" = [0.3, \"none\"]", "")
        .replace("lr = 3e-3", "clip_norm = \"none\"");
    let (dir, _) = setup(&text);
    let d = dir.path();
    let out = ablate(d, &["run", "experiments/micro.toml"]);
    assert_eq!(out.status.code(), Some(1), "a diverged run exits 1");
    let db = d.join("results/ablate.db");
    let status = |lr: f64| -> (String, Option<String>) {
        Connection::open(&db)
            .unwrap()
            .query_row(
                "SELECT status, error FROM runs WHERE json_extract(config_json, '$.train.lr') = ?1",
                [lr],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    let (s, err) = status(1e12);
    assert_eq!(s, "diverged");
    assert!(err.unwrap().starts_with("diverged at step"));
    // The run after it in plan order still ran.
    assert_eq!(status(3e-3).0, "done");
    assert_eq!(status(1e-3).0, "done");
    let report = std::fs::read_to_string(d.join("results/reports/micro.md")).unwrap();
    assert!(report.contains("1 diverged, 2 done"), "{report}");
}

#[test]
fn precision_is_an_axis_bf16_trains_close_to_f32_and_f16_is_refused() {
    let text = MICRO
        .replace(
            "baseline = { \"train.epochs\" = 1, \"train.clip_norm\" = 0.3 }",
            "",
        )
        .replace(
            "\"train.epochs\" = [1, 2]",
            "\"train.precision\" = [\"f32\", \"bf16\", \"f16\"]",
        )
        .replace("\"train.clip_norm\" = [0.3, \"none\"]", "");
    let (dir, _) = setup(&text);
    let d = dir.path();
    let out = ablate(d, &["run", "experiments/micro.toml", "--no-report"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the f16 run fails, the others finish"
    );
    let db = Connection::open(d.join("results/ablate.db")).unwrap();
    let run = |p: &str| -> (String, Option<String>, Vec<f64>) {
        let (id, status, error): (String, String, Option<String>) = db
            .query_row(
                "SELECT id, status, error FROM runs WHERE json_extract(config_json, '$.train.precision') = ?1",
                [p],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        let mut s = db
            .prepare("SELECT value FROM metrics WHERE run_id = ?1 AND name = 'loss' AND split = 'train' ORDER BY step")
            .unwrap();
        let losses = s
            .query_map([&id], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        (status, error, losses)
    };
    let (s32, _, l32) = run("f32");
    let (s16, _, l16) = run("bf16");
    assert_eq!((s32.as_str(), s16.as_str()), ("done", "done"));
    assert_eq!(l32.len(), l16.len());
    assert!(!l32.is_empty());
    // bf16 matmuls round their inputs to 8 bits of mantissa: the losses follow f32's
    // closely, and are not f32's (the casts really happen).
    assert_ne!(l32, l16, "bf16 computed exactly what f32 did");
    for (a, b) in l32.iter().zip(&l16) {
        assert!(
            (a - b).abs() <= 0.05 * a.abs().max(0.1),
            "f32 {a} vs bf16 {b}"
        );
    }
    let (s, err, _) = run("f16");
    assert_eq!(s, "failed");
    assert!(err.unwrap().contains("loss scaling"));
}

#[test]
fn score_bfcl_prints_accuracy_and_reasons() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let q = data.join("bfcl/BFCL_v4_simple_python.json");
    let a = data.join("bfcl/possible_answer/BFCL_v4_simple_python.json");
    let p = data.join("bfcl-verdicts/simple_python.predictions.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let args = |json: bool| {
        let mut v = vec![
            "score".to_string(),
            "bfcl".into(),
            "--questions".into(),
            q.display().to_string(),
            "--answers".into(),
            a.display().to_string(),
            "--predictions".into(),
            p.display().to_string(),
        ];
        if json {
            v.push("--json".into());
        }
        v
    };
    let out = ablate(
        dir.path(),
        &args(true).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["total"].as_u64(), v["passed"].as_u64()),
        (Some(400), Some(171))
    );
    assert!((v["accuracy"].as_f64().unwrap() - 171.0 / 400.0).abs() < 1e-12);
    assert_eq!(v["verdicts"][0]["id"], "simple_python_0");
    assert_eq!(
        v["verdicts"][0]["error_type"],
        "simple_function_checker:unexpected_param"
    );

    let out = ablate(
        dir.path(),
        &args(false).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    insta::assert_snapshot!(
        "score_bfcl_simple_python",
        String::from_utf8_lossy(&out.stdout)
    );

    // A malformed predictions file names its line; exit 2.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\": \"simple_python_0\", \"calls\": []}\nnot json\n",
    )
    .unwrap();
    let out = ablate(
        dir.path(),
        &[
            "score",
            "bfcl",
            "--questions",
            q.to_str().unwrap(),
            "--answers",
            a.to_str().unwrap(),
            "--predictions",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.jsonl:2:"));
}

#[test]
fn a_sweep_evaluates_on_a_bfcl_file_and_stores_bfcl_verdicts() {
    let bfcl = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/bfcl/BFCL_v4_simple_python.json");
    let text = format!(
        "[model]\nname = \"tiny\"\n[data]\nn_train = 16\nn_test = 4\nvocab_size = 512\neval = \"{}\"\n\
         [train]\nepochs = 0\n[eval]\nevaluators = [\"bfcl\", \"rules\"]\nlimit = 5\nmax_new_tokens = 6\n",
        bfcl.display()
    );
    let (dir, db) = run_ok(&text);
    let d = dir.path();
    assert_eq!(
        count(&db, "SELECT count(*) FROM eval_results WHERE evaluator = 'bfcl' AND dataset = 'bfcl' AND category = 'simple_python'"),
        5
    );
    // An untrained model makes no well-formed call: every verdict is a BFCL failure type.
    assert_eq!(
        count(&db, "SELECT count(*) FROM eval_results WHERE passed = 0 AND (verdict LIKE 'simple_function_checker:%' OR verdict LIKE 'ast_decoder:%')"),
        5
    );

    // Both evaluators judged the same 5 predictions: their agreement is in the view.
    assert_eq!(
        count(
            &db,
            "SELECT n FROM evaluator_agreement WHERE evaluator_a = 'bfcl' AND evaluator_b = 'rules'"
        ),
        5
    );

    let out = ablate(d, &["report", "experiments/micro.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(d.join("results/reports/micro.md")).unwrap();
    assert!(
        report.contains("## Evaluator agreement") && report.contains("| bfcl | bfcl / rules | 5 |"),
        "{report}"
    );
    assert!(
        report.contains("(0/5)"),
        "the pass rate counts the first evaluator's 5 verdicts: {report}"
    );

    // The bfcl evaluator needs BFCL data, and a missing file is named: exit 2.
    let plan_err = |text: &str| -> String {
        let (dir, _) = setup(text);
        let out = ablate(dir.path(), &["plan", "experiments/micro.toml"]);
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let synthetic = text.replace(
        &format!("eval = \"{}\"", bfcl.display()),
        "eval = \"synthetic\"",
    );
    let err = plan_err(&synthetic);
    assert!(
        err.contains("eval.evaluators") && err.contains("\"bfcl\" needs"),
        "{err}"
    );
    let err = plan_err(&text.replace("BFCL_v4_simple_python", "BFCL_v4_nope"));
    assert!(
        err.contains("data.eval") && err.contains("BFCL_v4_nope"),
        "{err}"
    );

    // A Java file evaluates the same way; its verdicts carry the Java category.
    let (_dir, db) = run_ok(&text.replace("BFCL_v4_simple_python", "BFCL_v4_simple_java"));
    assert_eq!(
        count(&db, "SELECT count(*) FROM eval_results WHERE evaluator = 'bfcl' AND category = 'simple_java'"),
        5
    );
}

#[test]
fn a_sweep_trains_and_evaluates_step_wise_on_toolbench_trajectories() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/toolbench");
    let answers = shared.join("ToolBench/data_example/answer");
    // StableToolBench's example answers: test queries the training files do not have.
    let tests = shared.join("StableToolBench/data_example/answer/virtual_chatgpt_cot");
    let text = format!(
        "[model]\nname = \"tiny\"\n[data]\ntrain = \"{}\"\neval = \"{}\"\nvocab_size = 400\n\
         max_seq_len = 1024\ntruncation = \"keep_end\"\n\
         [train]\nepochs = 1\nbatch_size = 8\nlr = 3e-3\n[eval]\nlimit = 3\nbatch_size = 1\nmax_new_tokens = 6\n",
        answers.display(),
        tests.display()
    );
    let (_dir, db) = run_ok(&text);
    let metric = |name: &str| {
        count(
            &db,
            &format!("SELECT CAST(value AS INTEGER) FROM metrics WHERE split = 'train' AND step = -1 AND name = '{name}'"),
        )
    };
    // 41 assistant steps in the 11 valid trajectories, none of whose queries is tested;
    // long ones lose earlier steps, and the optimizer steps over what is kept, 8 at a time.
    assert_eq!(metric("examples"), 41);
    assert_eq!(metric("examples_left_out"), 0);
    assert!(metric("examples_truncated") > 0);
    let kept = 41 - metric("examples_dropped");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM metrics WHERE name = 'loss' AND split = 'train'"
        ),
        (kept + 7) / 8
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM eval_results WHERE dataset = 'toolbench' AND evaluator = 'rules'"
        ),
        3
    );
}

/// Training on the very queries a run is evaluated on is a leak: those examples are left
/// out, counted in the plan, the database and the report.
#[test]
fn training_examples_that_share_a_query_with_the_evaluation_are_left_out() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/toolbench");
    let train = shared.join("ToolBench/toolllama/toolllama_G123_dfs_sample.json");
    let eval = shared.join("ToolBench/data_example/answer/G1_answer");
    let text = format!(
        "[model]\nname = \"tiny\"\n[data]\ntrain = \"{}\"\neval = \"{}\"\nvocab_size = 400\n\
         max_seq_len = 1024\ntruncation = \"keep_end\"\n\
         [train]\nepochs = 1\nbatch_size = 8\nlr = 3e-3\n[eval]\nlimit = 2\nmax_new_tokens = 4\n",
        train.display(),
        eval.display()
    );
    let (dir, _) = setup(&text);
    let d = dir.path();
    let out = ablate(d, &["plan", "experiments/micro.toml", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let data = &plan[0]["runs"][0]["data"];
    // The sample holds the G1 answer files' 4 valid trajectories' steps among its 41.
    let left_out = data["left_out"].as_u64().unwrap();
    assert!(left_out > 0 && left_out < 41, "{data}");
    assert_eq!(data["train"].as_u64().unwrap() + left_out, 41, "{data}");
    let out = ablate(d, &["plan", "experiments/micro.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{left_out} of 41 training examples left out")),
        "{text}"
    );
    let out = ablate(d, &["run", "experiments/micro.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = d.join("results/ablate.db");
    assert_eq!(
        count(
            &db,
            "SELECT CAST(value AS INTEGER) FROM metrics WHERE name = 'examples_left_out'"
        ),
        left_out as i64
    );
    let report = std::fs::read_to_string(d.join("results/reports/micro.md")).unwrap();
    assert!(report.contains("eval queries left out"), "{report}");
}

#[test]
fn data_inspect_shows_the_rendering_and_the_loss_mask() {
    let dir = tempfile::tempdir().unwrap();
    let bfcl =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/bfcl/BFCL_v4_multiple.json");
    for (src, loss_on) in [("synthetic", "completion"), (bfcl.to_str().unwrap(), "all")] {
        let out = ablate(
            dir.path(),
            &[
                "data",
                "inspect",
                src,
                "--index",
                "2",
                "--vocab-size",
                "400",
                "--loss-on",
                loss_on,
                "--json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let labels: Vec<i64> = serde_json::from_value(v["labels"].clone()).unwrap();
        let ids = v["ids"].as_array().unwrap();
        assert_eq!(labels.len(), ids.len());
        assert_eq!(v["tokens"].as_array().unwrap().len(), ids.len());
        assert!(v["prompt"]
            .as_str()
            .unwrap()
            .starts_with("<|system|>\nTools: "));
        assert!(v["prompt"].as_str().unwrap().ends_with("<|assistant|>\n"));
        let in_loss = labels.iter().filter(|l| **l >= 0).count();
        assert_eq!(v["loss_tokens"].as_u64().unwrap() as usize, in_loss);
        if loss_on == "all" {
            assert_eq!(in_loss, ids.len());
        } else {
            // The prompt is masked, the completion (and its EOS) trains.
            assert!(labels[0] == -100 && *labels.last().unwrap() == 2);
            assert!(in_loss > 0 && in_loss < ids.len());
        }
    }
    let out = ablate(
        dir.path(),
        &["data", "inspect", bfcl.to_str().unwrap(), "--index", "999"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range (200 examples)"));
}

#[test]
fn toolbench_episodes_store_one_verdict_per_trajectory() {
    let answers = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/toolbench/ToolBench/data_example/answer");
    let text = format!(
        "[model]\nname = \"tiny\"\n[data]\ntrain = \"{0}\"\neval = \"{0}\"\nvocab_size = 400\n\
         [train]\nepochs = 0\n[eval]\nevaluators = [\"episode\", \"rules\"]\nlimit = 2\nmax_turns = 2\nmax_new_tokens = 6\nbatch_size = 1\n",
        answers.display()
    );
    let (_dir, db) = run_ok(&text);
    assert_eq!(count(&db, "SELECT count(*) FROM eval_results WHERE evaluator = 'episode' AND dataset = 'toolbench'"), 2);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM eval_results WHERE evaluator = 'rules'"
        ),
        2
    );
    // An untrained model writes no ReAct turn: ToolBench answers each with an error
    // observation until the turns run out (or the history outgrows the model).
    assert_eq!(count(&db, "SELECT count(*) FROM eval_results WHERE evaluator = 'episode' AND passed = 0 AND verdict IN ('no_finish', 'context_overflow')"), 2);
    for m in ["pass_rate", "pass_rate_episode", "pass_rate_rules"] {
        assert_eq!(
            count(
                &db,
                &format!("SELECT count(*) FROM metrics WHERE name = '{m}'")
            ),
            1,
            "{m}"
        );
    }
    // Episodes need ToolBench trajectories.
    let (dir, _) = setup(&text.replace(
        &format!("eval = \"{}\"", answers.display()),
        "eval = \"synthetic\"",
    ));
    let out = ablate(dir.path(), &["plan", "experiments/micro.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"episode\" needs data.eval"));
}

/// A database `plan` cannot read is an error, not a plan where every run looks pending.
#[test]
fn plan_fails_with_the_databases_error_instead_of_showing_everything_pending() {
    let (dir, _) = setup(MICRO);
    let d = dir.path();
    std::fs::create_dir_all(d.join("results")).unwrap();
    let db = d.join("results/ablate.db");
    std::fs::write(&db, vec![0x5au8; 8192]).unwrap();
    let before = std::fs::read(&db).unwrap();
    let out = ablate(d, &["plan", "experiments/micro.toml"]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ablate.db"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("pending"));
    assert_eq!(std::fs::read(&db).unwrap(), before, "the file is untouched");
}

/// `--set` on a key the grid sweeps would be lost in every run: refused, one line, exit 2.
#[test]
fn set_on_a_grid_axis_is_refused() {
    let (dir, _) = setup(MICRO);
    let out = ablate(
        dir.path(),
        &["plan", "experiments/micro.toml", "--set", "train.epochs=7"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--set train.epochs: train.epochs: is a grid axis"),
        "{err}"
    );
    // A key that is not an axis still overrides.
    let out = ablate(
        dir.path(),
        &["plan", "experiments/micro.toml", "--set", "train.lr=1e-3"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Special files in an experiments folder are not read: a FIFO would block `plan` forever
/// and a link to /dev/zero would read until memory runs out.
#[test]
fn special_files_in_the_experiments_folder_are_passed_over() {
    let (dir, _) = setup(MICRO);
    let d = dir.path();
    let fifo = d.join("experiments/fifo.toml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink("/dev/zero", d.join("experiments/zero.toml")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .current_dir(d)
        .args(["plan", "experiments/"])
        .without_ablate_env()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("plan blocked on a special file");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("micro"));
    // Each one passed over is named, on stderr.
    let err = String::from_utf8_lossy(&out.stderr);
    for name in ["fifo.toml", "zero.toml"] {
        assert!(
            err.lines().any(|l| l.starts_with("skipped: ")
                && l.contains(name)
                && l.contains("not a regular file")),
            "{err}"
        );
    }
    // Named on the command line, it is refused with a reason.
    let out = ablate(d, &["plan", "experiments/fifo.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
}

#[test]
fn a_grid_too_large_is_refused_before_it_is_expanded() {
    // 10 axes of 10 values: 10^10 runs. Refused at once, without allocating the grid.
    let keys = [
        "train.seed",
        "data.seed",
        "train.epochs",
        "train.batch_size",
        "train.grad_accum",
        "eval.max_new_tokens",
        "eval.batch_size",
        "eval.limit",
        "eval.top_k",
        "data.n_test",
    ];
    let values = (1..=10)
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let axes: String = keys
        .iter()
        .map(|k| format!("\"{k}\" = [{values}]\n"))
        .collect();
    let (dir, _) = setup(&format!("[model]\nname = \"tiny\"\n[grid]\n{axes}"));
    let t0 = Instant::now();
    let out = ablate(dir.path(), &["plan", "experiments/micro.toml"]);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "grid: 10000000000 grid points (before exclusions), more than the 500000 allowed"
        ) && err.contains("--max-runs"),
        "{err}"
    );
    // The limit is the user's: the micro sweep's 4 runs fit in 4, not in 3.
    let (dir, _) = setup(MICRO);
    let d = dir.path();
    assert!(
        ablate(d, &["plan", "experiments/micro.toml", "--max-runs", "4"])
            .status
            .success()
    );
    let out = ablate(d, &["plan", "experiments/micro.toml", "--max-runs", "3"]);
    assert_eq!(out.status.code(), Some(2));
}
