//! OPT in candle: construction from presets or Hugging Face checkpoints, saving in HF
//! layout, and greedy generation with a KV cache.

mod dropout;
pub mod fetch;
mod generate;
pub mod ops;
mod opt;
mod params;
mod tokenizer;

pub use dropout::{Dropout, Site};
pub use generate::{
    generate, generate_greedy, generate_scored, Decoding, GenerateOptions, Generated,
};
pub use opt::*;
pub use params::Params;
pub use tokenizer::{TokenizerFiles, TOKENIZER_FILES};

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
    /// A directory in HF layout: config.json, weights (see `weight_files`), and a
    /// tokenizer (see `TokenizerFiles`).
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

    /// The files holding the weights, in the order transformers looks for them:
    /// `model.safetensors`, sharded safetensors (`model.safetensors.index.json`),
    /// `pytorch_model.bin`, sharded pickles (`pytorch_model.bin.index.json`).
    pub fn weight_files(&self) -> Result<Vec<PathBuf>, ModelError> {
        let ModelSource::Dir(d) = self else {
            return Ok(vec![]);
        };
        for (single, index) in [
            ("model.safetensors", "model.safetensors.index.json"),
            ("pytorch_model.bin", "pytorch_model.bin.index.json"),
        ] {
            if d.join(single).is_file() {
                return Ok(vec![d.join(single)]);
            }
            if d.join(index).is_file() {
                return shard_files(&d.join(index));
            }
        }
        Err(ModelError::BadCheckpoint {
            path: d.display().to_string(),
            message: "no weights: looked for model.safetensors, model.safetensors.index.json, \
                      pytorch_model.bin and pytorch_model.bin.index.json"
                .into(),
        })
    }

    /// Checks a checkpoint without loading it: each weight file's header parses and the
    /// file is as long as the header says (a truncated download is caught here, not
    /// half-way through a sweep), and the tokenizer loads and fits the vocabulary. A
    /// checkpoint folder must bring its own tokenizer: pairing its embeddings with a fresh
    /// one would train on meaningless ids.
    pub fn check(&self, need_weights: bool) -> Result<(), ModelError> {
        let cfg = self.config()?;
        if need_weights {
            for f in self.weight_files()? {
                if f.extension().is_some_and(|e| e == "safetensors") {
                    check_safetensors(&f)?;
                } else {
                    candle_core::pickle::PthTensors::new(&f, None).map_err(|e| {
                        ModelError::BadCheckpoint {
                            path: f.display().to_string(),
                            message: format!("not a PyTorch checkpoint: {e}"),
                        }
                    })?;
                }
            }
        }
        if let Some(tok) = self.tokenizer()? {
            let n = tok.get_vocab_size(true);
            if n > cfg.vocab_size {
                return Err(ModelError::BadCheckpoint {
                    path: self.dir().display().to_string(),
                    message: format!(
                        "its tokenizer has {n} tokens but the model's vocab_size is {}: \
                         it does not belong to this model",
                        cfg.vocab_size
                    ),
                });
            }
        }
        Ok(())
    }

    /// The checkpoint folder (empty for a preset).
    fn dir(&self) -> &Path {
        match self {
            ModelSource::Dir(d) => d,
            ModelSource::Preset(_) => Path::new(""),
        }
    }

    /// The checkpoint's own tokenizer; `None` for a preset, whose tokenizer is trained on
    /// the run's data. A checkpoint folder without tokenizer files is an error.
    pub fn tokenizer(&self) -> Result<Option<tokenizers::Tokenizer>, ModelError> {
        match self {
            ModelSource::Preset(_) => Ok(None),
            ModelSource::Dir(d) => match TokenizerFiles::find(d) {
                Some(files) => files.load().map(Some),
                None => Err(ModelError::BadCheckpoint {
                    path: d.display().to_string(),
                    message: format!(
                        "no tokenizer: looked for {TOKENIZER_FILES}; a checkpoint is never \
                         paired with a freshly trained one"
                    ),
                }),
            },
        }
    }
}

/// The files an HF shard index (`weight_map`: tensor name to file) names, each once.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let bad = |message: String| ModelError::BadCheckpoint {
        path: index.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return Err(bad("weight_map names no files".into()));
    }
    let mut files = Vec::with_capacity(names.len());
    for n in names {
        // A shard is a file beside the index, never a path elsewhere.
        if n.contains('/') || n.contains('\\') || n.starts_with('.') {
            return Err(bad(format!("shard \"{n}\" is not a file name")));
        }
        let f = dir.join(n);
        if !f.is_file() {
            return Err(bad(format!("shard {n} is missing")));
        }
        files.push(f);
    }
    Ok(files)
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
            "weights are not in the local Hugging Face cache ({}) and plan and run do not \
             download; fetch them with `ablate fetch {repo}` on a machine with network, \
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
