//! OPT in candle: construction from presets or Hugging Face checkpoints, saving in HF
//! layout, and greedy generation with a KV cache.

mod generate;
pub mod ops;
mod opt;
mod params;

pub use generate::{generate, generate_greedy, Decoding, GenerateOptions};
pub use opt::*;
pub use params::Params;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model.name = \"{name}\": {message}")]
    NotFound { name: String, message: String },
    #[error("{path}: {message}")]
    BadCheckpoint { path: String, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Where a model's shape and weights come from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Preset(String),
    /// A directory in HF layout (config.json, model.safetensors, tokenizer.json).
    Dir(PathBuf),
}

impl ModelSource {
    /// Resolves `model.name`: a preset, a local directory, or an HF repo id found in the
    /// local Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`).
    pub fn resolve(name: &str) -> Result<ModelSource, ModelError> {
        if OptConfig::preset(name).is_some() {
            return Ok(ModelSource::Preset(name.to_string()));
        }
        let p = Path::new(name);
        if p.is_dir() {
            return Ok(ModelSource::Dir(p.to_path_buf()));
        }
        if p.exists() {
            return Err(ModelError::NotFound {
                name: name.into(),
                message: "is a file; expected a model directory (config.json, model.safetensors)"
                    .into(),
            });
        }
        if let Some((org, repo)) = name.split_once('/') {
            if !org.is_empty() && !repo.is_empty() && !repo.contains('/') && !name.starts_with('.')
            {
                return hf_cache_snapshot(name).map(ModelSource::Dir);
            }
        }
        Err(ModelError::NotFound {
            name: name.into(),
            message: format!(
                "not a preset ({}), a local directory, or an HF repo id",
                OptConfig::PRESETS.join(", ")
            ),
        })
    }

    pub fn config(&self) -> Result<OptConfig, ModelError> {
        match self {
            ModelSource::Preset(n) => Ok(OptConfig::preset(n).expect("preset exists")),
            ModelSource::Dir(d) => {
                let p = d.join("config.json");
                let text = std::fs::read_to_string(&p).map_err(|e| ModelError::BadCheckpoint {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?;
                serde_json::from_str(&text).map_err(|e| ModelError::BadCheckpoint {
                    path: p.display().to_string(),
                    message: format!("not an OPT config: {e}"),
                })
            }
        }
    }

    /// The safetensors files holding the weights (one file or HF shards).
    pub fn weight_files(&self) -> Result<Vec<PathBuf>, ModelError> {
        let ModelSource::Dir(d) = self else {
            return Ok(vec![]);
        };
        let single = d.join("model.safetensors");
        if single.is_file() {
            return Ok(vec![single]);
        }
        let mut shards: Vec<PathBuf> = std::fs::read_dir(d)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("model-") && n.ends_with(".safetensors"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        if shards.is_empty() {
            return Err(ModelError::BadCheckpoint {
                path: d.display().to_string(),
                message: "no model.safetensors (PyTorch .bin checkpoints are not read; convert them with safetensors)".into(),
            });
        }
        Ok(shards)
    }

    /// Checks a checkpoint without loading it: each weight file's header parses and the
    /// file is as long as the header says (a truncated download is caught here, not
    /// half-way through a sweep), and a tokenizer.json loads and fits the vocabulary.
    pub fn check(&self, need_weights: bool) -> Result<(), ModelError> {
        let cfg = self.config()?;
        if need_weights {
            for f in self.weight_files()? {
                check_safetensors(&f)?;
            }
        }
        if let Some(t) = self.tokenizer_file() {
            let bad = |message: String| ModelError::BadCheckpoint {
                path: t.display().to_string(),
                message,
            };
            let tok = tokenizers::Tokenizer::from_file(&t)
                .map_err(|e| bad(format!("not a tokenizer: {e}")))?;
            let n = tok.get_vocab_size(true);
            if n > cfg.vocab_size {
                return Err(bad(format!(
                    "has {n} tokens but the model's vocab_size is {}: it does not belong to this model",
                    cfg.vocab_size
                )));
            }
        }
        Ok(())
    }

    pub fn tokenizer_file(&self) -> Option<PathBuf> {
        match self {
            ModelSource::Dir(d) => Some(d.join("tokenizer.json")).filter(|p| p.is_file()),
            ModelSource::Preset(_) => None,
        }
    }
}

/// A safetensors file's 8-byte header length, JSON header and data must add up to its size.
fn check_safetensors(path: &Path) -> Result<(), ModelError> {
    use std::io::Read;
    let bad = |message: String| ModelError::BadCheckpoint {
        path: path.display().to_string(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let len = f.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| bad(format!("truncated: {len} bytes, not even a header")))?;
    let n = u64::from_le_bytes(n);
    if n > len.saturating_sub(8) || n > 100_000_000 {
        return Err(bad(format!(
            "truncated or not safetensors: header of {n} bytes in a file of {len}"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    // The header maps each tensor name (and `__metadata__`) to its dtype, shape and
    // [start, end) byte offsets in the data that follows.
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not safetensors: header is not JSON ({e})")))?;
    let data_end = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| t["data_offsets"][1].as_u64())
        .max()
        .unwrap_or(0);
    let want = 8 + n + data_end;
    if len < want {
        return Err(bad(format!(
            "truncated: {len} bytes, the header describes {want} (download it again)"
        )));
    }
    Ok(())
}

/// The snapshot folder of `repo` in the local Hugging Face cache (`$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), as hf-hub lays it out.
fn hf_cache_snapshot(repo: &str) -> Result<PathBuf, ModelError> {
    let cache = match std::env::var_os("HF_HUB_CACHE") {
        Some(p) => hf_hub::Cache::new(p.into()),
        None => hf_hub::Cache::from_env(),
    };
    let found = cache
        .model(repo.to_string())
        .get("config.json")
        .and_then(|c| c.parent().map(Path::to_path_buf));
    found.ok_or_else(|| ModelError::NotFound {
        name: repo.into(),
        message: format!(
            "weights are not in the local Hugging Face cache ({}) and ablate does not download; \
             fetch them with `huggingface-cli download {repo}` on a machine with network, \
             or set model.name to a local directory",
            cache
                .path()
                .join(format!("models--{}", repo.replace('/', "--")))
                .display()
        ),
    })
}

/// A model with its trainable parameters.
pub struct LoadedModel {
    pub model: Opt,
    pub params: Params,
    pub config: OptConfig,
}

/// Builds the model: random init (seeded) or weights from the source's checkpoint.
pub fn build(
    cfg: &OptConfig,
    weights: &[PathBuf],
    seed: u64,
    device: &Device,
) -> Result<LoadedModel, ModelError> {
    let params = Params::new();
    let vb = if weights.is_empty() {
        params.random_builder(seed, device)
    } else {
        let refs: Vec<&Path> = weights.iter().map(PathBuf::as_path).collect();
        params.checkpoint_builder(&refs, device)?
    };
    let model = Opt::new(cfg, vb).map_err(|e| match weights.first() {
        Some(w) => ModelError::BadCheckpoint {
            path: w.display().to_string(),
            message: e.to_string(),
        },
        None => ModelError::Candle(e),
    })?;
    if weights.is_empty() {
        // HF zeroes the padding row of the token embeddings at init.
        if let Some(v) = params.get("model.decoder.embed_tokens.weight") {
            let pad = cfg.pad_token_id as usize;
            if pad < cfg.vocab_size {
                let t = v.as_tensor();
                let zero = Tensor::zeros((1, cfg.proj_dim()), t.dtype(), t.device())?;
                v.set(&t.slice_assign(&[pad..pad + 1, 0..cfg.proj_dim()], &zero)?)?;
            }
        }
    }
    Ok(LoadedModel {
        model,
        params,
        config: cfg.clone(),
    })
}

/// Writes config.json and model.safetensors in HF layout (tied head: no lm_head.weight).
pub fn save_pretrained(dir: &Path, cfg: &OptConfig, params: &Params) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::BadCheckpoint {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let cfg_text = serde_json::to_string_pretty(&cfg.to_hf_json()).expect("json");
    std::fs::write(dir.join("config.json"), cfg_text).map_err(|e| ModelError::BadCheckpoint {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    params.save(&dir.join("model.safetensors"))?;
    Ok(())
}
