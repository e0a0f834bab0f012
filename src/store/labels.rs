//! People's verdicts (`ablate labels import`): a CSV or JSONL file of `run`, `example`,
//! `verdict` and optionally `annotator` and `note` (and `dataset`, when a run's example
//! ids repeat across datasets), checked whole against the database before anything is
//! written. A file with any problem changes nothing and every problem is listed. The
//! verdicts go to `labels`, on the run's generation, and show in a finished run's
//! `eval_results` as the evaluator `NAME` (or `NAME/annotator`), so the evaluators report
//! and `evaluator_agreement` compare them with every other evaluator.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{err, stages, Store, StoreError, NOW};

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}: {} problem(s), nothing was imported:\n  {}", problems.len(), problems.join("\n  "))]
    Invalid { path: String, problems: Vec<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One row of a labels file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
struct Row {
    run: String,
    dataset: String,
    example: String,
    verdict: String,
    annotator: String,
    note: String,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct LabelImport {
    pub evaluator: String,
    pub labels: usize,
    pub runs: Vec<String>,
    pub annotators: Vec<String>,
}

/// `pass` or `fail` for the spellings people use.
fn parse_verdict(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "pass" | "passed" | "true" | "1" | "yes" | "solved" => Some(true),
        "fail" | "failed" | "false" | "0" | "no" | "unsolved" => Some(false),
        _ => None,
    }
}

/// The rows of a CSV (with a header) or JSONL file, by line number.
fn read_rows(path: &Path) -> Result<Vec<(usize, Row)>, LabelError> {
    let file_err = |message: String| LabelError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json")
        || text.trim_start().starts_with('{');
    let mut rows = Vec::new();
    if jsonl {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row: Row = serde_json::from_str(line)
                .map_err(|e| file_err(format!("line {}: not a label object: {e}", i + 1)))?;
            rows.push((i + 1, row));
        }
    } else {
        let mut r = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let header = r.headers().map_err(|e| file_err(e.to_string()))?.clone();
        for need in ["run", "example", "verdict"] {
            if !header.iter().any(|h| h == need) {
                return Err(file_err(format!(
                    "the header has no `{need}` column (found: {})",
                    header.iter().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        for (i, rec) in r.deserialize::<Row>().enumerate() {
            // Line 1 is the header.
            let row = rec.map_err(|e| file_err(format!("line {}: {e}", i + 2)))?;
            rows.push((i + 2, row));
        }
    }
    if rows.is_empty() {
        return Err(file_err("no labels".into()));
    }
    Ok(rows)
}

impl Store {
    /// Imports the labels in `path` as evaluator `evaluator`: all of them, or none.
    pub fn import_labels(
        &mut self,
        path: &Path,
        evaluator: &str,
    ) -> Result<LabelImport, LabelError> {
        let name = evaluator.trim();
        let bad_name = name.is_empty()
            || name.contains('/')
            || crate::config::Evaluator::parse(name).is_some();
        if bad_name {
            return Err(LabelError::File {
                path: path.display().to_string(),
                message: format!(
                    "--evaluator {evaluator:?}: give a name of its own (not empty, no '/', \
                     not one of ablate's evaluators), e.g. human"
                ),
            });
        }
        let rows = read_rows(path)?;
        let dbp = self.path.clone();
        let mut problems = Vec::new();
        let mut runs: HashMap<String, Option<(String, String)>> = HashMap::new();
        let mut seen = HashSet::new();
        let mut labels = Vec::new();
        for (line, row) in &rows {
            let at = |m: String| format!("line {line}: {m}");
            if row.run.is_empty() || row.example.is_empty() {
                problems.push(at("needs `run` and `example`".into()));
                continue;
            }
            let Some(passed) = parse_verdict(&row.verdict) else {
                problems.push(at(format!(
                    "verdict {:?} is neither pass nor fail (pass/fail, true/false, 1/0, yes/no)",
                    row.verdict
                )));
                continue;
            };
            if !runs.contains_key(&row.run) {
                let ids = self.run_ids_with_prefix(&row.run)?;
                let resolved = match ids.as_slice() {
                    [one] => self
                        .conn
                        .query_row(
                            "SELECT run_id, generation_id FROM run_stages WHERE run_id = ?1",
                            [one],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()
                        .map_err(err(&dbp))?,
                    _ => None,
                };
                if resolved.is_none() {
                    problems.push(at(match ids.len() {
                        0 => format!("no run {:?} in the database", row.run),
                        1 => format!("run {} has no stored predictions", ids[0]),
                        n => format!("run {:?} is ambiguous ({n} runs start with it)", row.run),
                    }));
                }
                runs.insert(row.run.clone(), resolved);
            }
            let Some((run_id, generation)) = runs[&row.run].clone() else {
                continue;
            };
            let kinds: Vec<String> = self
                .conn
                .prepare_cached(
                    "SELECT kind FROM predictions WHERE generation_id = ?1 AND example_id = ?2
                       AND (?3 = '' OR dataset = ?3)",
                )
                .and_then(|mut s| {
                    s.query_map(params![generation, row.example, row.dataset], |r| r.get(0))?
                        .collect()
                })
                .map_err(err(&dbp))?;
            let kind = match kinds.as_slice() {
                [] => {
                    problems.push(at(format!(
                        "run {run_id} has no example {:?}{}",
                        row.example,
                        if row.dataset.is_empty() {
                            String::new()
                        } else {
                            format!(" in dataset {:?}", row.dataset)
                        }
                    )));
                    continue;
                }
                // An episode is what a person reads when a generation has both.
                k => k.iter().find(|k| *k == "episode").unwrap_or(&k[0]).clone(),
            };
            if !seen.insert((
                generation.clone(),
                row.example.clone(),
                row.annotator.clone(),
            )) {
                problems.push(at(format!(
                    "a second label of run {run_id}, example {:?}{}",
                    row.example,
                    if row.annotator.is_empty() {
                        String::new()
                    } else {
                        format!(", annotator {:?}", row.annotator)
                    }
                )));
                continue;
            }
            labels.push((run_id, generation, kind, row, passed));
        }
        if !problems.is_empty() {
            return Err(LabelError::Invalid {
                path: path.display().to_string(),
                problems,
            });
        }
        let tx = self.conn.transaction().map_err(err(&dbp))?;
        let mut affected = BTreeSet::new();
        let mut annotators = BTreeSet::new();
        {
            let mut put = tx
                .prepare_cached(&format!(
                    "INSERT OR REPLACE INTO labels (generation_id, kind, example_id, evaluator,
                       annotator, verdict, passed, note, source, imported_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULLIF(?8, ''), ?9, {NOW})"
                ))
                .map_err(err(&dbp))?;
            for (run_id, generation, kind, row, passed) in &labels {
                put.execute(params![
                    generation,
                    kind,
                    row.example,
                    name,
                    row.annotator,
                    if *passed { "pass" } else { "fail" },
                    passed,
                    row.note,
                    path.display().to_string(),
                ])
                .map_err(err(&dbp))?;
                affected.insert(run_id.clone());
                if !row.annotator.is_empty() {
                    annotators.insert(row.annotator.clone());
                }
            }
            // Every finished run of a labelled generation shows the labels now.
            let mut done = tx
                .prepare_cached(
                    "SELECT s.run_id FROM run_stages s JOIN runs r ON r.id = s.run_id
                     WHERE r.status = 'done' AND s.generation_id IN
                       (SELECT generation_id FROM run_stages WHERE run_id = ?1)",
                )
                .map_err(err(&dbp))?;
            let mut finished = BTreeSet::new();
            for run in &affected {
                for r in done
                    .query_map([run], |r| r.get::<_, String>(0))
                    .map_err(err(&dbp))?
                {
                    finished.insert(r.map_err(err(&dbp))?);
                }
            }
            for run in &finished {
                stages::insert_labels(&tx, run).map_err(err(&dbp))?;
            }
        }
        tx.commit().map_err(err(&dbp))?;
        Ok(LabelImport {
            evaluator: name.to_string(),
            labels: labels.len(),
            runs: affected.into_iter().collect(),
            annotators: annotators.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_in_the_spellings_people_use() {
        for v in ["pass", "PASSED", "true", "1", "yes", "Solved"] {
            assert_eq!(parse_verdict(v), Some(true), "{v}");
        }
        for v in ["fail", "Failed", "false", "0", "no", "unsolved"] {
            assert_eq!(parse_verdict(v), Some(false), "{v}");
        }
        assert_eq!(parse_verdict("maybe"), None);
    }
}
