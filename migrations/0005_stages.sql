-- ablate results schema, version 5: a run is one training, one generation of that
-- training's model and the verdict sets of that generation, each with an identity of its
-- own, so an evaluation axis never retrains and a new evaluator re-scores stored
-- predictions. Append-only: 0001 to 0004 are unchanged. `runs`, `metrics`, `eval_results`
-- and `run_summary` stay what they were: a finished run's rows there are assembled from
-- its stages, and every run id keeps working.

-- A training: the keys that change the trained weights. `dir` (relative to the results
-- folder) holds its tokenizer, checkpoints and final model.
CREATE TABLE trainings (
    id              TEXT PRIMARY KEY,
    key_json        TEXT NOT NULL,          -- the keys hashed into the id
    status          TEXT NOT NULL CHECK (status IN
                      ('pending', 'running', 'done', 'failed', 'interrupted', 'diverged')),
    dir             TEXT NOT NULL,
    host            TEXT,
    pid             INTEGER,                -- owner process while running
    started_at      TEXT,
    finished_at     TEXT,
    duration_s      REAL,
    provenance_json TEXT,                   -- code, libraries and device that produced it
    error           TEXT
);

-- Training curves and summaries (loss, grad_norm, lr, params, examples, ...), keyed as
-- `metrics` is: a replay overwrites.
CREATE TABLE training_metrics (
    training_id TEXT NOT NULL REFERENCES trainings(id),
    name        TEXT NOT NULL,
    split       TEXT NOT NULL,
    step        INTEGER NOT NULL,
    value       REAL NOT NULL,
    PRIMARY KEY (training_id, name, split, step)
) WITHOUT ROWID;

-- A generation: a training plus the decoding keys (evaluation data, max_new_tokens,
-- sampling, stop strings, which kinds of prediction).
CREATE TABLE generations (
    id              TEXT PRIMARY KEY,
    training_id     TEXT NOT NULL REFERENCES trainings(id),
    key_json        TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN
                      ('pending', 'running', 'done', 'failed', 'interrupted', 'diverged')),
    host            TEXT,
    pid             INTEGER,
    started_at      TEXT,
    finished_at     TEXT,
    duration_s      REAL,
    provenance_json TEXT,
    error           TEXT
);

-- What the model produced: one row per test step (`step`) or ToolBench episode
-- (`episode`). `detail_json` holds what evaluators need beyond the text: an episode's
-- ending, final answer and path; `{"ending": "context_overflow"}` for a prompt that did
-- not fit.
CREATE TABLE predictions (
    generation_id TEXT NOT NULL REFERENCES generations(id),
    kind          TEXT NOT NULL CHECK (kind IN ('step', 'episode')),
    example_id    TEXT NOT NULL,
    dataset       TEXT NOT NULL,
    category      TEXT NOT NULL DEFAULT '',
    prediction    TEXT NOT NULL,
    gold          TEXT NOT NULL DEFAULT '',
    detail_json   TEXT,
    PRIMARY KEY (generation_id, kind, example_id)
) WITHOUT ROWID;

-- A verdict set: a generation judged by one evaluator with its settings and version
-- (`version` names the checker or judge code; a new one re-scores).
CREATE TABLE verdict_sets (
    id              TEXT PRIMARY KEY,
    generation_id   TEXT NOT NULL REFERENCES generations(id),
    evaluator       TEXT NOT NULL,
    version         TEXT NOT NULL,
    key_json        TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN
                      ('pending', 'running', 'done', 'failed', 'interrupted', 'diverged')),
    finished_at     TEXT,
    provenance_json TEXT,
    error           TEXT
);
CREATE INDEX verdict_sets_generation ON verdict_sets (generation_id, evaluator);

CREATE TABLE verdicts (
    verdict_set_id TEXT NOT NULL REFERENCES verdict_sets(id),
    kind           TEXT NOT NULL,
    example_id     TEXT NOT NULL,
    verdict        TEXT NOT NULL,           -- pass, or the first failed check
    passed         INTEGER NOT NULL,
    PRIMARY KEY (verdict_set_id, kind, example_id)
) WITHOUT ROWID;

-- Which stages make each run. `epochs_of` is set when the training is the longer run an
-- epoch prefix was taken from (then `checkpoint_epoch` names the epoch used).
CREATE TABLE run_stages (
    run_id           TEXT PRIMARY KEY REFERENCES runs(id),
    training_id      TEXT NOT NULL REFERENCES trainings(id),
    generation_id    TEXT NOT NULL REFERENCES generations(id),
    checkpoint_epoch INTEGER
);
CREATE INDEX run_stages_training ON run_stages (training_id);

CREATE TABLE run_verdict_sets (
    run_id         TEXT NOT NULL REFERENCES runs(id),
    position       INTEGER NOT NULL,       -- order in eval.evaluators; 0 gives pass_rate
    evaluator      TEXT NOT NULL,
    verdict_set_id TEXT NOT NULL REFERENCES verdict_sets(id),
    PRIMARY KEY (run_id, position)
);

-- Runs finished before this version become one finished training, generation and verdict
-- set each, under their run id (their files stay in runs/<id>/). Their provenance is what
-- the run row knew.
INSERT INTO trainings (id, key_json, status, dir, host, started_at, finished_at, duration_s,
                       provenance_json)
SELECT id, config_json, 'done', 'runs/' || id, host, started_at, finished_at, duration_s,
       json_object('migrated_from_schema', 4, 'git_commit', git_rev,
                   'ablate_version', ablate_version)
FROM runs WHERE status = 'done';

INSERT INTO training_metrics (training_id, name, split, step, value)
SELECT m.run_id, m.name, m.split, m.step, m.value
FROM metrics m JOIN runs r ON r.id = m.run_id
WHERE r.status = 'done' AND m.split <> 'test';

INSERT INTO generations (id, training_id, key_json, status, host, started_at, finished_at,
                         provenance_json)
SELECT id, id, config_json, 'done', host, started_at, finished_at,
       json_object('migrated_from_schema', 4, 'git_commit', git_rev,
                   'ablate_version', ablate_version)
FROM runs WHERE status = 'done';

-- Episode transcripts were stored under `episode` (and under `llm_judge` when the judge
-- read episodes); everything else is a step.
INSERT OR IGNORE INTO predictions (generation_id, kind, example_id, dataset, category,
                                   prediction, gold, detail_json)
SELECT e.run_id,
       CASE WHEN e.evaluator = 'episode'
              OR (e.evaluator = 'llm_judge' AND EXISTS (
                    SELECT 1 FROM eval_results x WHERE x.run_id = e.run_id
                      AND x.example_id = e.example_id AND x.evaluator = 'episode'))
            THEN 'episode' ELSE 'step' END,
       e.example_id, e.dataset, e.category, e.prediction, e.gold,
       CASE WHEN e.evaluator = 'episode' THEN json_object('ending', e.verdict) END
FROM eval_results e JOIN runs r ON r.id = e.run_id
WHERE r.status = 'done';

INSERT INTO verdict_sets (id, generation_id, evaluator, version, key_json, status,
                          finished_at, provenance_json)
SELECT DISTINCT e.run_id || ':' || e.evaluator, e.run_id, e.evaluator, 'before-stages', '{}',
       'done', r.finished_at,
       json_object('migrated_from_schema', 4, 'git_commit', r.git_rev,
                   'ablate_version', r.ablate_version)
FROM eval_results e JOIN runs r ON r.id = e.run_id
WHERE r.status = 'done';

INSERT INTO verdicts (verdict_set_id, kind, example_id, verdict, passed)
SELECT e.run_id || ':' || e.evaluator, p.kind, e.example_id, e.verdict, e.passed
FROM eval_results e
JOIN runs r ON r.id = e.run_id
JOIN predictions p ON p.generation_id = e.run_id AND p.example_id = e.example_id
 AND p.dataset = e.dataset
 AND p.kind = CASE WHEN e.evaluator = 'episode'
                     OR (e.evaluator = 'llm_judge' AND EXISTS (
                          SELECT 1 FROM eval_results x WHERE x.run_id = e.run_id
                            AND x.example_id = e.example_id AND x.evaluator = 'episode'))
                   THEN 'episode' ELSE 'step' END
WHERE r.status = 'done';

INSERT INTO run_stages (run_id, training_id, generation_id)
SELECT id, id, id FROM runs WHERE status = 'done';

INSERT INTO run_verdict_sets (run_id, position, evaluator, verdict_set_id)
SELECT r.id, CAST(j.key AS INTEGER), j.value, r.id || ':' || j.value
FROM runs r, json_each(r.config_json, '$.eval.evaluators') j
WHERE r.status = 'done'
  AND EXISTS (SELECT 1 FROM verdict_sets v WHERE v.id = r.id || ':' || j.value);

-- Per run, where each stage stands.
CREATE VIEW run_stage_status AS
SELECT s.run_id,
       s.training_id,
       t.status AS training_status,
       s.checkpoint_epoch,
       s.generation_id,
       g.status AS generation_status,
       (SELECT COUNT(*) FROM run_verdict_sets rv JOIN verdict_sets v ON v.id = rv.verdict_set_id
         WHERE rv.run_id = s.run_id AND v.status = 'done') AS verdict_sets_done,
       (SELECT COUNT(*) FROM run_verdict_sets rv WHERE rv.run_id = s.run_id) AS verdict_sets
FROM run_stages s
JOIN trainings t ON t.id = s.training_id
JOIN generations g ON g.id = s.generation_id;

-- Examples whose verdict differs between two finished verdict sets of one evaluator on the
-- same generation (a re-score with a new checker version or judge): the flip table.
CREATE VIEW verdict_flips AS
SELECT a.generation_id,
       a.evaluator,
       a.id AS set_a,
       a.version AS version_a,
       b.id AS set_b,
       b.version AS version_b,
       va.kind,
       va.example_id,
       va.verdict AS verdict_a,
       vb.verdict AS verdict_b,
       va.passed AS passed_a,
       vb.passed AS passed_b
FROM verdict_sets a
JOIN verdict_sets b ON b.generation_id = a.generation_id AND b.evaluator = a.evaluator
 AND a.finished_at <= b.finished_at AND a.id <> b.id
JOIN verdicts va ON va.verdict_set_id = a.id
JOIN verdicts vb ON vb.verdict_set_id = b.id AND vb.kind = va.kind
 AND vb.example_id = va.example_id
WHERE a.status = 'done' AND b.status = 'done' AND va.verdict <> vb.verdict;
