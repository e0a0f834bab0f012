//! A database written by the ablate of schema 4 (before run stages) opens, migrates, and
//! reports as it did; its run ids work in every command, and nothing reruns.

use std::path::{Path, PathBuf};
use std::process::Output;

use rusqlite::Connection;
use serde_json::Value;

use crate::stdout_ok as ok;
use crate::text_rows as rows;
use crate::WithoutAblateEnv;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const FIXTURE: &str = "tests/fixtures/db-v4";

/// `ablate --db <db> args...` from the repository root (the fixture's data paths are
/// relative to it).
fn ablate(db: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ablate"))
        .current_dir(repo())
        .arg("--db")
        .arg(db)
        .args(args)
        .stdin(std::process::Stdio::null())
        .without_ablate_env()
        .output()
        .unwrap()
}

#[test]
fn a_schema_4_database_migrates_reports_unchanged_and_keeps_its_run_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("ablate.db");
    let sql = std::fs::read_to_string(repo().join(FIXTURE).join("ablate-v4.sql")).unwrap();
    Connection::open(&db).unwrap().execute_batch(&sql).unwrap();
    let summary = "SELECT run_id || ' ' || status || ' ' || quote(pass_rate) || ' ' || \
                   quote(n_eval) || ' ' || quote(final_train_loss) FROM run_summary ORDER BY 1";
    let before = rows(&db, summary);
    let ids = rows(&db, "SELECT id FROM runs ORDER BY id");
    assert_eq!(ids.len(), 4);

    // The reports come out byte for byte as the old version wrote them.
    for name in ["micro", "evaluators", "episodes"] {
        let file = format!("{FIXTURE}/experiments/{name}.toml");
        ok(&ablate(&db, &["report", &file]));
        let now =
            std::fs::read_to_string(tmp.path().join(format!("reports/v4-{name}.md"))).unwrap();
        let then = std::fs::read_to_string(repo().join(format!("{FIXTURE}/reports/v4-{name}.md")))
            .unwrap();
        assert_eq!(
            in_v4_comparison_format(&in_v4_agreement_format(&in_v4_breakdown_format(&now))),
            then,
            "v4-{name}.md changed"
        );
    }
    let c = Connection::open(&db).unwrap();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 7);
    assert_eq!(rows(&db, summary), before, "run_summary changed");
    // Each finished run is one done training, generation and verdict set per evaluator.
    assert_eq!(
        rows(
            &db,
            "SELECT run_id || ' ' || training_status || ' ' || generation_status || ' ' || \
             verdict_sets_done || '/' || verdict_sets FROM run_stage_status ORDER BY 1"
        ),
        ids.iter()
            .zip(rows(
                &db,
                "SELECT CAST(json_array_length(config_json, '$.eval.evaluators') AS TEXT) \
                 FROM runs ORDER BY id"
            ))
            .map(|(id, n)| format!("{id} done done {n}/{n}"))
            .collect::<Vec<_>>()
    );
    // Episodes kept their transcripts as episode predictions, with their endings.
    let episodes = rows(
        &db,
        "SELECT json_extract(detail_json, '$.ending') FROM predictions WHERE kind = 'episode'",
    );
    assert_eq!(episodes.len(), 2, "{episodes:?}");

    // The same experiments plan as done, under the same ids, and nothing reruns.
    let plan: Value = serde_json::from_str(&ok(&ablate(
        &db,
        &["plan", &format!("{FIXTURE}/experiments"), "--json"],
    )))
    .unwrap();
    let planned: Vec<(String, String, usize)> = plan
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["runs"].as_array().unwrap().clone())
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
                r["stages"]["will_run"].as_array().unwrap().len(),
            )
        })
        .collect();
    let mut planned_ids: Vec<&String> = planned.iter().map(|p| &p.0).collect();
    planned_ids.sort();
    assert_eq!(
        planned_ids,
        ids.iter().collect::<Vec<_>>(),
        "run ids changed"
    );
    assert!(
        planned.iter().all(|p| p.1 == "done" && p.2 == 0),
        "{planned:?}"
    );
    let run = ok(&ablate(
        &db,
        &[
            "run",
            &format!("{FIXTURE}/experiments"),
            "--json",
            "--no-report",
        ],
    ));
    assert!(!run.contains("\"stage_finished\""), "{run}");
    assert!(!run.contains("\"run_started\""), "{run}");

    // Existing ids work in compare, export and query.
    let micro: Vec<&String> = ids
        .iter()
        .filter(|id| {
            rows(
                &db,
                &format!("SELECT sweep FROM sweep_runs WHERE run_id = '{id}'"),
            )[0] == "v4-micro"
        })
        .collect();
    let cmp = ok(&ablate(&db, &["compare", &micro[0][..6], &micro[1][..6]]));
    assert!(
        cmp.contains(micro[0].as_str()) && cmp.contains(micro[1].as_str()),
        "{cmp}"
    );
    let csv = ok(&ablate(&db, &["export", "v4-micro"]));
    assert!(micro.iter().all(|id| csv.contains(id.as_str())), "{csv}");
    let q = ok(&ablate(
        &db,
        &[
            "query",
            &format!(
                "SELECT pass_rate FROM run_summary WHERE run_id = '{}'",
                micro[0]
            ),
            "--csv",
        ],
    ));
    assert_eq!(q.lines().count(), 2, "{q}");

    // Re-scoring a migrated run with today's checker reads its stored predictions and
    // agrees with the verdicts it has.
    let out: Value = serde_json::from_str(&ok(&ablate(
        &db,
        &["rescore", "v4-evaluators", "--evaluator", "bfcl", "--json"],
    )))
    .unwrap();
    assert_eq!(out[0]["judged"], 4, "{out}");
    assert_eq!(out[0]["relinked"], true, "{out}");
    assert_eq!(
        rows(&db, summary),
        before,
        "a re-score with the same checker changed a rate"
    );
    ok(&ablate(
        &db,
        &["report", &format!("{FIXTURE}/experiments/evaluators.toml")],
    ));
    let md = std::fs::read_to_string(tmp.path().join("reports/v4-evaluators.md")).unwrap();
    assert!(
        md.contains("| bfcl | before-stages | bfcl-1 | 4 | 100.0% |"),
        "{md}"
    );
}

/// A report with its per-group table written as schema 4's version wrote it: the table
/// since gained what each evaluator measures and which group a gap is to (a deliberate
/// change of format; every number must still be the same).
fn in_v4_breakdown_format(text: &str) -> String {
    const NEW_HEADER: &str = "| run | configuration | evaluator (measures) | dataset | category | n | rate | 95% CI | gap | gap to |";
    const OLD_HEADER: &str = "| run | configuration | evaluator | dataset | category | n | pass rate | 95% CI | gap to first category |";
    let mut out = Vec::new();
    let mut in_table = false;
    for line in text.split('\n') {
        if line == NEW_HEADER {
            in_table = true;
            out.push(OLD_HEADER.to_string());
            continue;
        }
        if in_table && line.starts_with("|---") {
            out.push("|---|---|---|---|---|---:|---:|---|---:|".to_string());
            continue;
        }
        if in_table && line.starts_with("| `") {
            let mut cells: Vec<String> = line.split(" | ").map(str::to_string).collect();
            // "rules (what it measures)" -> "rules"; the last cell ("G1 |") is dropped.
            cells[2] = cells[2].split(" (").next().unwrap().to_string();
            cells.pop();
            out.push(format!("{} |", cells.join(" | ")));
            continue;
        }
        in_table = false;
        out.push(line.to_string());
    }
    out.join("\n")
}

/// The comparisons table as schema 4's ablate wrote it: the minimum detectable effect and
/// the failure kinds came later (issue 21).
fn in_v4_comparison_format(text: &str) -> String {
    const NEW_INTRO: &str = " \"detectable\" is the minimum detectable effect: the
smallest difference from ★'s rate that this many pairs find with 80% power at α 0.05
(a smaller true difference is likely to read as noise).";
    const NEW_HEADER: &str = "| configuration | pairs | ★ pass rate | pass rate | Δ (points) | 95% CI of Δ | ★ only / this only | p | p (Holm) | verdict | detectable (points) |";
    let text = text.replace(NEW_INTRO, "");
    let mut out = Vec::new();
    let mut in_table = false;
    // (in the failure-kind section, past its table's first line)
    let mut in_shifts = (false, false);
    for line in text.split('\n') {
        if line.starts_with("What changed, by kind of failure") {
            in_shifts = (true, false);
        }
        if in_shifts.0 {
            // The section ends at the first blank line after its table.
            in_shifts.1 |= line.starts_with('|');
            if line.is_empty() && in_shifts.1 {
                in_shifts = (false, false);
            }
            continue;
        }
        if line == NEW_HEADER {
            in_table = true;
            out.push(
                NEW_HEADER
                    .rsplit_once(" detectable (points) |")
                    .unwrap()
                    .0
                    .to_string(),
            );
            continue;
        }
        if in_table && line.starts_with("|---") {
            out.push("|---|---:|---:|---:|---:|---|---:|---:|---:|---|".to_string());
            continue;
        }
        if in_table && line.starts_with("| ") {
            let cut = line.trim_end_matches(" |").rsplit_once(" | ").unwrap().0;
            out.push(format!("{cut} |"));
            continue;
        }
        in_table = false;
        out.push(line.to_string());
    }
    out.join("\n")
}

/// The agreement table as schema 4's ablate wrote it: the kappa interval and the confusion
/// counts came later, with human labels (issue 18).
fn in_v4_agreement_format(text: &str) -> String {
    const NEW_INTRO: &str =
        "Evaluators that judged the same predictions (a person's labels among them): the share of
examples on which they agree, Cohen's kappa (agreement beyond chance, with its 95% interval;
empty when it is undefined) and the confusion table: both pass, only the first passes, only
the second passes, both fail.";
    const OLD_INTRO: &str =
        "Evaluators that judged the same predictions: the share of examples on which they agree,
and Cohen's kappa (agreement beyond chance; empty when it is undefined).";
    const NEW_HEADER: &str = "| run | dataset | evaluators | n | agreement | kappa (95% CI) | both pass | only first | only second | both fail |";
    let text = text.replace(NEW_INTRO, OLD_INTRO);
    let mut out = Vec::new();
    let mut in_table = false;
    for line in text.split('\n') {
        if line == NEW_HEADER {
            in_table = true;
            out.push("| run | dataset | evaluators | n | agreement | kappa |".to_string());
            continue;
        }
        if in_table && line.starts_with("|---") {
            out.push("|---|---|---|---:|---:|---:|".to_string());
            continue;
        }
        if in_table && line.starts_with("| `") {
            let mut cells: Vec<String> = line.split(" | ").take(6).map(str::to_string).collect();
            cells[5] = cells[5].split(" (").next().unwrap().to_string();
            out.push(format!("{} |", cells.join(" | ")));
            continue;
        }
        in_table = false;
        out.push(line.to_string());
    }
    out.join("\n")
}

/// `plan` writes nothing, so it does not migrate: on a schema-4 database it says what will
/// (exit 2), and the file stays byte for byte as it was; after `report` migrated it, it
/// plans.
#[test]
fn plan_on_an_older_database_says_what_migrates_it_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("ablate.db");
    let sql = std::fs::read_to_string(repo().join(FIXTURE).join("ablate-v4.sql")).unwrap();
    Connection::open(&db).unwrap().execute_batch(&sql).unwrap();
    let before = std::fs::read(&db).unwrap();
    let file = format!("{FIXTURE}/experiments/micro.toml");
    let out = ablate(&db, &["plan", &file]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("older ablate") && err.contains("ablate run"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);
    ok(&ablate(&db, &["report", &file]));
    ok(&ablate(&db, &["plan", &file]));
}
