//! The LLM judge's answers in `judge_cache`. A run's judge reads through a read-only
//! connection and sends what it learns to the store's one writer as records; a library
//! user without an executor takes [`JudgeCacheDb`], which writes directly.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;

use super::{err, Result, NOW};
use crate::eval::llm_judge::{AnswerCache, CachedAnswer};

fn lookup(conn: &Connection, key: &str) -> rusqlite::Result<Option<Value>> {
    let text: Option<String> = conn
        .query_row(
            "SELECT response FROM judge_cache WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

pub(crate) fn insert(conn: &Connection, a: &CachedAnswer) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO judge_cache (key, endpoint, model, function, response, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, {NOW})"
    ))?
    .execute(params![
        a.key,
        a.endpoint,
        a.model,
        a.function,
        a.response.to_string()
    ])
    .map(drop)
}

/// Reads cached answers (read-only; the writer is elsewhere).
pub struct JudgeCacheReader {
    conn: Mutex<Connection>,
    path: String,
}

impl JudgeCacheReader {
    /// Opens the database at `path`, which the executor's store has created and migrated.
    pub fn open(path: &Path) -> Result<JudgeCacheReader> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err(path))?;
        let _ = conn.busy_timeout(Duration::from_secs(30));
        Ok(JudgeCacheReader {
            conn: Mutex::new(conn),
            path: path.display().to_string(),
        })
    }

    pub fn get(&self, key: &str) -> std::result::Result<Option<Value>, String> {
        lookup(&self.conn.lock().expect("cache connection"), key)
            .map_err(|e| format!("{}: {e}", self.path))
    }
}

/// A cache that reads and writes the database itself, for the judge used as a library.
pub struct JudgeCacheDb {
    conn: Mutex<Connection>,
    path: String,
}

impl JudgeCacheDb {
    pub fn open(path: &Path) -> Result<JudgeCacheDb> {
        let conn = Connection::open(path).map_err(err(path))?;
        let _ = conn.busy_timeout(Duration::from_secs(30));
        Ok(JudgeCacheDb {
            conn: Mutex::new(conn),
            path: path.display().to_string(),
        })
    }
}

impl AnswerCache for JudgeCacheDb {
    fn get(&self, key: &str) -> std::result::Result<Option<Value>, String> {
        lookup(&self.conn.lock().expect("cache connection"), key)
            .map_err(|e| format!("{}: {e}", self.path))
    }

    fn put(&self, answer: CachedAnswer) -> std::result::Result<(), String> {
        insert(&self.conn.lock().expect("cache connection"), &answer)
            .map_err(|e| format!("{}: {e}", self.path))
    }
}
