-- ablate results schema, version 1. Released migrations are never edited: add a new file.

CREATE TABLE sweeps (
    name        TEXT PRIMARY KEY,           -- experiment name (file stem or [experiment].name)
    file        TEXT NOT NULL,              -- experiment file it was last planned from
    description TEXT NOT NULL DEFAULT '',
    axes_json   TEXT NOT NULL,              -- JSON array of the varying dotted keys
    updated_at  TEXT NOT NULL
);

CREATE TABLE runs (
    id           TEXT PRIMARY KEY,          -- hash of the canonical resolved config
    config_json  TEXT NOT NULL,             -- the canonical resolved config
    status       TEXT NOT NULL CHECK (status IN
                   ('pending', 'running', 'done', 'failed', 'interrupted', 'diverged')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    duration_s   REAL,
    host         TEXT,
    pid          INTEGER,                   -- owner process while running
    git_rev      TEXT,
    ablate_version TEXT,
    error        TEXT
);

-- Which sweeps a run belongs to, with its axis values there. A run shared by two sweeps
-- has two rows here and one in runs.
CREATE TABLE sweep_runs (
    sweep       TEXT NOT NULL REFERENCES sweeps(name),
    run_id      TEXT NOT NULL REFERENCES runs(id),
    axes_json   TEXT NOT NULL,
    is_baseline INTEGER NOT NULL DEFAULT 0,
    position    INTEGER NOT NULL,
    PRIMARY KEY (sweep, run_id)
);

-- One value per (run, name, split, step): a replay after a crash overwrites, never doubles.
CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name   TEXT NOT NULL,                   -- loss, grad_norm, clip_coef, lr, tokens_per_s, pass_rate, ...
    split  TEXT NOT NULL,                   -- train, val, test
    step   INTEGER NOT NULL,                -- optimizer step; -1 for run-level summaries
    value  REAL NOT NULL,
    PRIMARY KEY (run_id, name, split, step)
) WITHOUT ROWID;

-- Per-example verdicts of each evaluator.
CREATE TABLE eval_results (
    run_id     TEXT NOT NULL REFERENCES runs(id),
    dataset    TEXT NOT NULL,
    example_id TEXT NOT NULL,
    category   TEXT NOT NULL DEFAULT '',
    evaluator  TEXT NOT NULL,
    verdict    TEXT NOT NULL,               -- pass, or the first failed check
    passed     INTEGER NOT NULL,
    prediction TEXT NOT NULL,
    gold       TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, dataset, example_id, evaluator)
) WITHOUT ROWID;

-- One row per run: its last training loss, last validation loss and test pass rate.
CREATE VIEW run_summary AS
SELECT r.id AS run_id,
       r.status,
       r.duration_s,
       (SELECT value FROM metrics m WHERE m.run_id = r.id AND m.name = 'loss' AND m.split = 'train'
         ORDER BY step DESC LIMIT 1) AS final_train_loss,
       (SELECT value FROM metrics m WHERE m.run_id = r.id AND m.name = 'loss' AND m.split = 'val'
         ORDER BY step DESC LIMIT 1) AS final_val_loss,
       (SELECT value FROM metrics m WHERE m.run_id = r.id AND m.name = 'pass_rate' AND m.split = 'test'
         AND m.step = -1) AS pass_rate,
       (SELECT COUNT(*) FROM eval_results e WHERE e.run_id = r.id AND e.evaluator = 'rules') AS n_eval
FROM runs r;
