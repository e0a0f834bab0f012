//! The costs around training: metric ingest through the store, planning a 100,000-run
//! grid, and the executor's overhead per run around a no-op trainer. Prints one JSON
//! object; `scripts/bench-ingest.sh` runs it beside MLflow's and raw SQLite's ingest
//! (`../shared/bench/mlflow_ingest_bench.py`) and prints the ratios.
//!
//!   cargo bench --bench overhead
//!
//! Targets (issue 8): ingest at least 500,000 points/s batched; planning under 1 s;
//! executor overhead under 50 ms a run.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use ablate::config::load_experiment_text;
use ablate::eval::{Prediction, PredictionKind};
use ablate::exec::{self, Event, ExecOptions, Reporter, RunContext, RunFailure};
use ablate::plan;
use ablate::report::{self, ReportOptions, TemplateSource};
use ablate::store::{Record, Stage, Store};

struct Quiet;
impl Reporter for Quiet {
    fn event(&mut self, _: &Event) {}
}

fn plan_of(text: &str) -> plan::Plan {
    let exp = load_experiment_text(Path::new("bench.toml"), text, None, &[]).expect("experiment");
    plan::expand(&exp).expect("plan")
}

/// The same workload as the Python peer: per step four metrics (loss, grad_norm, lr,
/// tokens_per_s), `runs` x `steps`, written in the executor's batches of 512 rows.
fn ingest(dir: &Path, runs: usize, steps: usize) -> f64 {
    let db = dir.join(format!("ingest-{runs}.db"));
    let mut store = Store::open(&db).expect("store");
    let p = plan_of(&format!(
        "[model]\nname = \"tiny\"\n[grid]\nseeds = [{}]\n",
        (0..runs)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    store.register_plan(&p).expect("register");
    let mut batch: Vec<Record> = Vec::with_capacity(512);
    let t = Instant::now();
    for r in &p.runs {
        for step in 1..=steps as i64 {
            for (name, v) in [
                ("loss", 1.0 / step as f64),
                ("grad_norm", 0.5),
                ("lr", 5e-5),
                ("tokens_per_s", 1000.0),
            ] {
                batch.push(Record::Metric {
                    run_id: r.id.clone(),
                    name: name.into(),
                    split: "train".into(),
                    step,
                    value: v,
                });
                if batch.len() == batch_rows() {
                    store.write(&batch).expect("write");
                    batch.clear();
                }
            }
        }
    }
    store.write(&batch).expect("write");
    (runs * steps * 4) as f64 / t.elapsed().as_secs_f64()
}

/// A run whose stages do nothing but what the executor and store see of them: a training
/// metric, one prediction and one verdict per verdict set, each stage reported finished.
fn noop(ctx: &RunContext) -> Result<(), RunFailure> {
    let emit = ctx.emit;
    let done = |stage: Stage, id: &str| {
        emit(Event::StageFinished {
            run_id: ctx.run_id.into(),
            stage,
            id: id.into(),
            duration_s: 0.0,
            provenance: serde_json::json!({}),
        })
    };
    if ctx.needs.train {
        emit(Event::Record(Record::TrainingMetric {
            training_id: ctx.stages.training.clone(),
            name: "loss".into(),
            split: "train".into(),
            step: 1,
            value: 1.0,
        }));
        done(Stage::Train, &ctx.stages.training);
    }
    if ctx.needs.generate {
        emit(Event::Record(Record::Prediction {
            generation_id: ctx.stages.generation.clone(),
            prediction: Prediction {
                kind: PredictionKind::Step,
                example_id: "e1".into(),
                dataset: "synthetic".into(),
                category: String::new(),
                prediction: "Action: f".into(),
                gold: String::new(),
                detail: None,
            },
        }));
        done(Stage::Generate, &ctx.stages.generation);
    }
    for set in &ctx.needs.judge {
        emit(Event::Record(Record::StageVerdict {
            verdict_set_id: set.id.clone(),
            kind: PredictionKind::Step,
            example_id: "e1".into(),
            verdict: "pass".into(),
            passed: true,
            score: None,
            judgments: None,
        }));
        done(Stage::Judge, &set.id);
    }
    Ok(())
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");

    let ingest_64k = ingest(dir.path(), 8, 2000);
    let ingest_1m = ingest(dir.path(), 125, 2000);

    // 10 x 10 x 1,000 = 100,000 runs, each id a hash of its canonical config.
    let grid = format!(
        "[model]\nname = \"tiny\"\n[grid]\n\"train.lr\" = [{}]\n\"train.clip_norm\" = [{}]\nseeds = [{}]\n",
        (1..=10).map(|i| format!("{i}e-4")).collect::<Vec<_>>().join(", "),
        (1..=10).map(|i| format!("{}.0", i)).collect::<Vec<_>>().join(", "),
        (0..1000).map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
    );
    let t = Instant::now();
    let big = plan_of(&grid);
    let plan_s = t.elapsed().as_secs_f64();
    assert_eq!(big.runs.len(), 100_000);

    // Plan -> store -> report around a no-op trainer.
    let n = 200;
    let t = Instant::now();
    let p = plan_of(&format!(
        "[experiment]\nname = \"noop\"\n[model]\nname = \"tiny\"\n[grid]\nseeds = [{}]\n",
        (0..n).map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
    ));
    let db = dir.path().join("exec.db");
    let mut store = Store::open(&db).expect("store");
    let opts = ExecOptions {
        devices: None,
        ownership: ablate::store::Ownership::CheckOwner,
        jobs: 1,
        results: dir.path().join("results"),
        cancel: Arc::new(AtomicBool::new(false)),
        git_rev: None,
        db: None,
        runner: noop,
    };
    let outcome = exec::execute(&p, &mut store, &opts, &mut Quiet).expect("execute");
    assert_eq!(outcome.done, n);
    let template = TemplateSource::resolve(None, None).expect("template");
    report::write_report(
        &store,
        "noop",
        &template,
        &dir.path().join("reports"),
        &ReportOptions::default(),
    )
    .expect("report");
    let per_run_ms = 1000.0 * t.elapsed().as_secs_f64() / n as f64;

    println!(
        "{}",
        serde_json::json!({
            "ingest_64k_points_per_s": ingest_64k,
            "ingest_1m_points_per_s": ingest_1m,
            "plan_100k_runs_s": plan_s,
            "executor_overhead_ms_per_run": per_run_ms,
            "executor_runs": n,
        })
    );
}

/// Rows per transaction (the executor's FLUSH_EVERY), overridable to study the effect.
fn batch_rows() -> usize {
    std::env::var("ABLATE_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}
