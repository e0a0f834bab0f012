//! Reports and queries over a large results database: a sweep of `--runs` runs with
//! `--steps` optimizer steps each (6 metrics a step, so 100 x 1,667 is about a million
//! metric rows) and `--examples` verdicts per run. Times the full report (read, statistics
//! with a 2,000-resample bootstrap per comparison, SVG plots, template) and two `ablate
//! query`-style statements, and `ablate serve`'s runs, curves and examples pages, and prints
//! one JSON object. Target: under 2 s each (the dashboard's pages: well under 1 s).
//!
//!   cargo bench --bench report -- --runs 100 --steps 1667 --examples 200

use std::time::Instant;

mod common;

use ablate::report::{self, ReportOptions, TemplateSource};
use ablate::store::Store;
use common::arg;
use rusqlite::params;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = arg(&args, "--runs", "100").parse().expect("--runs");
    let steps: usize = arg(&args, "--steps", "1667").parse().expect("--steps");
    let examples: usize = arg(&args, "--examples", "200").parse().expect("--examples");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("ablate.db");

    let t0 = Instant::now();
    let metric_rows = fill(&db, runs, steps, examples);
    let fill_s = t0.elapsed().as_secs_f64();

    let store = Store::open_for_reading(&db).expect("open");
    let opts = ReportOptions::default();
    let template = TemplateSource::resolve(Some("stability"), None).expect("template");
    let mut report_s = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        report::write_report(&store, "big", &template, &dir.path().join("reports"), &opts)
            .expect("report");
        report_s.push(t.elapsed().as_secs_f64());
    }
    let time_query = |sql: &str| {
        let t = Instant::now();
        let (_, rows) = store.query(sql).expect("query");
        (t.elapsed().as_secs_f64(), rows.len())
    };
    let (summary_s, n_summary) = time_query("SELECT * FROM run_summary");
    let (agg_s, _) = time_query(
        "SELECT run_id, name, count(*), avg(value), max(value) FROM metrics GROUP BY run_id, name",
    );
    // The dashboard's heaviest pages: the runs of the sweep, and curves of 20 and of all runs.
    let site = ablate::serve::Site::open(&db).expect("serve");
    let time_page = |path: &str| {
        let t = Instant::now();
        let page = site.respond(path);
        assert_eq!(page.status, 200, "{path}");
        t.elapsed().as_secs_f64()
    };
    let serve_runs_s = time_page("/sweeps/big");
    let ids: Vec<String> = (0..runs.min(20)).map(|r| format!("{r:012x}")).collect();
    let serve_curves_s = time_page(&format!("/curves?runs={}", ids.join(",")));
    // One chart of every run's loss (the page takes 200 runs at most).
    let all: Vec<String> = (0..runs.min(200)).map(|r| format!("{r:012x}")).collect();
    let serve_curves_all_s = time_page(&format!("/curves?runs={}", all.join(",")));
    let curve_points = all.len() * steps;
    let serve_examples_s = time_page(&format!("/runs/{}?vs={}", ids[0], ids[ids.len() - 1]));
    report_s.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "runs": runs,
            "metric_rows": metric_rows,
            "verdicts": runs * examples,
            "fill_s": fill_s,
            "report_s_median": report_s[1],
            "report_s_all": report_s,
            "query_run_summary_s": summary_s,
            "query_run_summary_rows": n_summary,
            "query_metrics_group_by_s": agg_s,
            "serve_runs_page_s": serve_runs_s,
            "serve_curves_20_runs_s": serve_curves_s,
            "serve_curves_all_runs": all.len(),
            "serve_curves_all_runs_points": curve_points,
            "serve_curves_all_runs_s": serve_curves_all_s,
            "serve_examples_vs_s": serve_examples_s,
        })
    );
}

/// A sweep over clip norm x lr (the stability report's axes), written straight into the
/// public schema.
fn fill(db: &std::path::Path, runs: usize, steps: usize, examples: usize) -> usize {
    drop(Store::open(db).expect("create"));
    let mut conn = rusqlite::Connection::open(db).expect("open");
    let tx = conn.transaction().expect("tx");
    tx.execute(
        "INSERT INTO sweeps (name, file, description, axes_json, updated_at)
         VALUES ('big', 'big.toml', 'benchmark', '[\"train.clip_norm\",\"train.lr\"]', 'now')",
        [],
    )
    .unwrap();
    let mut n = 0;
    for r in 0..runs {
        let id = format!("{r:012x}");
        let (clip, lr) = ([0.3, 1.0, 3.0][r % 3], [1e-4, 3e-4, 1e-3][(r / 3) % 3]);
        let config = serde_json::json!({"train": {"seed": r / 9, "clip_norm": clip, "lr": lr},
                                        "eval": {"evaluators": ["rules"]}});
        tx.execute(
            "INSERT INTO runs (id, config_json, status, created_at, duration_s) VALUES (?1, ?2, 'done', 'now', 60.0)",
            params![id, config.to_string()],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO sweep_runs (sweep, run_id, axes_json, is_baseline, position) VALUES ('big', ?1, ?2, ?3, ?4)",
            params![
                id,
                serde_json::json!({"train.clip_norm": clip, "train.lr": lr}).to_string(),
                (r % 9 == 0) as i64,
                r as i64
            ],
        )
        .unwrap();
        let mut m = tx
            .prepare_cached("INSERT INTO metrics (run_id, name, split, step, value) VALUES (?1, ?2, ?3, ?4, ?5)")
            .unwrap();
        for s in 1..=steps {
            let x = s as f64;
            for (name, v) in [
                ("loss", 3.0 / x.sqrt()),
                ("grad_norm", 1.0 + ((s * 7919 + r) % 97) as f64 / 10.0),
                ("clip_coef", 1.0),
                ("lr", lr),
                ("tokens_per_s", 1000.0),
                ("step_time_s", 0.1),
            ] {
                m.execute(params![id, name, "train", s as i64, v]).unwrap();
                n += 1;
            }
        }
        let passed = (0..examples)
            .filter(|e| (e * 31 + r * 17) % 100 < 40)
            .count();
        for (name, v) in [
            ("pass_rate", passed as f64 / examples as f64),
            ("n_eval", examples as f64),
        ] {
            m.execute(params![id, name, "test", -1, v]).unwrap();
        }
        let mut e = tx
            .prepare_cached(
                "INSERT INTO eval_results (run_id, dataset, example_id, category, evaluator, verdict, passed, prediction)
                 VALUES (?1, 'synthetic', ?2, '', 'rules', ?3, ?4, '')",
            )
            .unwrap();
        for x in 0..examples {
            let p = (x * 31 + r * 17) % 100 < 40;
            e.execute(params![
                id,
                format!("ex{x:05}"),
                if p { "pass" } else { "wrong_call" },
                p as i64
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    n
}
