//! What produced a stage: the code (git commit, a dirty flag and a hash of the diff), the
//! versions of ablate and candle, the matmul backend and the device. Stored with every
//! training, generation and verdict set; `plan` compares it with the current code.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

use candle_core::Device;
use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provenance {
    #[serde(flatten)]
    pub code: Code,
    pub ablate_version: &'static str,
    pub candle_version: &'static str,
    /// `openblas <path> (<core type>)` or `gemm` (the crate candle uses).
    pub matmul: String,
    /// `cpu: <model name>` or `cuda:N`.
    pub device: String,
    /// The GPU's model, driver and CUDA version (from nvidia-smi), on a GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Gpu>,
}

/// The state of the git working tree ablate runs in (the user's project).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Code {
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    /// sha256 of `git diff HEAD` (tracked changes) when the tree is dirty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_diff_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gpu {
    pub name: String,
    pub driver: String,
    pub cuda: String,
}

fn git(args: &[&str]) -> Option<Vec<u8>> {
    Command::new("git")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.stdout)
}

impl Code {
    /// The working tree's state now (read once per process).
    pub fn current() -> Code {
        static CODE: OnceLock<Code> = OnceLock::new();
        CODE.get_or_init(|| {
            let Some(head) = git(&["rev-parse", "HEAD"]) else {
                return Code::default();
            };
            let status =
                git(&["status", "--porcelain", "--untracked-files=no"]).unwrap_or_default();
            let dirty = !status.is_empty();
            Code {
                git_commit: Some(String::from_utf8_lossy(&head).trim().to_string()),
                git_dirty: Some(dirty),
                git_diff_sha256: dirty.then(|| {
                    let diff = git(&["diff", "HEAD"]).unwrap_or_default();
                    format!("{:x}", Sha256::digest(&diff))
                }),
            }
        })
        .clone()
    }

    /// Why stored provenance was produced by other code than `self`, if it was: another
    /// commit, or the same commit with other uncommitted changes. Unknown code (no git)
    /// on either side is not called stale.
    pub fn differs_from(&self, stored: &serde_json::Value) -> Option<String> {
        let mine = self.git_commit.as_deref()?;
        let theirs = stored.get("git_commit")?.as_str()?;
        if !mine.starts_with(theirs) && !theirs.starts_with(mine) {
            return Some(format!("commit {}", &theirs[..theirs.len().min(12)]));
        }
        let their_diff = stored.get("git_diff_sha256").and_then(|v| v.as_str());
        if their_diff != self.git_diff_sha256.as_deref() {
            return Some(match their_diff {
                Some(d) => format!("uncommitted changes {}", &d[..d.len().min(12)]),
                None => "the clean tree (now there are uncommitted changes)".into(),
            });
        }
        None
    }
}

impl Provenance {
    pub fn current(device: &Device) -> Provenance {
        let matmul = match crate::train::matmul::blas() {
            Some(b) => format!(
                "openblas {} ({})",
                b.path,
                std::env::var("OPENBLAS_CORETYPE").unwrap_or_else(|_| "auto".into())
            ),
            None => "gemm".into(),
        };
        let (device, gpu) = match device {
            Device::Cuda(_) => {
                let n = match device.location() {
                    candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
                    _ => 0,
                };
                (format!("cuda:{n}"), gpu_info(n))
            }
            _ => (format!("cpu: {}", cpu_model()), None),
        };
        Provenance {
            code: Code::current(),
            ablate_version: env!("CARGO_PKG_VERSION"),
            candle_version: env!("ABLATE_CANDLE_VERSION"),
            matmul,
            device,
            gpu,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("provenance serializes")
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn gpu_info(n: usize) -> Option<Gpu> {
    let smi = |args: &[&str]| -> Option<String> {
        let o = Command::new("nvidia-smi")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        Some(String::from_utf8_lossy(&o.stdout).to_string())
    };
    let line = smi(&[
        "--query-gpu=name,driver_version",
        "--format=csv,noheader",
        "-i",
        &n.to_string(),
    ])?;
    let (name, driver) = line.trim().split_once(", ")?;
    let cuda = smi(&[])
        .and_then(|s| {
            s.split("CUDA Version:")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(String::from)
        })
        .unwrap_or_default();
    Some(Gpu {
        name: name.to_string(),
        driver: driver.to_string(),
        cuda,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_commit_or_other_changes_are_stale_and_unknown_code_is_not() {
        let clean = Code {
            git_commit: Some("abc123def4567890".into()),
            git_dirty: Some(false),
            git_diff_sha256: None,
        };
        let stored = serde_json::to_value(&clean).unwrap();
        assert_eq!(clean.differs_from(&stored), None);
        let moved = Code {
            git_commit: Some("0123456789ab".into()),
            ..clean.clone()
        };
        assert!(moved
            .differs_from(&stored)
            .unwrap()
            .contains("abc123def456"));
        let dirty = Code {
            git_dirty: Some(true),
            git_diff_sha256: Some("feedbeef".into()),
            ..clean.clone()
        };
        assert!(dirty.differs_from(&stored).unwrap().contains("clean tree"));
        assert!(clean
            .differs_from(&serde_json::to_value(&dirty).unwrap())
            .unwrap()
            .contains("feedbeef"));
        // A migrated run knew only its short commit.
        let short = serde_json::json!({"git_commit": "abc123def456"});
        assert_eq!(clean.differs_from(&short), None);
        assert_eq!(Code::default().differs_from(&stored), None);
        assert_eq!(clean.differs_from(&serde_json::json!({})), None);
    }
}
