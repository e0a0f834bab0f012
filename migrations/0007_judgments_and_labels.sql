-- ablate results schema, version 7: what a judge that asks k times said each time, scores
-- that are not pass/fail, and verdicts given by people. Append-only: 0001 to 0006 are
-- unchanged.

-- `score`: the example's score when the evaluator grades in fractions (StableToolBench's
-- solvable pass rate: the mean over judgments of Solved 1, Unsure 0.5, Unsolved 0); NULL
-- when `passed` is the score. `judgments_json`: the judge's k judgments, in order, each
-- `{"answer": "Solved"|"Unsure"|"Unsolved", "task": ..., "passed": ..., "coin": ...}`.
ALTER TABLE verdicts ADD COLUMN score REAL;
ALTER TABLE verdicts ADD COLUMN judgments_json TEXT;
ALTER TABLE eval_results ADD COLUMN score REAL;

-- Verdicts given by people (`ablate labels import`), on a generation's predictions. A
-- finished run of that generation shows them in `eval_results` under the evaluator
-- `<evaluator>` (no annotator) or `<evaluator>/<annotator>`, like any evaluator's.
CREATE TABLE labels (
    generation_id TEXT NOT NULL REFERENCES generations(id),
    kind          TEXT NOT NULL,
    example_id    TEXT NOT NULL,
    evaluator     TEXT NOT NULL,            -- --evaluator NAME
    annotator     TEXT NOT NULL DEFAULT '',
    verdict       TEXT NOT NULL,            -- pass or fail
    passed        INTEGER NOT NULL,
    note          TEXT,
    source        TEXT NOT NULL,            -- the file it came from
    imported_at   TEXT NOT NULL,
    PRIMARY KEY (generation_id, kind, example_id, evaluator, annotator)
) WITHOUT ROWID;
