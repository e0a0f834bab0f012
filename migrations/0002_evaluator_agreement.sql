-- ablate results schema, version 2: agreement between evaluators that judged the same
-- predictions (same run, dataset and example), with Cohen's kappa. Append-only: 0001 is
-- unchanged.

CREATE VIEW evaluator_agreement AS
WITH pairs AS (
    SELECT a.run_id,
           a.dataset,
           a.evaluator AS evaluator_a,
           b.evaluator AS evaluator_b,
           COUNT(*) AS n,
           SUM(a.passed AND b.passed) AS both_pass,
           SUM(a.passed AND NOT b.passed) AS only_a,
           SUM(NOT a.passed AND b.passed) AS only_b,
           SUM(NOT a.passed AND NOT b.passed) AS both_fail
    FROM eval_results a
    JOIN eval_results b
      ON a.run_id = b.run_id AND a.dataset = b.dataset AND a.example_id = b.example_id
     AND a.evaluator < b.evaluator
    GROUP BY a.run_id, a.dataset, a.evaluator, b.evaluator
),
rates AS (
    SELECT *,
           (both_pass + both_fail) * 1.0 / n AS p_observed,
           ((both_pass + only_a) * 1.0 * (both_pass + only_b)
            + (only_b + both_fail) * 1.0 * (only_a + both_fail)) / (n * 1.0 * n) AS p_chance
    FROM pairs
)
SELECT run_id, dataset, evaluator_a, evaluator_b, n, both_pass, only_a, only_b, both_fail,
       p_observed AS agreement,
       -- Undefined when chance agreement is 1 (both evaluators constant and equal).
       CASE WHEN p_chance >= 1.0 THEN NULL ELSE (p_observed - p_chance) / (1.0 - p_chance) END AS kappa
FROM rates;

-- run_summary counted only the `rules` evaluator's verdicts in n_eval; it now reads the
-- n_eval metric, which counts what the run's first evaluator judged.
DROP VIEW run_summary;
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
       (SELECT CAST(value AS INTEGER) FROM metrics m WHERE m.run_id = r.id AND m.name = 'n_eval'
         AND m.split = 'test' AND m.step = -1) AS n_eval
FROM runs r;
