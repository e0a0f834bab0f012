//! The results database: one SQLite file, WAL mode, migrations applied at open, one
//! writer connection per process, batched transactions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use crate::plan::{canonical_json, Plan};

pub mod judge_cache;
pub mod labels;
mod read;
mod shard;
pub mod stages;
pub use read::{ExampleRow, Progress, RunInfo, RunStages, VerdictRow};
pub use shard::{Merge, SlurmTask};
pub use stages::{Stage, StageClaim, StageNeeds};

/// Numbered migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../migrations/0001_init.sql")),
    (
        "0002_evaluator_agreement",
        include_str!("../../migrations/0002_evaluator_agreement.sql"),
    ),
    (
        "0003_cluster",
        include_str!("../../migrations/0003_cluster.sql"),
    ),
    (
        "0004_judge_cache",
        include_str!("../../migrations/0004_judge_cache.sql"),
    ),
    (
        "0005_stages",
        include_str!("../../migrations/0005_stages.sql"),
    ),
    (
        "0006_liveness",
        include_str!("../../migrations/0006_liveness.sql"),
    ),
    (
        "0007_judgments_and_labels",
        include_str!("../../migrations/0007_judgments_and_labels.sql"),
    ),
];

pub const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {0} does not exist yet (run `ablate run` first)")]
    Missing(String),
    #[error("database {path} has schema version {found}, newer than this ablate ({known}); upgrade ablate")]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error(
        "only read-only statements are allowed in `ablate query` (use SELECT, WITH or EXPLAIN)"
    )]
    NotReadOnly,
    #[error("cannot create {path}: {message}")]
    Io { path: String, message: String },
    #[error("`ablate query` runs one statement at a time; this SQL has {0} (split it, or use a WITH clause)")]
    MultipleStatements(usize),
    /// SQLite refused the user's statement itself (an unknown table, a function it may
    /// not call, an ATTACH of a file it cannot open, an expression too deep).
    #[error("query: {0}")]
    BadQuery(String),
    /// The result could not be written where it was going.
    #[error("writing the result: {0}")]
    Output(std::io::Error),
    /// A WAL database whose log holds changes, in a folder where SQLite cannot make the
    /// `-shm` file it needs to read them: opened without the log, it would look older.
    #[error(
        "database {0}: its write-ahead log ({0}-wal) holds changes that cannot be read in \
         this read-only folder; copy the database and its -wal file to a writable folder"
    )]
    UnreadableLog(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What [`Store::query_each`] hands its rows to: the column names with `None` first, then
/// each row.
pub type RowSink<'a> =
    dyn FnMut(&[String], Option<Vec<serde_json::Value>>) -> std::io::Result<()> + 'a;

/// Status of a run in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Pending,
    Running,
    Done,
    Failed,
    Interrupted,
    Diverged,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Diverged => "diverged",
        }
    }
    pub fn parse(s: &str) -> RunStatus {
        match s {
            "running" => RunStatus::Running,
            "done" => RunStatus::Done,
            "failed" => RunStatus::Failed,
            "interrupted" => RunStatus::Interrupted,
            "diverged" => RunStatus::Diverged,
            _ => RunStatus::Pending,
        }
    }
}

/// A row to write, batched by the writer.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Metric {
        run_id: String,
        name: String,
        split: String,
        step: i64,
        value: f64,
    },
    /// A training's metric (loss curve, summaries); a run gets a copy when it finishes.
    TrainingMetric {
        training_id: String,
        name: String,
        split: String,
        step: i64,
        value: f64,
    },
    /// What a generation produced for one example.
    Prediction {
        generation_id: String,
        prediction: crate::eval::Prediction,
    },
    /// One verdict of a verdict set.
    StageVerdict {
        verdict_set_id: String,
        kind: crate::eval::PredictionKind,
        example_id: String,
        verdict: String,
        passed: bool,
        /// A fractional score (StableToolBench's SoPR), when the evaluator gives one.
        score: Option<f64>,
        /// The judge's k judgments, when it asks k times.
        judgments: Option<serde_json::Value>,
    },
    /// An answer of the LLM judge's endpoint, for `judge_cache`.
    JudgeAnswer(crate::eval::llm_judge::CachedAnswer),
    /// A run's verdict row as `eval_results` holds it (merging a shard's rows).
    Verdict {
        run_id: String,
        dataset: String,
        example_id: String,
        category: String,
        evaluator: String,
        verdict: String,
        passed: bool,
        prediction: String,
        gold: String,
    },
}

/// Whose word decides that a `running` row is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ownership {
    /// A row owned by a live process on this host, or by any process on another host, is
    /// busy; a dead owner on this host is taken over.
    #[default]
    CheckOwner,
    /// A scheduler guarantees this process is the run's only runner (a Slurm array task,
    /// requeued perhaps on another node): an earlier attempt's row is always taken over.
    Exclusive,
}

/// The outcome of trying to take a run for execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Claimed,
    AlreadyDone,
    /// Another live process on this host is running it.
    Busy,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

impl Store {
    /// Opens (creating if needed) the database for writing and applies migrations.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                path: dir.display().to_string(),
                message: e.to_string(),
            })?;
        }
        let conn = Connection::open(path).map_err(err(path))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(err(path))?;
        // Switching a new database to WAL takes it exclusively, and SQLite answers a
        // second process doing the same at that moment with BUSY without waiting: wait
        // here, as the busy timeout would.
        let t0 = std::time::Instant::now();
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.code == rusqlite::ErrorCode::DatabaseBusy
                        && t0.elapsed() < Duration::from_secs(30) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r.map_err(err(path))?,
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err(path))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err(path))?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing database read-only, as it is; writes are refused by SQLite itself.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        Store::open_read_only_as_is(path)
    }

    /// Whether the database has this ablate's schema (an older one is migrated by any
    /// command that writes, or reads a report).
    pub fn is_current(&self) -> Result<bool> {
        Ok(self.schema_version()? >= MIGRATIONS.len() as i64)
    }

    /// Like [`Store::open_read_only`], but a database written by an older ablate is first
    /// brought to the current schema (the migrations only add), so that reports and
    /// queries see the views they expect.
    pub fn open_for_reading(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let read_only = Store::open_read_only_as_is(path)?;
        if read_only.schema_version()? < MIGRATIONS.len() as i64 {
            drop(read_only);
            drop(Store::open(path)?);
            return Store::open_read_only_as_is(path);
        }
        Ok(read_only)
    }

    fn open_read_only_as_is(path: &Path) -> Result<Store> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(err(path))?;
        // A WAL database wants a `-shm` file beside it, which a read-only folder (an
        // archive, a mount) cannot take: such a database is opened immutable instead, as
        // nothing can write it there either.
        let probe = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0));
        if let Err(rusqlite::Error::SqliteFailure(e, _)) = &probe {
            if e.extended_code == rusqlite::ffi::SQLITE_READONLY_DIRECTORY
                || e.code == rusqlite::ErrorCode::CannotOpen
            {
                let mut wal = path.as_os_str().to_owned();
                wal.push("-wal");
                if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                    return Err(StoreError::UnreadableLog(path.display().to_string()));
                }
                let uri = format!("file:{}?immutable=1", uri_path(path));
                conn = Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
                    .map_err(err(path))?;
            }
        }
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(err(path))?;
        conn.pragma_update(None, "query_only", "ON")
            .map_err(err(path))?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    fn migrate(&mut self) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err(&path))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err(&path))?;
        let known = MIGRATIONS.len() as i64;
        if version == known {
            // Nothing to apply: end without writing, so that opening a current database
            // leaves its file untouched (`ablate collect` twice gives identical files).
            return Ok(());
        }
        if version > known {
            return Err(StoreError::TooNew {
                path: path.display().to_string(),
                found: version,
                known,
            });
        }
        for (_, sql) in &MIGRATIONS[version as usize..] {
            tx.execute_batch(sql).map_err(err(&path))?;
        }
        tx.pragma_update(None, "user_version", known)
            .map_err(err(&path))?;
        tx.commit().map_err(err(&path))
    }

    pub fn schema_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err(&self.path))
    }

    /// Statuses of the given runs; runs not in the store are absent.
    pub fn statuses(&self, ids: &[String]) -> Result<HashMap<String, RunStatus>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT status FROM runs WHERE id = ?1")
            .map_err(err(&self.path))?;
        let mut out = HashMap::new();
        for id in ids {
            let s: Option<String> = stmt
                .query_row([id], |r| r.get(0))
                .optional()
                .map_err(err(&self.path))?;
            if let Some(s) = s {
                out.insert(id.clone(), RunStatus::parse(&s));
            }
        }
        Ok(out)
    }

    /// Records a sweep and its runs (new runs as pending), in one transaction.
    pub fn register_plan(&mut self, plan: &Plan) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err(&path))?;
        let exp = &plan.experiment;
        tx.execute(
            &format!(
                "INSERT INTO sweeps (name, file, description, axes_json, updated_at)
                 VALUES (?1, ?2, ?3, ?4, {NOW})
                 ON CONFLICT(name) DO UPDATE SET file = excluded.file,
                   description = excluded.description, axes_json = excluded.axes_json,
                   updated_at = excluded.updated_at"
            ),
            params![
                exp.name,
                exp.file.display().to_string(),
                exp.meta.description,
                serde_json::to_string(&plan.axis_names()).unwrap_or_default()
            ],
        )
        .map_err(err(&path))?;
        // The sweep's membership is exactly this plan: runs dropped from the grid leave it.
        tx.execute("DELETE FROM sweep_runs WHERE sweep = ?1", [&exp.name])
            .map_err(err(&path))?;
        {
            let mut ins_run = tx.prepare(&insert_pending_run()).map_err(err(&path))?;
            let mut ins_member = tx
                .prepare(
                    "INSERT INTO sweep_runs (sweep, run_id, axes_json, is_baseline, position)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err(&path))?;
            for (i, r) in plan.runs.iter().enumerate() {
                ins_run
                    .execute(params![r.id, canonical_json(&r.config)])
                    .map_err(err(&path))?;
                stages::register(&tx, &r.id, &r.stages, None).map_err(err(&path))?;
                ins_member
                    .execute(params![
                        exp.name,
                        r.id,
                        serde_json::to_string(&r.axes).unwrap_or_default(),
                        r.is_baseline,
                        i as i64
                    ])
                    .map_err(err(&path))?;
            }
        }
        tx.commit().map_err(err(&path))
    }

    /// Takes a run for execution unless it is done or owned by a live process. Taking it
    /// clears rows of an earlier, unfinished attempt, so a replay cannot double them.
    /// `devices` records where `--devices` pinned it.
    pub fn claim(
        &mut self,
        run_id: &str,
        host: &str,
        git_rev: Option<&str>,
        ownership: Ownership,
        devices: Option<&str>,
    ) -> Result<Claim> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err(&path))?;
        let row: Option<OwnedRow> = tx
            .query_row(
                "SELECT status, host, pid, owner FROM runs WHERE id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(err(&path))?;
        let me = std::process::id() as i64;
        match &row {
            Some((s, _, _, _)) if s == "done" => return Ok(Claim::AlreadyDone),
            Some((s, h, Some(pid), owner))
                if s == "running" && *pid != me && ownership == Ownership::CheckOwner =>
            {
                let same_host = h.as_deref() == Some(host);
                if !same_host || owner_alive(*pid, owner.as_deref()) {
                    return Ok(Claim::Busy);
                }
            }
            _ => {}
        }
        tx.execute("DELETE FROM metrics WHERE run_id = ?1", [run_id])
            .map_err(err(&path))?;
        tx.execute("DELETE FROM eval_results WHERE run_id = ?1", [run_id])
            .map_err(err(&path))?;
        tx.execute(
            &format!(
                "UPDATE runs SET status = 'running', attempts = attempts + 1, started_at = {NOW},
                 finished_at = NULL, duration_s = NULL, host = ?2, pid = ?3, git_rev = ?4,
                 ablate_version = ?5, error = NULL, devices = ?6, owner = ?7 WHERE id = ?1"
            ),
            params![
                run_id,
                host,
                me,
                git_rev,
                env!("CARGO_PKG_VERSION"),
                devices,
                process_identity(me)
            ],
        )
        .map_err(err(&path))?;
        tx.commit().map_err(err(&path))?;
        Ok(Claim::Claimed)
    }

    /// Runs `f` in one IMMEDIATE transaction (the write lock taken up front, so writers of
    /// two processes wait for each other instead of failing mid-way) and commits it when
    /// `f` succeeds; an error rolls everything back.
    pub(crate) fn write_tx<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err(&self.path))?;
        let out = f(&tx).map_err(err(&self.path))?;
        tx.commit().map_err(err(&self.path))?;
        Ok(out)
    }

    /// Writes a batch of rows in one transaction; replays overwrite.
    pub fn write(&mut self, batch: &[Record]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write_tx(|tx| write_records(tx, batch))
    }

    /// Writes the last rows of a run and its final status together.
    pub fn finish(
        &mut self,
        run_id: &str,
        status: RunStatus,
        error: Option<&str>,
        duration_s: f64,
        batch: &[Record],
    ) -> Result<()> {
        self.write_tx(|tx| {
            write_records(tx, batch)?;
            if status == RunStatus::Done {
                stages::assemble(tx, run_id)?;
            } else {
                stages::end_unfinished(tx, run_id, status, error)?;
            }
            tx.execute(
                &format!(
                    "UPDATE runs SET status = ?2, error = ?3, duration_s = ?4, finished_at = {NOW},
                     pid = NULL WHERE id = ?1"
                ),
                params![run_id, status.as_str(), error, duration_s],
            )
            .map(drop)
        })
    }

    /// Runs one read-only statement; returns column names and rows as JSON values.
    pub fn query(&self, sql: &str) -> Result<(Vec<String>, Vec<Vec<serde_json::Value>>)> {
        let mut cols = Vec::new();
        let mut rows = Vec::new();
        self.query_each(sql, &mut |c, row| {
            match row {
                None => cols = c.to_vec(),
                Some(r) => rows.push(r),
            }
            Ok(())
        })?;
        Ok((cols, rows))
    }

    /// Runs one read-only statement and hands over what it reads as it reads it: first the
    /// column names (`None`), then each row. Nothing is held between rows, so a result of
    /// any size takes the memory of one row; an error the callback returns (its output
    /// closed, say) stops the statement.
    pub fn query_each(&self, sql: &str, each: &mut RowSink) -> Result<()> {
        self.query_rows(sql, each).map_err(|e| match e {
            StoreError::Sqlite { source, .. } if users_statement(&source) => {
                StoreError::BadQuery(source.to_string())
            }
            e => e,
        })
    }

    fn query_rows(&self, sql: &str, each: &mut RowSink) -> Result<()> {
        // SQLite prepares the first statement and ignores the rest of the text: a second
        // one would be silently dropped. Count them (preparing runs nothing).
        let mut batch = rusqlite::Batch::new(&self.conn, sql);
        let mut statements = 0;
        while batch.next().map_err(err(&self.path))?.is_some() {
            statements += 1;
        }
        if statements > 1 {
            return Err(StoreError::MultipleStatements(statements));
        }
        let mut stmt = self.conn.prepare(sql).map_err(err(&self.path))?;
        if !stmt.readonly() {
            return Err(StoreError::NotReadOnly);
        }
        let cols: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        let output = StoreError::Output;
        each(&cols, None).map_err(output)?;
        let n = cols.len();
        let mut rows = stmt.query([]).map_err(err(&self.path))?;
        while let Some(r) = rows.next().map_err(err(&self.path))? {
            let row = (0..n)
                .map(|i| {
                    use rusqlite::types::ValueRef;
                    Ok(match r.get_ref(i)? {
                        ValueRef::Null => serde_json::Value::Null,
                        ValueRef::Integer(v) => v.into(),
                        ValueRef::Real(v) => serde_json::Number::from_f64(v)
                            .map_or(serde_json::Value::Null, Into::into),
                        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                        ValueRef::Blob(b) => format!("<{} bytes>", b.len()).into(),
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err(&self.path))?;
            each(&cols, Some(row)).map_err(output)?;
        }
        Ok(())
    }
}

/// Whether SQLite refused a statement for what it says (its SQL, or what it asks for)
/// rather than for the state of the database (I/O, corruption, a full disk, a lock).
fn users_statement(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    match e {
        rusqlite::Error::SqlInputError { .. } => true,
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            C::Unknown
                | C::AuthorizationForStatementDenied
                | C::CannotOpen
                | C::TooBig
                | C::ParameterOutOfRange
                | C::ConstraintViolation
                | C::TypeMismatch
                | C::ReadOnly
        ),
        _ => false,
    }
}

/// Registers a run (id, canonical config) as pending unless it already has a row: the
/// plan's runs, and a shard's one run.
pub(crate) fn insert_pending_run() -> String {
    format!(
        "INSERT OR IGNORE INTO runs (id, config_json, status, created_at)
         VALUES (?1, ?2, 'pending', {NOW})"
    )
}

/// Metric rows per multi-row INSERT: one statement step for many rows costs SQLite far
/// less than one per row.
const METRIC_ROWS_PER_INSERT: usize = 64;

fn metric_insert(rows: usize) -> String {
    let mut sql =
        String::from("INSERT OR REPLACE INTO metrics (run_id, name, split, step, value) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?, ?)");
    }
    sql
}

/// Binds one metric row's five values from parameter `first` on.
fn bind_metric(
    stmt: &mut rusqlite::CachedStatement<'_>,
    first: usize,
    r: &Record,
) -> rusqlite::Result<()> {
    if let Record::Metric {
        run_id,
        name,
        split,
        step,
        value,
    } = r
    {
        stmt.raw_bind_parameter(first, run_id)?;
        stmt.raw_bind_parameter(first + 1, name)?;
        stmt.raw_bind_parameter(first + 2, split)?;
        stmt.raw_bind_parameter(first + 3, step)?;
        stmt.raw_bind_parameter(first + 4, value)?;
    }
    Ok(())
}

fn write_records(tx: &rusqlite::Transaction<'_>, batch: &[Record]) -> rusqlite::Result<()> {
    // Metrics first, in full multi-row statements; verdicts after. The order of rows within
    // a batch does not matter: keys are unique per batch (a replay overwrites).
    let metrics: Vec<&Record> = batch
        .iter()
        .filter(|r| matches!(r, Record::Metric { .. }))
        .collect();
    let mut chunks = metrics.chunks_exact(METRIC_ROWS_PER_INSERT);
    let mut many = tx.prepare_cached(&metric_insert(METRIC_ROWS_PER_INSERT))?;
    for chunk in &mut chunks {
        for (j, r) in chunk.iter().enumerate() {
            bind_metric(&mut many, 1 + 5 * j, r)?;
        }
        many.raw_execute()?;
    }
    let mut one = tx.prepare_cached(&metric_insert(1))?;
    for r in chunks.remainder() {
        bind_metric(&mut one, 1, r)?;
        one.raw_execute()?;
    }
    let mut verdict = tx.prepare_cached(
        "INSERT OR REPLACE INTO eval_results
         (run_id, dataset, example_id, category, evaluator, verdict, passed, prediction, gold)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut training_metric = tx.prepare_cached(
        "INSERT OR REPLACE INTO training_metrics (training_id, name, split, step, value)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut prediction = tx.prepare_cached(
        "INSERT OR REPLACE INTO predictions
         (generation_id, kind, example_id, dataset, category, prediction, gold, detail_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut stage_verdict = tx.prepare_cached(
        "INSERT OR REPLACE INTO verdicts
           (verdict_set_id, kind, example_id, verdict, passed, score, judgments_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for r in batch {
        match r {
            Record::TrainingMetric {
                training_id,
                name,
                split,
                step,
                value,
            } => {
                training_metric.execute(params![training_id, name, split, step, value])?;
            }
            Record::Prediction {
                generation_id,
                prediction: p,
            } => {
                prediction.execute(params![
                    generation_id,
                    p.kind.as_str(),
                    p.example_id,
                    p.dataset,
                    p.category,
                    p.prediction,
                    p.gold,
                    p.detail.as_ref().map(|d| d.to_string())
                ])?;
            }
            Record::StageVerdict {
                verdict_set_id,
                kind,
                example_id,
                verdict: v,
                passed,
                score,
                judgments,
            } => {
                stage_verdict.execute(params![
                    verdict_set_id,
                    kind.as_str(),
                    example_id,
                    v,
                    passed,
                    score,
                    judgments.as_ref().map(|j| j.to_string())
                ])?;
            }
            Record::JudgeAnswer(a) => judge_cache::insert(tx, a)?,
            _ => {}
        }
    }
    for r in batch {
        if let Record::Verdict {
            run_id,
            dataset,
            example_id,
            category,
            evaluator,
            verdict: v,
            passed,
            prediction,
            gold,
        } = r
        {
            verdict.execute(params![
                run_id, dataset, example_id, category, evaluator, v, passed, prediction, gold
            ])?;
        }
    }
    Ok(())
}

/// A row's status with who runs it: host, PID and identity ([`process_identity`]).
pub(crate) type OwnedRow = (String, Option<String>, Option<i64>, Option<String>);

/// A process's identity beyond its PID: the machine's boot id and the process's start
/// time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot). None when it cannot
/// be read (no such process, or no /proc).
pub(crate) fn process_identity(pid: i64) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let (_, after_name) = stat.rsplit_once(')')?;
    let start = after_name.split_whitespace().nth(19)?;
    Some(format!("{}:{start}", boot.trim()))
}

/// Whether the process that wrote a `running` row (PID `pid`, identity `owner`) is alive
/// on this host: a live process with that PID but another identity is a reused PID. Rows
/// without an identity (written before schema 6) are judged by the PID alone.
pub(crate) fn owner_alive(pid: i64, owner: Option<&str>) -> bool {
    match owner {
        Some(o) => process_identity(pid).as_deref() == Some(o),
        None => process_alive(pid),
    }
}

fn process_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A file path as an SQLite URI's path: `%`, `?` and `#` (and anything not printable
/// ASCII) percent-encoded, relative paths made absolute.
fn uri_path(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = String::new();
    for b in abs.as_os_str().as_encoded_bytes() {
        match b {
            b'%' | b'?' | b'#' => out.push_str(&format!("%{b:02X}")),
            0x21..=0x7e => out.push(*b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_known_by_boot_and_start_time_not_its_pid_alone() {
        let me = std::process::id() as i64;
        let id = process_identity(me).expect("this process has an identity");
        assert_eq!(process_identity(me).as_deref(), Some(id.as_str()), "stable");
        assert!(owner_alive(me, Some(&id)));
        // The same PID with another identity is a reused PID: not the owner.
        assert!(!owner_alive(me, Some("another-boot:1")));
        // Rows from before identities are judged by the PID.
        assert!(owner_alive(me, None));
        assert_eq!(process_identity(i32::MAX as i64), None);
        assert!(!owner_alive(i32::MAX as i64, None));
    }

    #[test]
    fn batches_of_any_size_write_every_row_once_and_the_last_value_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("a.db")).unwrap();
        s.conn()
            .execute(
                "INSERT INTO runs (id, config_json, status, created_at) VALUES ('r', '{}', 'done', 'now')",
                [],
            )
            .unwrap();
        let m = |step: i64, value: f64| Record::Metric {
            run_id: "r".into(),
            name: "loss".into(),
            split: "train".into(),
            step,
            value,
        };
        // Two full multi-row statements and a remainder, with a verdict among them and a
        // step repeated in the remainder (a replay): 150 distinct steps.
        let mut batch: Vec<Record> = (1..=150).map(|i| m(i, i as f64)).collect();
        batch.insert(
            70,
            Record::Verdict {
                run_id: "r".into(),
                dataset: "d".into(),
                example_id: "e".into(),
                category: String::new(),
                evaluator: "rules".into(),
                verdict: "pass".into(),
                passed: true,
                prediction: "p".into(),
                gold: String::new(),
            },
        );
        batch.push(m(3, -3.0));
        s.write(&batch).unwrap();
        s.write(&[m(150, -150.0)]).unwrap();
        let q = |sql: &str| -> f64 { s.conn().query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(q("SELECT count(*) * 1.0 FROM metrics"), 150.0);
        assert_eq!(q("SELECT value FROM metrics WHERE step = 3"), -3.0);
        assert_eq!(q("SELECT value FROM metrics WHERE step = 150"), -150.0);
        assert_eq!(
            q("SELECT sum(value) FROM metrics WHERE step BETWEEN 4 AND 149"),
            (4..=149).sum::<i64>() as f64
        );
        assert_eq!(q("SELECT count(*) * 1.0 FROM eval_results"), 1.0);
    }

    #[test]
    fn evaluator_agreement_gives_cohens_kappa() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a.db")).unwrap();
        s.conn()
            .execute(
                "INSERT INTO runs (id, config_json, status, created_at) VALUES ('r', '{}', 'done', 'now')",
                [],
            )
            .unwrap();
        // 10 examples: both pass 4, only a 1, only b 2, both fail 3.
        let pairs = [(1, 1); 4]
            .into_iter()
            .chain([(1, 0)])
            .chain([(0, 1); 2])
            .chain([(0, 0); 3]);
        for (i, (a, b)) in pairs.enumerate() {
            for (ev, p) in [("a", a), ("b", b)] {
                s.conn()
                    .execute(
                        "INSERT INTO eval_results (run_id, dataset, example_id, evaluator, verdict, passed, prediction)
                         VALUES ('r', 'd', ?1, ?2, 'v', ?3, '')",
                        rusqlite::params![i.to_string(), ev, p],
                    )
                    .unwrap();
            }
        }
        let (n, agreement, kappa): (i64, f64, f64) = s
            .conn()
            .query_row(
                "SELECT n, agreement, kappa FROM evaluator_agreement WHERE evaluator_a = 'a'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        // p_o = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5.
        assert_eq!(n, 10);
        assert!((agreement - 0.7).abs() < 1e-12);
        assert!((kappa - 0.4).abs() < 1e-12, "{kappa}");
    }

    #[test]
    fn a_version_1_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v1.db");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(MIGRATIONS[0].1).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO runs (id, config_json, status, created_at) VALUES ('r', '{}', 'done', 'now')",
                [],
            )
            .unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let (_, rows) = s.query("SELECT count(*) FROM runs").unwrap();
        assert_eq!(rows[0][0], 1);
        assert!(s.query("SELECT * FROM evaluator_agreement").is_ok());
        let (_, rows) = s.query("SELECT devices FROM runs").unwrap();
        assert_eq!(rows[0][0], serde_json::Value::Null);
        assert!(s.query("SELECT * FROM slurm_tasks").is_ok());
    }

    #[test]
    fn migrations_apply_once_and_set_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.db");
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        drop(s);
        let s = Store::open(&p).unwrap();
        let (_, rows) = s
            .query("SELECT name FROM sqlite_master WHERE type IN ('table','view') ORDER BY name")
            .unwrap();
        let names: Vec<String> = rows
            .iter()
            .map(|r| r[0].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "eval_results",
                "evaluator_agreement",
                "generations",
                "judge_cache",
                "labels",
                "metrics",
                "predictions",
                "run_stage_status",
                "run_stages",
                "run_summary",
                "run_verdict_sets",
                "runs",
                "slurm_tasks",
                "sweep_runs",
                "sweeps",
                "training_metrics",
                "trainings",
                "verdict_flips",
                "verdict_sets",
                "verdicts"
            ]
        );
        // Opening a current database writes nothing: its file stays byte for byte the same.
        drop(s);
        let before = std::fs::read(&p).unwrap();
        drop(Store::open(&p).unwrap());
        assert_eq!(before, std::fs::read(&p).unwrap());
    }

    #[test]
    fn query_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.db");
        Store::open(&p).unwrap();
        let s = Store::open_read_only(&p).unwrap();
        assert!(matches!(
            s.query("DELETE FROM runs"),
            Err(StoreError::NotReadOnly)
        ));
        assert!(s.query("SELECT count(*) FROM runs").is_ok());
    }

    #[test]
    fn metric_replay_does_not_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("a.db")).unwrap();
        s.conn
            .execute(
                "INSERT INTO runs (id, config_json, status, created_at) VALUES ('r', '{}', 'pending', 'now')",
                [],
            )
            .unwrap();
        let m = Record::Metric {
            run_id: "r".into(),
            name: "loss".into(),
            split: "train".into(),
            step: 1,
            value: 2.0,
        };
        s.write(&[m.clone(), m.clone()]).unwrap();
        s.write(&[m]).unwrap();
        let (_, rows) = s.query("SELECT count(*) FROM metrics").unwrap();
        assert_eq!(rows[0][0], serde_json::json!(1));
        assert_eq!(
            s.claim("r", "h", None, Ownership::CheckOwner, None)
                .unwrap(),
            Claim::Claimed
        );
        let (_, rows) = s
            .query("SELECT count(*), (SELECT status FROM runs) FROM metrics")
            .unwrap();
        assert_eq!(
            rows[0],
            vec![serde_json::json!(0), serde_json::json!("running")]
        );
        s.finish("r", RunStatus::Done, None, 1.0, &[]).unwrap();
        assert_eq!(
            s.claim("r", "h", None, Ownership::CheckOwner, None)
                .unwrap(),
            Claim::AlreadyDone
        );
    }
}
