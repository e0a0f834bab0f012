-- ablate results schema, version 3: runs on several devices and on Slurm. Append-only:
-- 0001 and 0002 are unchanged.

-- The devices a run was pinned to by `ablate run --devices` (e.g. "0,1"); NULL otherwise.
ALTER TABLE runs ADD COLUMN devices TEXT;

-- One row per Slurm array task that `ablate submit --slurm` submitted. A run submitted
-- again (after a failure) has one row per submission; the newest is the live one.
CREATE TABLE slurm_tasks (
    job_id       TEXT NOT NULL,             -- the array's job id, as sbatch printed it
    task_id      INTEGER NOT NULL,          -- SLURM_ARRAY_TASK_ID
    run_id       TEXT NOT NULL REFERENCES runs(id),
    shard        TEXT NOT NULL,             -- the task's own database, merged by `ablate collect`
    submit_dir   TEXT NOT NULL,             -- holds the sbatch script, manifest and task logs
    submitted_at TEXT NOT NULL,
    PRIMARY KEY (job_id, task_id)
);
CREATE INDEX slurm_tasks_run ON slurm_tasks (run_id);
