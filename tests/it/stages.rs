//! A run's stages: one training serves every evaluation of it, a new evaluator or checker
//! version judges stored predictions, epoch prefixes are shared only where exact, and the
//! code that produced a stage is known.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde_json::Value;

use crate::cli::{ablate, setup, MICRO};
use crate::stdout_ok as ok;
use crate::text_rows as rows;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn q(db: &Path, sql: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The `stage_finished` events of a `run --json`, as stage names in order.
fn finished_stages(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "stage_finished")
        .map(|v| v["stage"].as_str().unwrap().to_string())
        .collect()
}

fn count(stages: &[String], stage: &str) -> usize {
    stages.iter().filter(|s| *s == stage).count()
}

/// The shipped CPU generalization sweep (one model, four evaluation sets), shrunk, with its
/// data paths made absolute so it runs from a temporary folder.
fn generalization(evaluators: &str) -> String {
    let shared = repo().join("../shared");
    std::fs::read_to_string(repo().join("experiments/cpu/generalization.toml"))
        .unwrap()
        .replace("../shared", shared.to_str().unwrap())
        .replace(
            r#""eval.evaluators" = [["rules"], ["rules"], ["rules"], ["bfcl"]]"#,
            &format!(r#""eval.evaluators" = {evaluators}"#),
        )
        .replace("max_seq_len = 1024", "max_seq_len = 256")
        .replace("limit = 12", "limit = 3")
        .replace("max_new_tokens = 24", "max_new_tokens = 8")
}

#[test]
fn the_generalization_sweep_trains_once_and_an_added_evaluator_only_judges() {
    let text = generalization(r#"[["rules"], ["rules"], ["rules"], ["bfcl"]]"#);
    assert!(text.contains(r#"["bfcl"]]"#), "the shipped zip changed");
    let (dir, file) = setup(&text);
    let d = dir.path();
    let db = d.join("results/ablate.db");
    let f = file.to_str().unwrap();

    // The plan says so before anything runs: one training, four generations.
    let plan: Value = serde_json::from_str(&ok(&ablate(d, &["plan", f, "--json"]))).unwrap();
    let to_run = &plan[0]["to_run"];
    assert_eq!(to_run["trainings"], 1, "{to_run}");
    assert_eq!(to_run["generations"], 4, "{to_run}");
    let runs = plan[0]["runs"].as_array().unwrap();
    let training = &runs[0]["stages"]["training"];
    assert!(runs.iter().all(|r| &r["stages"]["training"] == training));

    let first = ok(&ablate(d, &["run", f, "--json", "--no-report"]));
    let stages = finished_stages(&first);
    assert_eq!(count(&stages, "train"), 1, "{first}");
    assert_eq!(count(&stages, "generate"), 4, "{first}");
    assert_eq!(count(&stages, "judge"), 4, "{first}");
    assert_eq!(
        q(&db, "SELECT count(*) FROM trainings WHERE status = 'done'"),
        1
    );
    assert_eq!(
        q(
            &db,
            "SELECT count(*) FROM generations WHERE status = 'done'"
        ),
        4
    );
    assert_eq!(
        q(&db, "SELECT count(DISTINCT training_id) FROM run_stages"),
        1
    );
    // Each run has its training curve and its own verdicts, as before stages.
    assert_eq!(
        q(
            &db,
            "SELECT count(DISTINCT run_id) FROM metrics WHERE name = 'loss' AND split = 'train'"
        ),
        4
    );
    assert_eq!(
        q(
            &db,
            "SELECT count(*) FROM run_summary WHERE pass_rate IS NOT NULL AND n_eval = 3"
        ),
        4
    );

    // Adding `rules` beside `bfcl` on the BFCL set: a new run that only judges the stored
    // predictions (no training, no generation), with its two evaluators' agreement.
    let text = generalization(r#"[["rules"], ["rules"], ["rules"], ["bfcl", "rules"]]"#);
    std::fs::write(&file, text).unwrap();
    let second = ok(&ablate(d, &["run", f, "--json", "--no-report"]));
    assert_eq!(finished_stages(&second), ["judge"], "{second}");
    assert_eq!(q(&db, "SELECT count(*) FROM trainings"), 1);
    assert_eq!(q(&db, "SELECT count(*) FROM generations"), 4);
    assert_eq!(
        q(
            &db,
            "SELECT count(*) FROM verdict_sets WHERE status = 'done'"
        ),
        5
    );
    assert_eq!(
        q(
            &db,
            "SELECT n FROM evaluator_agreement WHERE evaluator_a = 'bfcl' AND evaluator_b = 'rules'"
        ),
        3
    );
    // Nothing is left to do.
    let third = ok(&ablate(d, &["run", f, "--json", "--no-report"]));
    assert!(finished_stages(&third).is_empty(), "{third}");
}

/// Makes the `rules` verdict set of `run` look as an older checker (`version`) left it:
/// another id, with the first `flipped` verdicts different.
fn as_if_an_older_checker_judged(db: &Path, run: &str, version: &str, flipped: usize) {
    let c = Connection::open(db).unwrap();
    let set: String = c
        .query_row(
            "SELECT verdict_set_id FROM run_verdict_sets WHERE run_id = ?1 AND evaluator = 'rules'",
            [run],
            |r| r.get(0),
        )
        .unwrap();
    let old = format!("{set}-{version}");
    // Ids are renamed under their referencing rows: keys are checked by ablate, not here.
    c.execute_batch(&format!(
        "PRAGMA foreign_keys = OFF;
         UPDATE verdict_sets SET id = '{old}', version = '{version}' WHERE id = '{set}';
         UPDATE verdicts SET verdict_set_id = '{old}' WHERE verdict_set_id = '{set}';
         UPDATE run_verdict_sets SET verdict_set_id = '{old}' WHERE verdict_set_id = '{set}';
         UPDATE verdicts SET verdict = 'old_checker_said_so', passed = 1 - passed
          WHERE verdict_set_id = '{old}' AND example_id IN (
            SELECT example_id FROM verdicts WHERE verdict_set_id = '{old}'
            ORDER BY example_id LIMIT {flipped});
         UPDATE metrics SET value = -1 WHERE run_id = '{run}' AND name = 'pass_rate';"
    ))
    .unwrap();
}

#[test]
fn a_new_checker_version_rescores_stored_predictions_and_the_report_shows_the_flips() {
    let text = MICRO
        .replace("\"train.epochs\" = [1, 2]", "\"train.epochs\" = [1]")
        .replace(
            "baseline = { \"train.epochs\" = 1, \"train.clip_norm\" = 0.3 }",
            "",
        );
    let (dir, _) = setup(&text);
    let d = dir.path();
    let db = d.join("results/ablate.db");
    ok(&ablate(
        d,
        &["run", "experiments/micro.toml", "--no-report"],
    ));
    let run: String = Connection::open(&db)
        .unwrap()
        .query_row("SELECT id FROM runs ORDER BY id LIMIT 1", [], |r| r.get(0))
        .unwrap();
    let rate = |db: &Path| {
        q(db, &format!("SELECT CAST(value * 1000 AS INTEGER) FROM metrics WHERE run_id = '{run}' AND name = 'pass_rate'"))
    };
    let before = rate(&db);

    // `ablate run` after a checker change: the plan says judge, the run judges only.
    as_if_an_older_checker_judged(&db, &run, "rules-0", 3);
    let plan = ok(&ablate(d, &["plan", "experiments/micro.toml"]));
    let line = plan.lines().find(|l| l.starts_with(&run)).unwrap();
    assert!(line.contains("done") && line.ends_with("judge"), "{plan}");
    assert!(
        plan.contains("0 trainings (0 optimizer steps), 0 generations"),
        "{plan}"
    );
    let out = ok(&ablate(
        d,
        &["run", "experiments/micro.toml", "--json", "--no-report"],
    ));
    assert_eq!(finished_stages(&out), ["judge"], "{out}");
    // The run's rows are the new verdicts again; the old set is kept beside them.
    assert_eq!(rate(&db), before);
    assert_eq!(
        q(
            &db,
            "SELECT count(*) FROM verdict_flips WHERE version_a = 'rules-0'"
        ),
        3
    );
    ok(&ablate(d, &["report", "experiments/micro.toml"]));
    let md = std::fs::read_to_string(d.join("results/reports/micro.md")).unwrap();
    let section = &md[md
        .find("## Re-scored verdicts")
        .expect("a re-score section")..];
    assert!(
        section.contains("| rules | rules-0 | rules-1 | 6 |"),
        "{section}"
    );
    assert!(
        section.contains("| old_checker_said_so |") && section.contains("| 3 |"),
        "{section}"
    );

    // `ablate rescore` does the same without `run`, and the run takes the new set.
    as_if_an_older_checker_judged(&db, &run, "rules-0b", 2);
    let json: Value = serde_json::from_str(&ok(&ablate(
        d,
        &["rescore", "micro", "--evaluator", "rules", "--json"],
    )))
    .unwrap();
    let mine = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["run_id"] == run.as_str())
            .cloned()
            .unwrap()
    };
    let r = mine(&json);
    // The other run of the sweep was judged by this version already.
    assert!(json
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["already_done"] == true));
    assert_eq!(r["already_done"], false, "{json}");
    assert_eq!(r["relinked"], true, "{json}");
    assert_eq!(r["judged"], 6, "{json}");
    assert_eq!(rate(&db), before);
    // Judged once: a second rescore judges nothing.
    let again: Value = serde_json::from_str(&ok(&ablate(
        d,
        &["rescore", "micro", "--evaluator", "rules", "--json"],
    )))
    .unwrap();
    assert_eq!(mine(&again)["already_done"], true, "{again}");
    // Only the judge's settings can change in a re-score.
    let bad = ablate(
        d,
        &[
            "rescore",
            "micro",
            "--evaluator",
            "rules",
            "--set",
            "eval.max_new_tokens=3",
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("eval.judge.*"));
    // An evaluator that does not fit the data is refused, naming the key.
    let bfcl = ablate(d, &["rescore", "micro", "--evaluator", "bfcl"]);
    assert_eq!(bfcl.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bfcl.stderr).contains("eval.evaluators: \"bfcl\" needs"),
        "{}",
        String::from_utf8_lossy(&bfcl.stderr)
    );
}

fn epochs_sweep(scheduler: &str, epochs: &str) -> String {
    MICRO
        .replace(
            "\"train.epochs\" = [1, 2]",
            &format!("\"train.epochs\" = {epochs}"),
        )
        .replace("\"train.clip_norm\" = [0.3, \"none\"]", "")
        .replace(
            "baseline = { \"train.epochs\" = 1, \"train.clip_norm\" = 0.3 }",
            "",
        )
        .replace(
            "batch_size = 16",
            &format!("batch_size = 16\nscheduler = \"{scheduler}\"\ndropout = 0.1"),
        )
}

/// The model a run generated with, as bytes.
fn model_of(root: &Path, run: &str) -> Vec<u8> {
    let stages: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join(format!("results/runs/{run}/stages.json"))).unwrap(),
    )
    .unwrap();
    let training = root.join(format!(
        "results/trainings/{}",
        stages["training"].as_str().unwrap()
    ));
    let dir = match stages["checkpoint_epoch"].as_u64() {
        Some(e) => training.join(format!("epochs/{e}")),
        None => training.join("model"),
    };
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn an_epoch_prefix_is_shared_only_where_exact_and_then_bit_identical() {
    // Constant schedule: the 1- and 2-epoch runs take the 3-epoch training's checkpoints.
    let (shared, f) = setup(&epochs_sweep("constant", "[1, 2, 3]"));
    let plan: Value = serde_json::from_str(&ok(&ablate(
        shared.path(),
        &["plan", f.to_str().unwrap(), "--json"],
    )))
    .unwrap();
    assert_eq!(plan[0]["to_run"]["trainings"], 1, "{plan}");
    let runs = plan[0]["runs"].as_array().unwrap();
    let shorter = &runs[0];
    assert_eq!(shorter["stages"]["checkpoint_epoch"], 1);
    assert!(
        shorter["stages"]["sharing"]
            .as_str()
            .unwrap()
            .contains("3-epoch training's checkpoint after 1 epoch "),
        "{shorter}"
    );
    let out = ok(&ablate(
        shared.path(),
        &["run", "experiments/micro.toml", "--json", "--no-report"],
    ));
    assert_eq!(count(&finished_stages(&out), "train"), 1, "{out}");
    let one_epoch_run = shorter["id"].as_str().unwrap().to_string();

    // The same 1-epoch run on its own trains its own 1 epoch: the same bytes.
    let (alone, _) = setup(&epochs_sweep("constant", "[1]"));
    ok(&ablate(
        alone.path(),
        &["run", "experiments/micro.toml", "--no-report"],
    ));
    assert!(
        model_of(shared.path(), &one_epoch_run) == model_of(alone.path(), &one_epoch_run),
        "the shared prefix's weights differ from a separate 1-epoch run's"
    );
    // And so are its metrics (its part of the curve) and predictions.
    let metrics = format!(
        "SELECT name || ' ' || split || ' ' || step || ' ' || quote(value) FROM metrics
         WHERE run_id = '{one_epoch_run}' AND name NOT IN ('tokens_per_s', 'step_time_s')
         ORDER BY 1"
    );
    let (db_s, db_a) = (
        shared.path().join("results/ablate.db"),
        alone.path().join("results/ablate.db"),
    );
    assert_eq!(rows(&db_s, &metrics), rows(&db_a, &metrics));
    let preds = format!(
        "SELECT example_id || ' ' || prediction FROM eval_results WHERE run_id = '{one_epoch_run}' ORDER BY 1"
    );
    assert_eq!(rows(&db_s, &preds), rows(&db_a, &preds));

    // A linear decay makes every length differ from the first step: no sharing, and why.
    let (linear, f) = setup(&epochs_sweep("linear", "[1, 3]"));
    let plan = ok(&ablate(linear.path(), &["plan", f.to_str().unwrap()]));
    assert!(plan.contains("2 trainings"), "{plan}");
    assert!(
        plan.contains("trains its own 1 epoch rather than a prefix of a longer run: the linear schedule decays over the total steps"),
        "{plan}"
    );
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_dirty_tree_or_a_new_commit_makes_plan_warn_and_rerun_stale_redoes_the_stages() {
    let text = MICRO
        .replace("\"train.epochs\" = [1, 2]", "\"train.epochs\" = [1]")
        .replace("\"train.clip_norm\" = [0.3, \"none\"]", "")
        .replace(
            "baseline = { \"train.epochs\" = 1, \"train.clip_norm\" = 0.3 }",
            "",
        );
    let (dir, _) = setup(&text);
    let d = dir.path();
    std::fs::write(d.join(".gitignore"), "results/\n").unwrap();
    std::fs::write(d.join("model_code.py"), "lr = 1\n").unwrap();
    git(d, &["init", "-q"]);
    git(d, &["add", "."]);
    git(d, &["commit", "-qm", "first"]);
    ok(&ablate(
        d,
        &["run", "experiments/micro.toml", "--no-report"],
    ));
    let db = d.join("results/ablate.db");
    // Every stage records the code that made it.
    let prov: Value =
        serde_json::from_str(&rows(&db, "SELECT provenance_json FROM trainings")[0]).unwrap();
    assert_eq!(prov["git_dirty"], false, "{prov}");
    assert_eq!(prov["git_commit"].as_str().unwrap().len(), 40, "{prov}");
    for k in ["ablate_version", "candle_version", "matmul", "device"] {
        assert!(
            prov[k].as_str().is_some_and(|v| !v.is_empty()),
            "{k}: {prov}"
        );
    }
    let clean = ok(&ablate(d, &["plan", "experiments/micro.toml"]));
    assert!(!clean.contains("warning"), "{clean}");

    // Uncommitted changes: the plan warns, and nothing reruns by default.
    std::fs::write(d.join("model_code.py"), "lr = 2\n").unwrap();
    let dirty = ok(&ablate(d, &["plan", "experiments/micro.toml"]));
    assert!(
        dirty.contains("warning: 3 done stages were produced by other code (the clean tree"),
        "{dirty}"
    );
    let nothing = ok(&ablate(
        d,
        &["run", "experiments/micro.toml", "--json", "--no-report"],
    ));
    assert!(finished_stages(&nothing).is_empty(), "{nothing}");

    // A new commit: the warning names the commit that made them.
    git(d, &["commit", "-qam", "second"]);
    let moved = ok(&ablate(d, &["plan", "experiments/micro.toml"]));
    assert!(
        moved.contains("warning: 3 done stages") && moved.contains("(commit "),
        "{moved}"
    );

    // --rerun-stale redoes them with this code; then nothing is stale.
    let redo = ok(&ablate(
        d,
        &[
            "run",
            "experiments/micro.toml",
            "--rerun-stale",
            "--json",
            "--no-report",
        ],
    ));
    assert_eq!(
        finished_stages(&redo),
        ["train", "generate", "judge"],
        "{redo}"
    );
    let after = ok(&ablate(d, &["plan", "experiments/micro.toml"]));
    assert!(!after.contains("warning"), "{after}");
}
