//! `ablate fetch`: a model repository into the local Hugging Face cache, for a login node
//! with internet before a sweep runs on nodes without. Planning and running never download.
//!
//! Only what ablate reads is fetched: config.json, the tokenizer files, and the weights of
//! one layout, chosen as `ModelSource::weight_files` chooses (safetensors, sharded
//! safetensors, then PyTorch pickles); a repository's TensorFlow, Flax or ONNX copies are
//! left alone. The cache is hf-hub's (`$HF_HUB_CACHE`, else `$HF_HOME/hub`), the endpoint
//! `$HF_ENDPOINT` (default huggingface.co), the token `$HF_TOKEN` or the cache's token file.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;

use super::{ModelSource, TokenizerFiles};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{repo}: {message}")]
    Repo { repo: String, message: String },
}

/// What was fetched for one repository.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fetched {
    pub repo: String,
    /// The snapshot folder in the cache, as `model.name = "<repo>"` resolves it.
    pub snapshot: PathBuf,
    pub files: Vec<String>,
}

/// The files of a repository that ablate reads, from its file list.
fn wanted(files: &[String]) -> Result<Vec<String>, String> {
    let has = |f: &str| files.iter().any(|x| x == f);
    if !has("config.json") {
        return Err("has no config.json: not a transformers model".into());
    }
    let mut out = vec!["config.json".to_string()];
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
    ] {
        if has(f) {
            out.push(f.into());
        }
    }
    let shards = |prefix: &str, ext: &str| -> Vec<String> {
        files
            .iter()
            .filter(|f| f.starts_with(prefix) && f.ends_with(ext) && f.contains("-of-"))
            .cloned()
            .collect()
    };
    let weights = if has("model.safetensors") {
        vec!["model.safetensors".to_string()]
    } else if has("model.safetensors.index.json") {
        let mut v = vec!["model.safetensors.index.json".to_string()];
        v.extend(shards("model-", ".safetensors"));
        v
    } else if has("pytorch_model.bin") {
        vec!["pytorch_model.bin".to_string()]
    } else if has("pytorch_model.bin.index.json") {
        let mut v = vec!["pytorch_model.bin.index.json".to_string()];
        v.extend(shards("pytorch_model-", ".bin"));
        v
    } else {
        return Err(
            "has no weights ablate reads (model.safetensors, sharded safetensors, \
                    pytorch_model.bin)"
                .into(),
        );
    };
    out.extend(weights);
    Ok(out)
}

/// Downloads `repo` (an id such as `facebook/opt-350m`) at `revision` into the cache and
/// checks the snapshot as `plan` will: its weights and its tokenizer load.
pub fn fetch(repo: &str, revision: &str) -> Result<Fetched, FetchError> {
    let fail = |message: String| FetchError::Repo {
        repo: repo.to_string(),
        message,
    };
    let cache = match std::env::var_os("HF_HUB_CACHE") {
        Some(p) => hf_hub::Cache::new(p.into()),
        None => hf_hub::Cache::from_env(),
    };
    let token = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| cache.token());
    let mut builder = ApiBuilder::from_cache(cache)
        .with_progress(false)
        .with_token(token)
        .with_retries(2);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    let api = builder.build().map_err(|e| fail(e.to_string()))?;
    let handle = api.repo(hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    ));
    let info = handle
        .info()
        .map_err(|e| fail(format!("listing its files: {e}")))?;
    let listed: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let files = wanted(&listed).map_err(fail)?;
    let mut snapshot = None;
    for f in &files {
        let path = handle
            .get(f)
            .map_err(|e| fail(format!("downloading {f}: {e}")))?;
        snapshot = path.parent().map(Path::to_path_buf);
    }
    let snapshot = snapshot.expect("config.json is always fetched");
    let source = ModelSource::Dir(snapshot.clone());
    source.check(true).map_err(|e| fail(e.to_string()))?;
    if TokenizerFiles::find(&snapshot).is_none() {
        return Err(fail(format!(
            "has no tokenizer files ({}): a checkpoint is never paired with a freshly trained one",
            super::TOKENIZER_FILES
        )));
    }
    Ok(Fetched {
        repo: repo.to_string(),
        snapshot,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_weight_layout_and_the_tokenizer_files_are_chosen() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let opt = list(&[
            ".gitattributes",
            "config.json",
            "flax_model.msgpack",
            "merges.txt",
            "pytorch_model.bin",
            "special_tokens_map.json",
            "tf_model.h5",
            "tokenizer_config.json",
            "vocab.json",
        ]);
        assert_eq!(
            wanted(&opt).unwrap(),
            list(&[
                "config.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.json",
                "merges.txt",
                "pytorch_model.bin"
            ])
        );
        let sharded = list(&[
            "config.json",
            "tokenizer.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "pytorch_model.bin",
        ]);
        assert_eq!(
            wanted(&sharded).unwrap(),
            list(&[
                "config.json",
                "tokenizer.json",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ])
        );
        assert!(wanted(&list(&["config.json", "tf_model.h5"])).is_err());
        assert!(wanted(&list(&["README.md"])).is_err());
    }
}
