//! Typed reads for reports and exports: prepared statements with bound parameters, so a
//! sweep with a million metric rows is read without building a JSON value per cell.

use rusqlite::params;

use super::{err, Result, Store};

/// One per-example verdict, without the prediction text.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictRow {
    pub dataset: String,
    pub example_id: String,
    pub category: String,
    pub evaluator: String,
    /// `pass`, or what failed: a rule name, BFCL's `error_type`, an episode's ending.
    pub verdict: String,
    pub passed: bool,
}

impl VerdictRow {
    /// From the columns `dataset, example_id, category, evaluator, passed, verdict`.
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<VerdictRow> {
        Ok(VerdictRow {
            dataset: r.get(0)?,
            example_id: r.get(1)?,
            category: r.get(2)?,
            evaluator: r.get(3)?,
            passed: r.get::<_, i64>(4)? != 0,
            verdict: r.get(5)?,
        })
    }
}

/// A per-example verdict with the prediction and the gold answer it judged.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleRow {
    pub verdict: VerdictRow,
    pub prediction: String,
    pub gold: String,
}

/// Where a run's stages stand, as `run_stage_status` has them.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStages {
    pub run_id: String,
    pub training: String,
    pub generation: String,
    pub verdict_sets_done: usize,
    pub verdict_sets: usize,
}

/// A run's summary metrics and identity, as `run_summary` and `runs` hold them.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub run_id: String,
    pub status: String,
    pub config_json: String,
    pub error: Option<String>,
    pub duration_s: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub pass_rate: Option<f64>,
    pub n_eval: Option<i64>,
}

/// A run in progress: where its training stands and how long the rest should take.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Progress {
    pub run_id: String,
    pub started_at: String,
    pub host: String,
    /// The last optimizer step logged, if any.
    pub step: Option<i64>,
    /// The training's length in steps (steps an epoch times its epochs), once known.
    pub total_steps: Option<i64>,
    pub loss: Option<f64>,
    /// Mean seconds an optimizer step so far.
    pub step_time_s: Option<f64>,
}

impl Progress {
    /// Seconds until the training ends at the mean step time so far.
    pub fn eta_s(&self) -> Option<f64> {
        let left = (self.total_steps? - self.step.unwrap_or(0)).max(0);
        Some(left as f64 * self.step_time_s?)
    }
}

impl Store {
    /// Every row of a (cached) statement, each mapped by `row`.
    fn all<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(err(&self.path))?;
        let rows = stmt.query_map(params, row).map_err(err(&self.path))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err(&self.path))
    }

    /// The runs in progress (status `running`), oldest first, with their training's step,
    /// length, last loss and mean step time: what `ablate status` and the live page show.
    pub fn progress(&self) -> Result<Vec<Progress>> {
        // A run's metrics are its training's until the run is done.
        self.all(
            "SELECT r.id, r.started_at, r.host,
               (SELECT MAX(step) FROM training_metrics m WHERE m.training_id = s.training_id
                  AND m.name = 'loss' AND m.split = 'train'),
               (SELECT value FROM training_metrics m WHERE m.training_id = s.training_id
                  AND m.name = 'steps_per_epoch' AND m.split = 'train' AND m.step = -1)
               * json_extract(t.key_json, '$.train.epochs'),
               (SELECT value FROM training_metrics m WHERE m.training_id = s.training_id
                  AND m.name = 'loss' AND m.split = 'train' ORDER BY step DESC LIMIT 1),
               (SELECT AVG(value) FROM training_metrics m WHERE m.training_id = s.training_id
                  AND m.name = 'step_time_s' AND m.split = 'train')
             FROM runs r LEFT JOIN run_stages s ON s.run_id = r.id
             LEFT JOIN trainings t ON t.id = s.training_id
             WHERE r.status = 'running' ORDER BY r.started_at",
            [],
            |r| {
                Ok(Progress {
                    run_id: r.get(0)?,
                    started_at: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    host: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    step: r.get(3)?,
                    total_steps: r.get::<_, Option<f64>>(4)?.map(|t| t as i64),
                    loss: r.get(5)?,
                    step_time_s: r.get(6)?,
                })
            },
        )
    }

    /// (step, value) of one metric of one run, in step order.
    pub fn series(&self, run_id: &str, name: &str, split: &str) -> Result<Vec<(i64, f64)>> {
        self.all(
            "SELECT step, value FROM metrics WHERE run_id = ?1 AND name = ?2 AND split = ?3
             ORDER BY step",
            params![run_id, name, split],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// A run-level value (step -1), such as `params` in split `model`.
    pub fn summary_metric(&self, run_id: &str, name: &str, split: &str) -> Result<Option<f64>> {
        Ok(self
            .series(run_id, name, split)?
            .into_iter()
            .find(|(s, _)| *s == -1)
            .map(|(_, v)| v))
    }

    /// Every per-example verdict of a run.
    pub fn verdicts(&self, run_id: &str) -> Result<Vec<VerdictRow>> {
        self.all(
            "SELECT dataset, example_id, category, evaluator, passed, verdict FROM eval_results
             WHERE run_id = ?1 ORDER BY dataset, example_id, evaluator",
            params![run_id],
            VerdictRow::read,
        )
    }

    /// Every per-example verdict of a run with its prediction and gold answer, by
    /// evaluator, dataset and example (what the dashboard's examples page lists).
    pub fn examples(&self, run_id: &str) -> Result<Vec<ExampleRow>> {
        self.all(
            "SELECT dataset, example_id, category, evaluator, passed, verdict, prediction,
                    gold
             FROM eval_results WHERE run_id = ?1 ORDER BY evaluator, dataset, example_id",
            params![run_id],
            |r| {
                Ok(ExampleRow {
                    verdict: VerdictRow::read(r)?,
                    prediction: r.get(6)?,
                    gold: r.get(7)?,
                })
            },
        )
    }

    /// The stages of each run of a sweep that has them registered.
    pub fn sweep_stages(&self, sweep: &str) -> Result<Vec<RunStages>> {
        self.all(
            "SELECT v.run_id, v.training_status, v.generation_status, v.verdict_sets_done,
                    v.verdict_sets
             FROM run_stage_status v JOIN sweep_runs s ON s.run_id = v.run_id
             WHERE s.sweep = ?1 ORDER BY s.position",
            params![sweep],
            |r| {
                Ok(RunStages {
                    run_id: r.get(0)?,
                    training: r.get(1)?,
                    generation: r.get(2)?,
                    verdict_sets_done: r.get::<_, i64>(3)?.max(0) as usize,
                    verdict_sets: r.get::<_, i64>(4)?.max(0) as usize,
                })
            },
        )
    }

    /// The first sweep (by name) that has a run: (sweep, the run's position in it, its
    /// axes JSON).
    pub fn sweep_of(&self, run_id: &str) -> Result<Option<(String, usize, String)>> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row(
                "SELECT sweep, position, axes_json FROM sweep_runs WHERE run_id = ?1
                 ORDER BY sweep LIMIT 1",
                params![run_id],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as usize, r.get(2)?)),
            )
            .optional()
            .map_err(err(&self.path))
    }

    /// A run's summary, or None when the id is unknown.
    pub fn run_info(&self, run_id: &str) -> Result<Option<RunInfo>> {
        use rusqlite::OptionalExtension;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.id, r.status, r.config_json, r.error, r.duration_s, v.final_train_loss,
                        v.final_val_loss, v.pass_rate, v.n_eval
                 FROM runs r JOIN run_summary v ON v.run_id = r.id WHERE r.id = ?1",
            )
            .map_err(err(&self.path))?;
        stmt.query_row(params![run_id], |r| {
            Ok(RunInfo {
                run_id: r.get(0)?,
                status: r.get(1)?,
                config_json: r.get(2)?,
                error: r.get(3)?,
                duration_s: r.get(4)?,
                final_train_loss: r.get(5)?,
                final_val_loss: r.get(6)?,
                pass_rate: r.get(7)?,
                n_eval: r.get(8)?,
            })
        })
        .optional()
        .map_err(err(&self.path))
    }

    /// Run ids whose id starts with `prefix` (for `ablate compare` with short ids).
    pub fn run_ids_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        self.all(
            "SELECT id FROM runs WHERE substr(id, 1, length(?1)) = ?1 ORDER BY id",
            params![prefix],
            |r| r.get(0),
        )
    }

    /// The sweep's description, file and axes, or None when the sweep is unknown.
    pub fn sweep_meta(&self, sweep: &str) -> Result<Option<(String, String, Vec<String>)>> {
        use rusqlite::OptionalExtension;
        let row: Option<(String, String, String)> = self
            .conn
            .query_row(
                "SELECT description, file, axes_json FROM sweeps WHERE name = ?1",
                params![sweep],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(err(&self.path))?;
        Ok(row.map(|(d, f, a)| (d, f, serde_json::from_str(&a).unwrap_or_default())))
    }

    /// Every sweep's name, sorted.
    pub fn sweep_names(&self) -> Result<Vec<String>> {
        self.all("SELECT name FROM sweeps ORDER BY name", [], |r| r.get(0))
    }

    /// The sweep's runs in plan order: (run id, axes JSON, is baseline).
    pub fn sweep_runs(&self, sweep: &str) -> Result<Vec<(String, String, bool)>> {
        self.all(
            "SELECT run_id, axes_json, is_baseline FROM sweep_runs WHERE sweep = ?1
             ORDER BY position",
            params![sweep],
            |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? == 1)),
        )
    }
}
