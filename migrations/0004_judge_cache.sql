-- ablate results schema, version 4: the LLM judge's answers, so that judging the same
-- prompt again asks the endpoint nothing. Append-only: 0001 to 0003 are unchanged.

CREATE TABLE judge_cache (
    key        TEXT PRIMARY KEY,            -- sha256 of endpoint, model, function, judgment index, prompt
    endpoint   TEXT NOT NULL,               -- the base URL (never the API key, which is not stored anywhere)
    model      TEXT NOT NULL,
    function   TEXT NOT NULL,               -- check_answer_status, parse_answer_status, check_task_solvable
    response   TEXT NOT NULL,               -- the function call's arguments as JSON: status and reason
    created_at TEXT NOT NULL
);
