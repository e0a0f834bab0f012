//! A run's stages in the store: trainings, generations and verdict sets, each done once
//! for its identity and shared by every run that names it. A run's own rows (`metrics`,
//! `eval_results`) are assembled from its stages when it finishes, so what reports, `query`
//! and `export` read is unchanged.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use super::{err, owner_alive, process_identity, Ownership, Result, RunStatus, Store, NOW};
use crate::eval::{Prediction, PredictionKind};
use crate::plan::stages::{StageIds, VerdictSetId};

/// The stages of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Train,
    Generate,
    Judge,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Train => "train",
            Stage::Generate => "generate",
            Stage::Judge => "judge",
        }
    }

    fn table(self) -> &'static str {
        match self {
            Stage::Train => "trainings",
            Stage::Generate => "generations",
            Stage::Judge => "verdict_sets",
        }
    }
}

/// What a run still has to do, read from the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageNeeds {
    pub train: bool,
    pub generate: bool,
    /// Verdict sets not done yet, in evaluator order.
    pub judge: Vec<VerdictSetId>,
    /// The training's folder, relative to the results folder.
    pub training_dir: String,
}

impl StageNeeds {
    /// The stages this run will run, for display.
    pub fn stages(&self) -> Vec<Stage> {
        let mut out = Vec::new();
        if self.train {
            out.push(Stage::Train);
        }
        if self.generate {
            out.push(Stage::Generate);
        }
        if !self.judge.is_empty() {
            out.push(Stage::Judge);
        }
        out
    }
}

/// A done stage, with what produced it (for the stale-code warning).
#[derive(Debug, Clone, PartialEq)]
pub struct DoneStage {
    pub stage: Stage,
    pub id: String,
    pub provenance: Option<serde_json::Value>,
}

/// The outcome of claiming a run's stages.
#[derive(Debug, Clone, PartialEq)]
pub enum StageClaim {
    Claimed(StageNeeds),
    /// Another live process is producing a stage this run needs.
    Busy,
}

fn status_of(
    tx: &rusqlite::Connection,
    stage: Stage,
    id: &str,
) -> rusqlite::Result<Option<super::OwnedRow>> {
    let table = stage.table();
    let sql = match stage {
        Stage::Judge => format!("SELECT status, NULL, NULL, NULL FROM {table} WHERE id = ?1"),
        _ => format!("SELECT status, host, pid, owner FROM {table} WHERE id = ?1"),
    };
    tx.query_row(&sql, [id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .optional()
}

/// Records a run's stages (new ones as pending) and which stages make the run. A done run
/// of the same training takes new verdict sets (a new evaluator version re-scores it); one
/// made by other stages keeps them.
pub(crate) fn register(
    tx: &Transaction<'_>,
    run_id: &str,
    s: &StageIds,
    dir: Option<&str>,
) -> rusqlite::Result<()> {
    if s.training.is_empty() {
        return Ok(());
    }
    // A run finished before stages (its stages carry its run id) or from another
    // training keeps the stages that made it: its results stay what they were.
    let done: bool = tx
        .query_row(
            "SELECT status = 'done' FROM runs WHERE id = ?1",
            [run_id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    if done && training_of(tx, run_id)?.is_some_and(|t| t != s.training) {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT OR IGNORE INTO trainings (id, key_json, status, dir) VALUES (?1, ?2, 'pending', ?3)",
    )?
    .execute(params![
        s.training,
        s.keys.training.to_string(),
        dir.map_or_else(|| training_dir(&s.training), String::from)
    ])?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO generations (id, training_id, key_json, status)
         VALUES (?1, ?2, ?3, 'pending')",
    )?
    .execute(params![
        s.generation,
        s.training,
        s.keys.generation.to_string()
    ])?;
    tx.prepare_cached(
        "INSERT INTO run_stages (run_id, training_id, generation_id, checkpoint_epoch)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(run_id) DO UPDATE SET training_id = excluded.training_id,
           generation_id = excluded.generation_id, checkpoint_epoch = excluded.checkpoint_epoch",
    )?
    .execute(params![
        run_id,
        s.training,
        s.generation,
        s.checkpoint_epoch.map(|e| e as i64)
    ])?;
    tx.prepare_cached("DELETE FROM run_verdict_sets WHERE run_id = ?1")?
        .execute([run_id])?;
    for (i, (v, key)) in s.verdicts.iter().zip(&s.keys.verdicts).enumerate() {
        insert_verdict_set(tx, &s.generation, v, key.get())?;
        tx.prepare_cached(
            "INSERT INTO run_verdict_sets (run_id, position, evaluator, verdict_set_id)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![run_id, i as i64, v.evaluator.name(), v.id])?;
    }
    Ok(())
}

/// The training a run is registered with, if it has stages.
fn training_of(conn: &Connection, run_id: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT training_id FROM run_stages WHERE run_id = ?1",
        [run_id],
        |r| r.get(0),
    )
    .optional()
}

/// A verdict set of `generation`, pending, unless it is recorded already.
fn insert_verdict_set(
    conn: &Connection,
    generation: &str,
    set: &VerdictSetId,
    key_json: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO verdict_sets (id, generation_id, evaluator, version, key_json, status)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending')",
    )?
    .execute(params![set.id, generation, set.evaluator.name(), set.version, key_json])
    .map(drop)
}

/// Where a training's files go, relative to the results folder.
pub fn training_dir(training_id: &str) -> String {
    format!("trainings/{training_id}")
}

impl Store {
    /// The stages a run is registered with (its training, generation and verdict sets; no
    /// keys), if it has any.
    pub fn registered_stages(&self, run_id: &str) -> Result<Option<StageIds>> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT training_id, generation_id FROM run_stages WHERE run_id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(err(&self.path))?;
        let Some((training, generation)) = row else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT rv.evaluator, rv.verdict_set_id, COALESCE(v.version, '')
                 FROM run_verdict_sets rv LEFT JOIN verdict_sets v ON v.id = rv.verdict_set_id
                 WHERE rv.run_id = ?1 ORDER BY rv.position",
            )
            .map_err(err(&self.path))?;
        let verdicts = stmt
            .query_map([run_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
            })
            .map_err(err(&self.path))?
            .filter_map(|r| {
                let (ev, id, version) = r.ok()?;
                Some(VerdictSetId {
                    evaluator: crate::config::Evaluator::parse(&ev)?,
                    id,
                    version,
                })
            })
            .collect();
        Ok(Some(StageIds {
            training,
            generation,
            verdicts,
            ..Default::default()
        }))
    }

    /// The generation a run's predictions are stored under, if it has one that is done.
    pub fn run_generation(&self, run_id: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT s.generation_id FROM run_stages s JOIN generations g
                   ON g.id = s.generation_id AND g.status = 'done' WHERE s.run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(err(&self.path))
    }

    /// Records a verdict set of a generation (pending) unless it exists; returns whether it
    /// is done already.
    pub fn register_verdict_set(
        &mut self,
        generation: &str,
        set: &VerdictSetId,
        key: &serde_json::Value,
    ) -> Result<bool> {
        insert_verdict_set(&self.conn, generation, set, &key.to_string())
            .map_err(err(&self.path))?;
        let done = status_of(&self.conn, Stage::Judge, &set.id)
            .map_err(err(&self.path))?
            .is_some_and(|(s, _, _, _)| s == "done");
        if !done {
            self.conn
                .execute("DELETE FROM verdicts WHERE verdict_set_id = ?1", [&set.id])
                .map_err(err(&self.path))?;
        }
        Ok(done)
    }

    /// (judged, passed) of a verdict set.
    pub fn verdict_counts(&self, set: &str) -> Result<(usize, usize)> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(passed), 0) FROM verdicts WHERE verdict_set_id = ?1",
                [set],
                |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)? as usize)),
            )
            .map_err(err(&self.path))
    }

    /// Makes `set` the run's verdict set at `position` and assembles the run's rows anew
    /// (a done run only). Returns whether anything changed.
    pub fn relink_verdict_set(&mut self, run_id: &str, position: usize, set: &str) -> Result<bool> {
        self.write_tx(|tx| {
            let changed = tx.execute(
                "UPDATE run_verdict_sets SET verdict_set_id = ?3
                 WHERE run_id = ?1 AND position = ?2 AND verdict_set_id <> ?3
                   AND EXISTS (SELECT 1 FROM runs WHERE id = ?1 AND status = 'done')",
                params![run_id, position as i64, set],
            )?;
            if changed > 0 {
                assemble(tx, run_id)?;
            }
            Ok(changed > 0)
        })
    }

    /// The training a run was registered with, if it has stages.
    pub fn run_training(&self, run_id: &str) -> Result<Option<String>> {
        training_of(&self.conn, run_id).map_err(err(&self.path))
    }

    /// A done run whose planned stages are not all done (a new evaluator version): pending
    /// again, so the executor runs what is missing and assembles it anew. Returns whether
    /// it was reopened. Runs made by other stages (before stages existed) are left alone.
    pub fn reopen_if_incomplete(&mut self, run_id: &str, stages: &StageIds) -> Result<bool> {
        if stages.training.is_empty() {
            return Ok(false);
        }
        if self.run_training(run_id)?.as_deref() != Some(stages.training.as_str()) {
            return Ok(false);
        }
        let needs = self.stage_needs(stages)?;
        if needs.stages().is_empty() {
            return Ok(false);
        }
        self.conn
            .execute(
                "UPDATE runs SET status = 'pending' WHERE id = ?1 AND status = 'done'",
                [run_id],
            )
            .map_err(err(&self.path))?;
        Ok(true)
    }

    /// Registers one run's stages (a Slurm task's shard, which has no plan), its training
    /// in `dir` (relative to the results folder) when given.
    pub fn ensure_stages(
        &mut self,
        run_id: &str,
        stages: &StageIds,
        dir: Option<&str>,
    ) -> Result<()> {
        self.write_tx(|tx| register(tx, run_id, stages, dir))
    }

    /// What a run still needs, without claiming anything (for `plan`).
    pub fn stage_needs(&self, stages: &StageIds) -> Result<StageNeeds> {
        let done = |stage: Stage, id: &str| -> Result<bool> {
            Ok(status_of(&self.conn, stage, id)
                .map_err(err(&self.path))?
                .is_some_and(|(s, _, _, _)| s == "done"))
        };
        let train = !done(Stage::Train, &stages.training)?;
        let generate = train || !done(Stage::Generate, &stages.generation)?;
        let mut judge = Vec::new();
        for v in &stages.verdicts {
            if generate || !done(Stage::Judge, &v.id)? {
                judge.push(v.clone());
            }
        }
        Ok(StageNeeds {
            train,
            generate,
            judge,
            training_dir: self.training_dir_of(&stages.training)?,
        })
    }

    fn training_dir_of(&self, training_id: &str) -> Result<String> {
        Ok(self
            .conn
            .query_row(
                "SELECT dir FROM trainings WHERE id = ?1",
                [training_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(err(&self.path))?
            .unwrap_or_else(|| training_dir(training_id)))
    }

    /// Takes the stages a claimed run must produce: a training or generation that another
    /// live process is producing makes the run wait (`Busy`); one of an earlier, dead
    /// attempt is taken over and its partial rows cleared, so a replay cannot double them.
    /// `model_present` says whether a done training's model is still on disk; when it is
    /// not, the training runs again.
    pub fn claim_stages(
        &mut self,
        stages: &StageIds,
        host: &str,
        ownership: Ownership,
        model_present: &dyn Fn(&str) -> bool,
    ) -> Result<StageClaim> {
        let mut needs = self.stage_needs(stages)?;
        if !needs.train && needs.generate && !model_present(&needs.training_dir) {
            needs.train = true;
            needs.training_dir = training_dir(&stages.training);
        }
        let me = std::process::id() as i64;
        let mut take = Vec::new();
        if needs.train {
            take.push((Stage::Train, stages.training.as_str()));
        }
        if needs.generate {
            take.push((Stage::Generate, stages.generation.as_str()));
        }
        let taken = self.write_tx(|tx| {
            for (stage, id) in &take {
                if let Some((s, h, Some(pid), owner)) = status_of(tx, *stage, id)? {
                    let other_live = pid == me
                        || h.as_deref() != Some(host)
                        || owner_alive(pid, owner.as_deref());
                    if s == "running" && ownership == Ownership::CheckOwner && other_live {
                        return Ok(false);
                    }
                }
            }
            for (stage, id) in &take {
                tx.execute(
                    &format!(
                        "UPDATE {} SET status = 'running', host = ?2, pid = ?3, started_at = {NOW},
                         finished_at = NULL, error = NULL, owner = ?4 WHERE id = ?1",
                        stage.table()
                    ),
                    params![id, host, me, process_identity(me)],
                )?;
            }
            if needs.train {
                tx.execute(
                    "UPDATE trainings SET dir = ?2 WHERE id = ?1",
                    params![stages.training, needs.training_dir],
                )?;
            }
            if needs.generate {
                tx.execute(
                    "DELETE FROM predictions WHERE generation_id = ?1",
                    [&stages.generation],
                )?;
            }
            for v in &needs.judge {
                tx.execute("DELETE FROM verdicts WHERE verdict_set_id = ?1", [&v.id])?;
            }
            Ok(true)
        })?;
        Ok(if taken {
            StageClaim::Claimed(needs)
        } else {
            StageClaim::Busy
        })
    }

    /// Gives a claimed run back (its stages were busy): pending again, as if never taken.
    pub fn unclaim(&mut self, run_id: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET status = 'pending', attempts = MAX(attempts - 1, 0), pid = NULL,
                 started_at = NULL WHERE id = ?1 AND status = 'running'",
                [run_id],
            )
            .map(drop)
            .map_err(err(&self.path))
    }

    /// Marks a stage done, with what produced it.
    pub fn finish_stage(
        &mut self,
        stage: Stage,
        id: &str,
        duration_s: f64,
        provenance: &serde_json::Value,
        batch: &[super::Record],
    ) -> Result<()> {
        let sql = match stage {
            Stage::Judge => format!(
                "UPDATE verdict_sets SET status = 'done', finished_at = {NOW}, error = NULL,
                 provenance_json = ?2 WHERE id = ?1"
            ),
            _ => format!(
                "UPDATE {} SET status = 'done', finished_at = {NOW}, error = NULL, pid = NULL,
                 provenance_json = ?2, duration_s = ?3 WHERE id = ?1",
                stage.table()
            ),
        };
        let prov = provenance.to_string();
        self.write_tx(|tx| {
            super::write_records(tx, batch)?;
            match stage {
                Stage::Judge => tx.execute(&sql, params![id, prov]),
                _ => tx.execute(&sql, params![id, prov, duration_s]),
            }
            .map(drop)
        })
    }

    /// The stored predictions of a generation, in a stable order.
    pub fn predictions(&self, generation_id: &str) -> Result<Vec<Prediction>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT kind, example_id, dataset, category, prediction, gold, detail_json
                 FROM predictions WHERE generation_id = ?1 ORDER BY kind, example_id",
            )
            .map_err(err(&self.path))?;
        let rows = stmt
            .query_map([generation_id], |r| {
                let detail: Option<String> = r.get(6)?;
                Ok(Prediction {
                    kind: PredictionKind::parse(&r.get::<_, String>(0)?),
                    example_id: r.get(1)?,
                    dataset: r.get(2)?,
                    category: r.get(3)?,
                    prediction: r.get(4)?,
                    gold: r.get(5)?,
                    detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
                })
            })
            .map_err(err(&self.path))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(err(&self.path))
    }

    /// The done stages of these runs with their provenance (for the stale-code warning).
    pub fn done_stages(&self, stages: &StageIds) -> Result<Vec<DoneStage>> {
        let mut out = Vec::new();
        let mut ids = vec![
            (Stage::Train, stages.training.clone()),
            (Stage::Generate, stages.generation.clone()),
        ];
        ids.extend(stages.verdicts.iter().map(|v| (Stage::Judge, v.id.clone())));
        for (stage, id) in ids {
            let row: Option<Option<String>> = self
                .conn
                .query_row(
                    &format!(
                        "SELECT provenance_json FROM {} WHERE id = ?1 AND status = 'done'",
                        stage.table()
                    ),
                    [&id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err(&self.path))?;
            if let Some(p) = row {
                out.push(DoneStage {
                    stage,
                    id,
                    provenance: p.and_then(|p| serde_json::from_str(&p).ok()),
                });
            }
        }
        Ok(out)
    }

    /// Marks stages pending again so they rerun (`run --rerun-stale`); the runs made of
    /// them are pending too.
    pub fn reset_stages(&mut self, stages: &[(Stage, String)]) -> Result<()> {
        self.write_tx(|tx| {
            for (stage, id) in stages {
                tx.execute(
                    &format!(
                        "UPDATE {} SET status = 'pending' WHERE id = ?1",
                        stage.table()
                    ),
                    [id],
                )?;
                let runs_of = match stage {
                    Stage::Train => "SELECT run_id FROM run_stages WHERE training_id = ?1",
                    Stage::Generate => "SELECT run_id FROM run_stages WHERE generation_id = ?1",
                    Stage::Judge => "SELECT run_id FROM run_verdict_sets WHERE verdict_set_id = ?1",
                };
                tx.execute(
                    &format!("UPDATE runs SET status = 'pending' WHERE id IN ({runs_of})"),
                    [id],
                )?;
            }
            Ok(())
        })
    }
}

/// When a run ends unfinished, the stages it was producing end with it (a done stage stays
/// done: its rows are complete).
pub(crate) fn end_unfinished(
    tx: &Transaction<'_>,
    run_id: &str,
    status: RunStatus,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    let me = std::process::id() as i64;
    for (table, col) in [
        ("trainings", "training_id"),
        ("generations", "generation_id"),
    ] {
        tx.execute(
            &format!(
                "UPDATE {table} SET status = ?2, error = ?3, pid = NULL, finished_at = {NOW}
                 WHERE status = 'running' AND pid = ?4
                   AND id = (SELECT {col} FROM run_stages WHERE run_id = ?1)"
            ),
            params![run_id, status.as_str(), error, me],
        )?;
    }
    Ok(())
}

/// A finished run's own rows, from its stages: the training's metrics (up to its epoch
/// when the training is a longer run's), every verdict with its prediction, and the pass
/// rates (`pass_rate` and `n_eval` from the first evaluator, `pass_rate_<name>` for each).
pub(crate) fn assemble(tx: &Transaction<'_>, run_id: &str) -> rusqlite::Result<()> {
    let stages: Option<(String, Option<i64>)> = tx
        .query_row(
            "SELECT training_id, checkpoint_epoch FROM run_stages WHERE run_id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((training, epoch)) = stages else {
        return Ok(());
    };
    tx.execute("DELETE FROM metrics WHERE run_id = ?1", [run_id])?;
    tx.execute("DELETE FROM eval_results WHERE run_id = ?1", [run_id])?;
    // Steps of the run's own epochs: a prefix of the longer training's curve.
    let last_step: Option<i64> = match epoch {
        Some(e) => tx
            .query_row(
                "SELECT CAST(value AS INTEGER) * ?2 FROM training_metrics
                 WHERE training_id = ?1 AND name = 'steps_per_epoch' AND step = -1",
                params![training, e],
                |r| r.get(0),
            )
            .optional()?,
        None => None,
    };
    tx.execute(
        "INSERT OR REPLACE INTO metrics (run_id, name, split, step, value)
         SELECT ?1, name, split, step, value FROM training_metrics
         WHERE training_id = ?2 AND (?3 IS NULL OR step <= ?3)",
        params![run_id, training, last_step],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO eval_results
           (run_id, dataset, example_id, category, evaluator, verdict, passed, prediction, gold,
            score)
         SELECT ?1, p.dataset, p.example_id, p.category, rv.evaluator, v.verdict, v.passed,
                p.prediction, p.gold, v.score
         FROM run_verdict_sets rv
         JOIN verdict_sets vs ON vs.id = rv.verdict_set_id
         JOIN verdicts v ON v.verdict_set_id = vs.id
         JOIN predictions p ON p.generation_id = vs.generation_id AND p.kind = v.kind
          AND p.example_id = v.example_id
         WHERE rv.run_id = ?1",
        [run_id],
    )?;
    insert_labels(tx, run_id)?;
    let mut rates = tx.prepare_cached(
        "SELECT rv.position, rv.evaluator, COUNT(v.example_id),
                COALESCE(SUM(COALESCE(v.score, v.passed)), 0)
         FROM run_verdict_sets rv LEFT JOIN verdicts v ON v.verdict_set_id = rv.verdict_set_id
         WHERE rv.run_id = ?1 GROUP BY rv.position, rv.evaluator ORDER BY rv.position",
    )?;
    let rows: Vec<(i64, String, i64, f64)> = rates
        .query_map([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut put = tx.prepare_cached(
        "INSERT OR REPLACE INTO metrics (run_id, name, split, step, value)
         VALUES (?1, ?2, 'test', -1, ?3)",
    )?;
    for (pos, ev, n, passed) in rows {
        let rate = passed / n.max(1) as f64;
        if pos == 0 {
            put.execute(params![run_id, "pass_rate", rate])?;
            put.execute(params![run_id, "n_eval", n as f64])?;
        }
        put.execute(params![run_id, format!("pass_rate_{ev}"), rate])?;
    }
    Ok(())
}

/// A finished run's rows of people's verdicts (`labels`) on its generation's predictions,
/// under `<evaluator>` or `<evaluator>/<annotator>`.
pub(crate) fn insert_labels(tx: &Connection, run_id: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO eval_results
           (run_id, dataset, example_id, category, evaluator, verdict, passed, prediction, gold)
         SELECT ?1, p.dataset, p.example_id, p.category,
                CASE WHEN l.annotator = '' THEN l.evaluator
                     ELSE l.evaluator || '/' || l.annotator END,
                l.verdict, l.passed, p.prediction, p.gold
         FROM run_stages s
         JOIN labels l ON l.generation_id = s.generation_id
         JOIN predictions p ON p.generation_id = l.generation_id AND p.kind = l.kind
          AND p.example_id = l.example_id
         WHERE s.run_id = ?1",
        [run_id],
    )
    .map(drop)
}
