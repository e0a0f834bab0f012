//! Shard databases: each Slurm array task writes its run to a database of its own (never
//! one SQLite file shared over a network filesystem), and `ablate collect` merges them into
//! the main one. A merge copies a finished run's row, metrics and verdicts verbatim, and
//! skips a run whose row already matches, so merging twice changes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{err, write_records, Record, Result, RunStatus, Store, NOW};

/// One submitted array task, as `slurm_tasks` records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlurmTask {
    pub job_id: String,
    pub task_id: i64,
    pub run_id: String,
    pub shard: PathBuf,
    pub submit_dir: PathBuf,
}

/// What merging one shard did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// The run ended in the shard; its row, metrics and verdicts are now the main DB's.
    Merged(RunStatus),
    /// Already merged: the main DB's row is the shard's.
    Unchanged(RunStatus),
    /// The shard's run has not ended (pending, or running: perhaps killed mid-run).
    Unfinished(RunStatus),
    /// No shard file, or no row for the run in it: the task never started its run.
    Missing,
}

/// The columns of `runs` that a merge copies (all but id, config_json and created_at, which
/// the main DB has had since submission), compared to tell whether a shard is merged already.
const RUN_COLUMNS: &str = "status, attempts, started_at, finished_at, duration_s, host, pid, \
                           git_rev, ablate_version, error, devices";
const N_RUN_COLUMNS: usize = 11;

type RunRow = Vec<rusqlite::types::Value>;

fn run_row(conn: &rusqlite::Connection, run_id: &str) -> rusqlite::Result<Option<RunRow>> {
    conn.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
        [run_id],
        |r| (0..N_RUN_COLUMNS).map(|i| r.get(i)).collect(),
    )
    .optional()
}

impl Store {
    /// Makes sure a run has a row (a shard's one run, registered before it is claimed).
    pub fn ensure_run(&mut self, run_id: &str, config_json: &str) -> Result<()> {
        self.conn
            .execute(&super::insert_pending_run(), params![run_id, config_json])
            .map(drop)
            .map_err(err(&self.path))
    }

    /// Records the tasks of one submitted array.
    pub fn record_slurm_tasks(&mut self, tasks: &[SlurmTask]) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err(&path))?;
        {
            let mut ins = tx
                .prepare(&format!(
                    "INSERT INTO slurm_tasks (job_id, task_id, run_id, shard, submit_dir, submitted_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, {NOW})"
                ))
                .map_err(err(&path))?;
            for t in tasks {
                ins.execute(params![
                    t.job_id,
                    t.task_id,
                    t.run_id,
                    t.shard.display().to_string(),
                    t.submit_dir.display().to_string()
                ])
                .map_err(err(&path))?;
            }
        }
        tx.commit().map_err(err(&path))
    }

    /// The newest submitted task of every run that was ever submitted, in submission order.
    pub fn slurm_tasks(&self) -> Result<Vec<SlurmTask>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT job_id, task_id, run_id, shard, submit_dir FROM slurm_tasks ORDER BY rowid",
            )
            .map_err(err(&self.path))?;
        let all = stmt
            .query_map([], |r| {
                Ok(SlurmTask {
                    job_id: r.get(0)?,
                    task_id: r.get(1)?,
                    run_id: r.get(2)?,
                    shard: PathBuf::from(r.get::<_, String>(3)?),
                    submit_dir: PathBuf::from(r.get::<_, String>(4)?),
                })
            })
            .map_err(err(&self.path))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err(&self.path))?;
        let mut newest: HashMap<String, usize> = HashMap::new();
        for (i, t) in all.iter().enumerate() {
            newest.insert(t.run_id.clone(), i);
        }
        Ok(all
            .into_iter()
            .enumerate()
            .filter(|(i, t)| newest[&t.run_id] == *i)
            .map(|(_, t)| t)
            .collect())
    }

    /// Merges run `run_id` from `shard` into this database if it ended there. Idempotent:
    /// a run whose row here already equals the shard's is left alone, and nothing is
    /// written.
    pub fn merge_shard(&mut self, shard: &Path, run_id: &str) -> Result<Merge> {
        if !shard.is_file() {
            return Ok(Merge::Missing);
        }
        let src = Store::open_read_only(shard)?;
        let Some(theirs) = run_row(&src.conn, run_id).map_err(err(shard))? else {
            return Ok(Merge::Missing);
        };
        let status = match &theirs[0] {
            rusqlite::types::Value::Text(s) => RunStatus::parse(s),
            _ => RunStatus::Pending,
        };
        if matches!(status, RunStatus::Pending | RunStatus::Running) {
            return Ok(Merge::Unfinished(status));
        }
        let ours = run_row(&self.conn, run_id).map_err(err(&self.path))?;
        if ours.as_ref() == Some(&theirs) {
            return Ok(Merge::Unchanged(status));
        }
        let config_json: String = src
            .conn
            .query_row(
                "SELECT config_json FROM runs WHERE id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(err(shard))?;
        let rows = shard_rows(&src, run_id).map_err(err(shard))?;
        let judged = judge_rows(&src).map_err(err(shard))?;
        drop(src);

        let path = self.path.clone();
        // The shard's stage tables are read through ATTACH (outside any transaction, as
        // SQLite requires), and detached whatever happens.
        self.conn
            .execute("ATTACH DATABASE ?1 AS shard", [shard.display().to_string()])
            .map_err(err(&path))?;
        let merged = self.merge_attached(run_id, &config_json, &rows, &judged, theirs);
        self.conn
            .execute("DETACH DATABASE shard", [])
            .map_err(err(&path))?;
        merged?;
        Ok(Merge::Merged(status))
    }

    fn merge_attached(
        &mut self,
        run_id: &str,
        config_json: &str,
        rows: &[Record],
        judged: &[Vec<rusqlite::types::Value>],
        theirs: RunRow,
    ) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err(&path))?;
        tx.execute(
            "INSERT OR IGNORE INTO runs (id, config_json, status, created_at)
             VALUES (?1, ?2, 'pending', '')",
            params![run_id, config_json],
        )
        .map_err(err(&path))?;
        tx.execute("DELETE FROM metrics WHERE run_id = ?1", [run_id])
            .map_err(err(&path))?;
        tx.execute("DELETE FROM eval_results WHERE run_id = ?1", [run_id])
            .map_err(err(&path))?;
        write_records(&tx, rows).map_err(err(&path))?;
        // The task's LLM-judge answers, so that judging the same prompts again from the
        // main database asks nothing. A key is a hash of what was asked: same key, same row.
        {
            let mut ins = tx
                .prepare(
                    "INSERT OR IGNORE INTO judge_cache
                     (key, endpoint, model, function, response, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err(&path))?;
            for row in judged {
                ins.execute(rusqlite::params_from_iter(row))
                    .map_err(err(&path))?;
            }
        }
        copy_stages(&tx, run_id).map_err(err(&path))?;
        let sets = RUN_COLUMNS
            .split(", ")
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let mut values: Vec<rusqlite::types::Value> = vec![run_id.to_string().into()];
        values.extend(theirs);
        tx.execute(
            &format!("UPDATE runs SET {sets} WHERE id = ?1"),
            rusqlite::params_from_iter(values),
        )
        .map_err(err(&path))?;
        tx.commit().map_err(err(&path))
    }

    /// The last training step a shard has logged for a run, for progress display.
    pub fn last_step(&self, run_id: &str) -> Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT MAX(step) FROM (
                   SELECT step FROM metrics WHERE run_id = ?1 AND split = 'train'
                   UNION ALL
                   SELECT step FROM training_metrics WHERE split = 'train' AND training_id =
                     (SELECT training_id FROM run_stages WHERE run_id = ?1))",
                [run_id],
                |r| r.get(0),
            )
            .map_err(err(&self.path))
    }

    /// A run's status and error, if the run has a row.
    pub fn run_status(&self, run_id: &str) -> Result<Option<(RunStatus, Option<String>)>> {
        self.conn
            .query_row(
                "SELECT status, error FROM runs WHERE id = ?1",
                [run_id],
                |r| Ok((RunStatus::parse(&r.get::<_, String>(0)?), r.get(1)?)),
            )
            .optional()
            .map_err(err(&self.path))
    }
}

/// The done stages of a shard's run, with their rows, and which stages make the run (the
/// shard is attached as `shard`; both databases have the same schema, so rows copy whole).
fn copy_stages(tx: &rusqlite::Transaction<'_>, run_id: &str) -> rusqlite::Result<()> {
    let training = "SELECT training_id FROM shard.run_stages WHERE run_id = ?1";
    let generation = "SELECT generation_id FROM shard.run_stages WHERE run_id = ?1";
    let sets = "SELECT verdict_set_id FROM shard.run_verdict_sets WHERE run_id = ?1";
    for sql in [
        format!("INSERT OR REPLACE INTO trainings SELECT * FROM shard.trainings WHERE status = 'done' AND id IN ({training})"),
        format!("INSERT OR REPLACE INTO training_metrics SELECT m.* FROM shard.training_metrics m JOIN shard.trainings t ON t.id = m.training_id WHERE t.status = 'done' AND t.id IN ({training})"),
        format!("INSERT OR REPLACE INTO generations SELECT * FROM shard.generations WHERE status = 'done' AND id IN ({generation})"),
        format!("INSERT OR REPLACE INTO predictions SELECT p.* FROM shard.predictions p JOIN shard.generations g ON g.id = p.generation_id WHERE g.status = 'done' AND g.id IN ({generation})"),
        format!("INSERT OR REPLACE INTO verdict_sets SELECT * FROM shard.verdict_sets WHERE status = 'done' AND id IN ({sets})"),
        format!("INSERT OR REPLACE INTO verdicts SELECT v.* FROM shard.verdicts v JOIN shard.verdict_sets s ON s.id = v.verdict_set_id WHERE s.status = 'done' AND s.id IN ({sets})"),
    ] {
        tx.execute(&sql, [run_id])?;
    }
    // The run's links, as the shard has them, when their stages are here.
    tx.execute(
        "INSERT OR REPLACE INTO run_stages SELECT s.* FROM shard.run_stages s
         WHERE s.run_id = ?1 AND s.training_id IN (SELECT id FROM trainings)
           AND s.generation_id IN (SELECT id FROM generations)",
        [run_id],
    )?;
    tx.execute(
        "DELETE FROM run_verdict_sets WHERE run_id = ?1
           AND EXISTS (SELECT 1 FROM shard.run_verdict_sets WHERE run_id = ?1)",
        [run_id],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO run_verdict_sets SELECT * FROM shard.run_verdict_sets
         WHERE run_id = ?1 AND verdict_set_id IN (SELECT id FROM verdict_sets)",
        [run_id],
    )?;
    Ok(())
}

/// Every row of a shard's `judge_cache`, column by column.
fn judge_rows(src: &Store) -> rusqlite::Result<Vec<Vec<rusqlite::types::Value>>> {
    let mut stmt = src
        .conn
        .prepare("SELECT key, endpoint, model, function, response, created_at FROM judge_cache")?;
    let rows = stmt.query_map([], |r| (0..6).map(|i| r.get(i)).collect())?;
    rows.collect()
}

/// Every metric and verdict of one run in a shard, as records.
fn shard_rows(src: &Store, run_id: &str) -> rusqlite::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut m = src
        .conn
        .prepare("SELECT name, split, step, value FROM metrics WHERE run_id = ?1")?;
    for r in m.query_map([run_id], |r| {
        Ok(Record::Metric {
            run_id: run_id.to_string(),
            name: r.get(0)?,
            split: r.get(1)?,
            step: r.get(2)?,
            value: r.get(3)?,
        })
    })? {
        out.push(r?);
    }
    let mut v = src.conn.prepare(
        "SELECT dataset, example_id, category, evaluator, verdict, passed, prediction, gold
         FROM eval_results WHERE run_id = ?1",
    )?;
    for r in v.query_map([run_id], |r| {
        Ok(Record::Verdict {
            run_id: run_id.to_string(),
            dataset: r.get(0)?,
            example_id: r.get(1)?,
            category: r.get(2)?,
            evaluator: r.get(3)?,
            verdict: r.get(4)?,
            passed: r.get(5)?,
            prediction: r.get(6)?,
            gold: r.get(7)?,
        })
    })? {
        out.push(r?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Claim, Ownership};

    fn metric(step: i64, value: f64) -> Record {
        Record::Metric {
            run_id: "r".into(),
            name: "loss".into(),
            split: "train".into(),
            step,
            value,
        }
    }

    fn dump(s: &Store) -> Vec<String> {
        let mut out = Vec::new();
        for sql in [
            "SELECT id || status || attempts || ifnull(error, '') FROM runs",
            "SELECT name || split || step || quote(value) FROM metrics ORDER BY 1",
        ] {
            let mut st = s.conn.prepare(sql).unwrap();
            out.extend(
                st.query_map([], |r| r.get::<_, String>(0))
                    .unwrap()
                    .map(|r| r.unwrap()),
            );
        }
        out
    }

    #[test]
    fn a_finished_shard_merges_once_and_an_unfinished_one_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut main = Store::open(&dir.path().join("main.db")).unwrap();
        main.ensure_run("r", "{}").unwrap();
        let shard_path = dir.path().join("shards/r.db");
        assert_eq!(main.merge_shard(&shard_path, "r").unwrap(), Merge::Missing);

        let mut shard = Store::open(&shard_path).unwrap();
        shard.ensure_run("r", "{}").unwrap();
        assert_eq!(
            main.merge_shard(&shard_path, "r").unwrap(),
            Merge::Unfinished(RunStatus::Pending)
        );
        let claim = shard.claim("r", "node7", None, Ownership::Exclusive, None);
        assert_eq!(claim.unwrap(), Claim::Claimed);
        shard.write(&[metric(1, 0.5)]).unwrap();
        assert_eq!(
            main.merge_shard(&shard_path, "r").unwrap(),
            Merge::Unfinished(RunStatus::Running)
        );
        assert!(dump(&main).iter().all(|l| !l.starts_with("loss")));

        shard
            .conn
            .execute(
                "INSERT INTO judge_cache VALUES ('k1', 'http://j/v1', 'm', 'check_answer_status', '{}', 'now')",
                [],
            )
            .unwrap();
        shard
            .finish("r", RunStatus::Done, None, 1.5, &[metric(2, 0.25)])
            .unwrap();
        assert_eq!(
            main.merge_shard(&shard_path, "r").unwrap(),
            Merge::Merged(RunStatus::Done)
        );
        let judged: i64 = main
            .conn
            .query_row(
                "SELECT COUNT(*) FROM judge_cache WHERE key = 'k1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(judged, 1, "the shard's judge answers come along");
        let merged = dump(&main);
        assert_eq!(merged, dump(&shard));
        assert_eq!(
            main.merge_shard(&shard_path, "r").unwrap(),
            Merge::Unchanged(RunStatus::Done)
        );
        assert_eq!(dump(&main), merged);

        // A later attempt in the shard (a requeue) replaces the merged rows, not adds.
        shard
            .claim("r", "node8", None, Ownership::Exclusive, None)
            .unwrap();
        shard
            .finish(
                "r",
                RunStatus::Failed,
                Some("boom"),
                0.1,
                &[metric(1, 0.75)],
            )
            .unwrap();
        assert_eq!(
            main.merge_shard(&shard_path, "r").unwrap(),
            Merge::Merged(RunStatus::Failed)
        );
        assert_eq!(dump(&main), dump(&shard));
        assert!(dump(&main).contains(&"loss train 1 0.75".replace(' ', "")));
    }

    #[test]
    fn exclusive_ownership_takes_over_a_row_of_another_host() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        s.ensure_run("r", "{}").unwrap();
        s.conn
            .execute(
                "UPDATE runs SET status = 'running', host = 'elsewhere', pid = 1 WHERE id = 'r'",
                [],
            )
            .unwrap();
        assert_eq!(
            s.claim("r", "here", None, Ownership::CheckOwner, None)
                .unwrap(),
            Claim::Busy
        );
        assert_eq!(
            s.claim("r", "here", None, Ownership::Exclusive, None)
                .unwrap(),
            Claim::Claimed
        );
    }
}
