//! What became of submitted Slurm tasks: each task's state from the main database, its
//! shard and the queue, and the merge of finished shards (`ablate collect`).

use serde::Serialize;

use super::slurm::Queue;
use crate::store::{Merge, RunStatus, SlurmTask, Store, StoreError};

/// A submitted run's state, as `ablate status` and `ablate collect` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum TaskState {
    /// Finished and in the main database.
    Done,
    /// Waiting in the queue (or requeued).
    Queued,
    /// Running; `step` is the last training step its shard has logged.
    Running { step: Option<i64> },
    /// Ended without finishing: failed, diverged, interrupted (cancelled or preempted with
    /// a signal it could answer), or killed while running (`status` is then `running`).
    Failed {
        status: RunStatus,
        error: Option<String>,
    },
    /// Gone from the queue without ever starting its run (no shard, or an empty one).
    Missing,
    /// A queue state this list does not name (SUSPENDED, ...), or the queue was not asked.
    Other { detail: String },
}

impl TaskState {
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Done => "done",
            TaskState::Queued => "queued",
            TaskState::Running { .. } => "running",
            TaskState::Failed { .. } => "failed",
            TaskState::Missing => "missing",
            TaskState::Other { .. } => "other",
        }
    }

    /// Failed and missing tasks are what `ablate submit --slurm` submits again.
    pub fn needs_resubmit(&self) -> bool {
        matches!(self, TaskState::Failed { .. } | TaskState::Missing)
    }

    pub fn detail(&self) -> String {
        match self {
            TaskState::Running { step: Some(s) } => format!("step {s}"),
            TaskState::Failed {
                status: RunStatus::Running,
                ..
            } => "killed while running (time limit, node failure or SIGKILL)".into(),
            TaskState::Failed { status, error } => match error {
                Some(e) if e != status.as_str() => format!("{}: {e}", status.as_str()),
                _ => status.as_str().to_string(),
            },
            TaskState::Other { detail } => detail.clone(),
            _ => String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    #[serde(flatten)]
    pub task: SlurmTask,
    #[serde(flatten)]
    pub state: TaskState,
    /// Whether this call merged the task's shard into the main database.
    pub merged: bool,
    /// Whether the run is done in the main database (a task done in its shard but not yet
    /// merged is not).
    pub collected: bool,
}

/// What a task's shard says of its run.
struct ShardView {
    status: RunStatus,
    error: Option<String>,
    /// The last training step logged.
    step: Option<i64>,
}

/// None without a shard file or a row for the run in it. A task creates its shard as it
/// starts: a file with no schema yet, half-migrated, or locked by the task's writer is a
/// task that is starting, not an error of `status` or `collect` (a finished task's shard
/// is complete and unlocked, so nothing finished is hidden this way).
fn shard_view(task: &SlurmTask) -> Result<Option<ShardView>, StoreError> {
    if !task.shard.is_file() {
        return Ok(None);
    }
    let read = || -> Result<Option<ShardView>, StoreError> {
        let shard = Store::open_read_only(&task.shard)?;
        let Some((status, error)) = shard.run_status(&task.run_id)? else {
            return Ok(None);
        };
        let step = shard.last_step(&task.run_id)?;
        Ok(Some(ShardView {
            status,
            error,
            step,
        }))
    };
    Ok(read().unwrap_or(None))
}

/// The state of every run ever submitted: `tasks` is `store.slurm_tasks()` (each run's
/// newest task), read by the caller, who also decides from it whether squeue is worth
/// asking. With `merge`, finished shards are merged into `store` first; merging is
/// idempotent, so collecting twice changes nothing the second time. `queue` is None when
/// squeue could not be asked: tasks not finished in their shards are then `Other`.
pub fn task_states(
    store: &mut Store,
    tasks: Vec<SlurmTask>,
    queue: Option<&Queue>,
    merge: bool,
) -> Result<Vec<TaskReport>, StoreError> {
    let mut out = Vec::new();
    for task in tasks {
        let main = store.run_status(&task.run_id)?.map(|(s, _)| s);
        let mut merged = false;
        let view = if main == Some(RunStatus::Done) {
            // Done here already (merged earlier, or run locally): the main DB's word stands.
            Some(ShardView {
                status: RunStatus::Done,
                error: None,
                step: None,
            })
        } else {
            shard_view(&task)?
        };
        let shard_done = view.as_ref().is_some_and(|v| v.status == RunStatus::Done);
        let terminal = view
            .as_ref()
            .is_some_and(|v| !matches!(v.status, RunStatus::Pending | RunStatus::Running));
        if merge && terminal && main != Some(RunStatus::Done) {
            merged = matches!(
                store.merge_shard(&task.shard, &task.run_id)?,
                Merge::Merged(_)
            );
        }
        let queued = queue.map(|q| q.get(&(task.job_id.clone(), task.task_id)).cloned());
        let state = match (view, queued) {
            (
                Some(ShardView {
                    status: RunStatus::Done,
                    ..
                }),
                _,
            ) => TaskState::Done,
            // Still known to the queue: requeued after a failure, running, or waiting.
            (view, Some(Some(q))) => match q.as_str() {
                "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "CONFIGURING" => {
                    TaskState::Queued
                }
                "RUNNING" | "COMPLETING" => TaskState::Running {
                    step: view.and_then(|v| v.step),
                },
                other => TaskState::Other {
                    detail: format!("squeue says {other}"),
                },
            },
            (
                None
                | Some(ShardView {
                    status: RunStatus::Pending,
                    ..
                }),
                Some(None),
            ) => TaskState::Missing,
            (Some(v), Some(None)) => TaskState::Failed {
                status: v.status,
                error: v.error,
            },
            (view, None) => match view {
                Some(ShardView {
                    status: s @ (RunStatus::Failed | RunStatus::Diverged | RunStatus::Interrupted),
                    error,
                    ..
                }) => TaskState::Failed { status: s, error },
                _ => TaskState::Other {
                    detail: "unknown: squeue could not be asked".into(),
                },
            },
        };
        // Done in the main database: before this call, or by the merge just made.
        let collected = main == Some(RunStatus::Done) || (merged && shard_done);
        out.push(TaskReport {
            task,
            state,
            merged,
            collected,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(shard: std::path::PathBuf) -> SlurmTask {
        SlurmTask {
            job_id: "7".into(),
            task_id: 0,
            run_id: "abc".into(),
            shard,
            submit_dir: std::path::PathBuf::new(),
        }
    }

    #[test]
    fn a_shard_that_is_being_created_reads_as_a_starting_task() {
        let dir = tempfile::tempdir().unwrap();
        // Just created: an empty file.
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        assert!(shard_view(&task(empty)).unwrap().is_none());
        // Half-migrated: a database without the runs table yet.
        let half = dir.path().join("half.db");
        rusqlite::Connection::open(&half)
            .unwrap()
            .execute_batch("CREATE TABLE sweeps (name TEXT);")
            .unwrap();
        assert!(shard_view(&task(half)).unwrap().is_none());
        // Half-written: a file cut inside SQLite's header.
        let cut = dir.path().join("cut.db");
        std::fs::write(&cut, b"SQLite format 3\0\x10").unwrap();
        assert!(shard_view(&task(cut)).unwrap().is_none());
        // A complete shard with the run is read.
        let full = dir.path().join("full.db");
        let mut s = Store::open(&full).unwrap();
        s.ensure_run("abc", "{}").unwrap();
        drop(s);
        assert!(shard_view(&task(full)).unwrap().is_some());
    }
}
