//! `ablate export --tooleval DIR`: a run's ToolBench episodes in ToolEval's converted-answer
//! format, so that StableToolBench's `eval_pass_rate.py` scores an ablate run unchanged:
//! `model_predictions_converted/<name>/<group>.json` (query id → `{query,
//! available_tools, answer: {method, total_steps, final_answer, answer_details}}`) and
//! `test_query_ids/<group>.json` (the ids, as its `--test_ids` folder wants them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::eval::{Prediction, PredictionKind};

/// One group's file: query id → converted answer, in the episodes' order.
pub type GroupFile = Map<String, Value>;

/// The converted answers of a generation's episodes, by group. Episodes without a query
/// id (stored before ablate kept one) are left out and counted.
pub fn convert(predictions: &[Prediction]) -> (BTreeMap<String, GroupFile>, usize) {
    let mut groups: BTreeMap<String, GroupFile> = BTreeMap::new();
    let mut skipped = 0;
    for p in predictions
        .iter()
        .filter(|p| p.kind == PredictionKind::Episode)
    {
        let d = p.detail.clone().unwrap_or_default();
        let (Some(id), Some(group)) = (d["query_id"].as_str(), d["group"].as_str()) else {
            skipped += 1;
            continue;
        };
        groups
            .entry(group.to_string())
            .or_default()
            .insert(id.to_string(), crate::eval::tooleval::converted(&d));
    }
    (groups, skipped)
}

/// Writes `groups` under `dir` as system `name`; returns the files written. The id files
/// of groups another export wrote already are extended, not replaced.
pub fn write(
    dir: &Path,
    name: &str,
    groups: &BTreeMap<String, GroupFile>,
) -> std::io::Result<Vec<PathBuf>> {
    let answers = dir.join("model_predictions_converted").join(name);
    let ids_dir = dir.join("test_query_ids");
    std::fs::create_dir_all(&answers)?;
    std::fs::create_dir_all(&ids_dir)?;
    let mut written = Vec::new();
    for (group, file) in groups {
        let path = answers.join(format!("{group}.json"));
        write_atomically(&path, &serde_json::to_string_pretty(file).expect("json"))?;
        written.push(path);
        let ids_path = ids_dir.join(format!("{group}.json"));
        let mut ids: Map<String, Value> = std::fs::read_to_string(&ids_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        for id in file.keys() {
            ids.entry(id.clone()).or_insert(json!(0));
        }
        write_atomically(
            &ids_path,
            &serde_json::to_string_pretty(&ids).expect("json"),
        )?;
        written.push(ids_path);
    }
    Ok(written)
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
