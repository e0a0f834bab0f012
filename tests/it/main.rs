//! The one integration-test binary: end-to-end CLI tests and numerical parity with
//! transformers and torch.

mod agent;
mod bad_input;
mod bfcl;
mod browser;
mod cli;
mod endpoint;
mod hub;
mod judge;
mod layering;
mod migration;
mod model;
mod parity;
mod reliability;
mod reports;
mod serve;
mod slurm;
mod stages;
mod stub;
mod toolbench;
mod tooleval;

/// Every variant folder of a fixture set: `$<env>`, or `../shared/fixtures/<default>`, so
/// that a new (or hidden) variant needs no code change.
pub(crate) fn fixture_variants(env: &str, default: &str) -> Vec<std::path::PathBuf> {
    let root = std::env::var(env)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/fixtures")
                .join(default)
        });
    let mut out: Vec<std::path::PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("fixtures {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    assert!(
        !out.is_empty(),
        "no variant folders under {}",
        root.display()
    );
    out
}

/// The largest absolute difference between two f32 tensors of one shape.
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Processes the tests start never see the caller's `ABLATE_*` variables (an exported
/// `ABLATE_DB` or `ABLATE_TRAIN__LR` must not change what a test sees).
pub(crate) trait WithoutAblateEnv {
    fn without_ablate_env(&mut self) -> &mut Self;
}

impl WithoutAblateEnv for std::process::Command {
    fn without_ablate_env(&mut self) -> &mut Self {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ABLATE_") {
                self.env_remove(k);
            }
        }
        self
    }
}

/// A port on 127.0.0.1 that nothing listens on now (for a server a test starts).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A command's stdout, after asserting it succeeded (its stderr in the message if not).
pub(crate) fn stdout_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first column of every row of `sql`, as text.
pub(crate) fn text_rows(db: &std::path::Path, sql: &str) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut s = c.prepare(sql).unwrap();
    s.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// No file under `dir` holds `key` (links to folders are not followed: what they point
/// to is under `dir` too, or not ablate's to check).
pub(crate) fn assert_no_key(dir: &std::path::Path, key: &str) {
    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else if p.is_file() {
                out.push(p);
            }
        }
        out
    }
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "the API key is in {}",
            entry.display()
        );
    }
}
