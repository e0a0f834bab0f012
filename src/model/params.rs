//! Trainable parameters: a name-ordered set of candle `Var`s, filled from a checkpoint or
//! by a seeded initializer. candle's own `VarMap` is a HashMap (iteration order varies
//! between processes) and its CPU RNG cannot be seeded, so neither gives reproducible runs.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::pickle::PthTensors;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// Parameters by canonical name (`model.decoder.layers.0.fc1.weight`, ...).
#[derive(Clone, Default)]
pub struct Params {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
}

/// Where parameters not yet in the set come from.
struct Source {
    params: Params,
    seed: u64,
    file: Option<Arc<Checkpoint>>,
}

/// The tensors of a checkpoint: safetensors files (one or HF shards, memory-mapped) or
/// PyTorch pickles (`pytorch_model.bin`, read lazily a tensor at a time).
enum Checkpoint {
    Safetensors(MmapedSafetensors),
    Pth(Vec<PthTensors>),
}

impl Checkpoint {
    fn open(files: &[&Path]) -> Result<Checkpoint> {
        let is_pth = |f: &&Path| f.extension().is_some_and(|e| e == "bin" || e == "pth");
        if files.iter().all(is_pth) {
            let parts = files
                .iter()
                .map(|f| {
                    PthTensors::new(f, None).map_err(|e| {
                        candle_core::Error::Msg(format!(
                            "{}: not a PyTorch checkpoint ({e})",
                            f.display()
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Checkpoint::Pth(parts));
        }
        // SAFETY: the files are mapped read-only and not modified while the map lives;
        // this is how candle and safetensors load checkpoints.
        Ok(Checkpoint::Safetensors(unsafe {
            MmapedSafetensors::multi(files)?
        }))
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Checkpoint::Safetensors(st) => st.get(name).is_ok(),
            Checkpoint::Pth(parts) => parts.iter().any(|p| p.tensor_infos().contains_key(name)),
        }
    }

    fn load(&self, name: &str, dev: &Device) -> Result<Option<Tensor>> {
        match self {
            Checkpoint::Safetensors(st) if st.get(name).is_ok() => Ok(Some(st.load(name, dev)?)),
            Checkpoint::Safetensors(_) => Ok(None),
            Checkpoint::Pth(parts) => {
                for p in parts {
                    if let Some(t) = p.get(name)? {
                        return Ok(Some(t.to_device(dev)?));
                    }
                }
                Ok(None)
            }
        }
    }
}

impl Params {
    pub fn new() -> Self {
        Self::default()
    }

    /// All (name, var) pairs in name order.
    pub fn all(&self) -> Vec<(String, Var)> {
        let g = self.vars.lock().expect("params lock");
        g.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.vars.lock().expect("params lock").get(name).cloned()
    }

    pub fn len(&self) -> usize {
        self.vars.lock().expect("params lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn num_elements(&self) -> usize {
        self.all().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// A VarBuilder whose missing tensors are drawn from a generator seeded by `seed` and
    /// the tensor's name, so the init does not depend on construction order.
    pub fn random_builder(&self, seed: u64, device: &Device) -> VarBuilder<'static> {
        let src = Source {
            params: self.clone(),
            seed,
            file: None,
        };
        VarBuilder::from_backend(Box::new(src), DType::F32, device.clone())
    }

    /// A VarBuilder reading a checkpoint: safetensors (memory-mapped; one tensor is copied
    /// at a time) or PyTorch `.bin` pickles. Names with or without the `model.` prefix are
    /// accepted (`OPTModel` saves `decoder.*`, `OPTForCausalLM` saves `model.decoder.*`).
    pub fn checkpoint_builder(
        &self,
        files: &[&Path],
        device: &Device,
    ) -> Result<VarBuilder<'static>> {
        let src = Source {
            params: self.clone(),
            seed: 0,
            file: Some(Arc::new(Checkpoint::open(files)?)),
        };
        Ok(VarBuilder::from_backend(
            Box::new(src),
            DType::F32,
            device.clone(),
        ))
    }

    /// Saves every parameter in safetensors format, under its canonical name.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .all()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors.into_iter().collect(), path)
    }

    /// Checks that `values` has a tensor of the right shape for every parameter.
    pub fn check_values(&self, values: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.all() {
            let t = values
                .get(&name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))?;
            if t.shape() != var.shape() {
                candle_core::bail!(
                    "tensor {name} has shape {:?}, expected {:?}",
                    t.shape(),
                    var.shape()
                );
            }
        }
        Ok(())
    }

    /// Overwrites every parameter from `values`, after checking all of them.
    pub fn set_values(&self, values: &HashMap<String, Tensor>) -> Result<()> {
        self.check_values(values)?;
        for (name, var) in self.all() {
            let t = &values[&name];
            var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the run seed.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^ seed.wrapping_mul(0x9E3779B97F4A7C15)
}

fn init_tensor(seed: u64, name: &str, shape: &Shape, init: Init, dev: &Device) -> Result<Tensor> {
    let n = shape.elem_count();
    let data: Vec<f32> = match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(name_seed(seed, name));
            (0..n)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    (mean + stdev * z) as f32
                })
                .collect()
        }
        Init::Uniform { lo, up } => {
            use rand::Rng;
            let mut rng = rand::rngs::StdRng::seed_from_u64(name_seed(seed, name));
            (0..n).map(|_| rng.random_range(lo..up) as f32).collect()
        }
        Init::Kaiming { .. } => {
            return Err(candle_core::Error::Msg(format!(
                "{name}: use an explicit init"
            )));
        }
    };
    Tensor::from_vec(data, shape.clone(), dev)
}

impl Source {
    fn file_tensor(&self, name: &str, dev: &Device) -> Result<Option<Tensor>> {
        let Some(f) = &self.file else { return Ok(None) };
        let alt = name.strip_prefix("model.").unwrap_or(name).to_string();
        for cand in [name.to_string(), alt] {
            if let Some(t) = f.load(&cand, dev)? {
                return Ok(Some(t.to_dtype(DType::F32)?));
            }
        }
        Ok(None)
    }
}

impl SimpleBackend for Source {
    fn get(&self, s: Shape, name: &str, h: Init, _dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(v) = self.params.get(name) {
            if v.shape() != &s {
                candle_core::bail!("{name}: shape {:?}, expected {:?}", v.shape(), s);
            }
            return Ok(v.as_tensor().clone());
        }
        let t = match self.file_tensor(name, dev)? {
            Some(t) => {
                if t.shape() != &s {
                    candle_core::bail!(
                        "checkpoint tensor {name} has shape {:?}, the config expects {:?}",
                        t.shape(),
                        s
                    );
                }
                t
            }
            None if self.file.is_some() => {
                candle_core::bail!("checkpoint has no tensor named {name}")
            }
            None => init_tensor(self.seed, name, &s, h, dev)?,
        };
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.params
            .vars
            .lock()
            .expect("params lock")
            .insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(v) = self.params.get(name) {
            return Ok(v.as_tensor().clone());
        }
        self.file_tensor(name, dev)?
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor named {name}")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.params.get(name).is_some()
            || self.file.as_ref().is_some_and(|f| {
                f.contains(name) || f.contains(name.strip_prefix("model.").unwrap_or(name))
            })
    }
}
