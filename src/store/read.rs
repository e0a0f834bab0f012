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

impl Store {
    /// (step, value) of one metric of one run, in step order.
    pub fn series(&self, run_id: &str, name: &str, split: &str) -> Result<Vec<(i64, f64)>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT step, value FROM metrics WHERE run_id = ?1 AND name = ?2 AND split = ?3
                 ORDER BY step",
            )
            .map_err(err(&self.path))?;
        let rows = stmt
            .query_map(params![run_id, name, split], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(err(&self.path))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err(&self.path))
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
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT dataset, example_id, category, evaluator, passed, verdict FROM eval_results
                 WHERE run_id = ?1 ORDER BY dataset, example_id, evaluator",
            )
            .map_err(err(&self.path))?;
        let rows = stmt
            .query_map(params![run_id], |r| {
                Ok(VerdictRow {
                    dataset: r.get(0)?,
                    example_id: r.get(1)?,
                    category: r.get(2)?,
                    evaluator: r.get(3)?,
                    passed: r.get::<_, i64>(4)? != 0,
                    verdict: r.get(5)?,
                })
            })
            .map_err(err(&self.path))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
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
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM runs WHERE substr(id, 1, length(?1)) = ?1 ORDER BY id")
            .map_err(err(&self.path))?;
        let rows = stmt
            .query_map(params![prefix], |r| r.get(0))
            .map_err(err(&self.path))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err(&self.path))
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
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name FROM sweeps ORDER BY name")
            .map_err(err(&self.path))?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(err(&self.path))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err(&self.path))
    }

    /// The sweep's runs in plan order: (run id, axes JSON, is baseline).
    pub fn sweep_runs(&self, sweep: &str) -> Result<Vec<(String, String, bool)>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT run_id, axes_json, is_baseline FROM sweep_runs WHERE sweep = ?1
                 ORDER BY position",
            )
            .map_err(err(&self.path))?;
        let rows = stmt
            .query_map(params![sweep], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? == 1))
            })
            .map_err(err(&self.path))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err(&self.path))
    }
}
