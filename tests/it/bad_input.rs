//! The bad-input corpus (tests/bad-input/): malformed experiment, data, checkpoint and
//! tokenizer files, each with the one-line error it must give (`# expect:` on its first
//! line). Every case exits 2 before the database is opened, without a panic, and leaves
//! an existing database byte for byte as it was.

use crate::WithoutAblateEnv;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn ablate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ablate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .without_ablate_env()
        .stdin(Stdio::null())
        .output()
        .expect("ablate runs")
}

fn cases() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-input");
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
            let expect = String::from_utf8_lossy(first)
                .strip_prefix("# expect: ")
                .unwrap_or_else(|| panic!("{p:?}: first line must be `# expect: ...`"))
                .to_string();
            (p, expect)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_bad_input_gets_its_one_line_error_and_exit_2_and_the_db_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("ablate.db");
    let db_arg = db.to_str().unwrap();
    // A database with one finished run in it, to check that nothing touches it.
    let good = tmp.path().join("good.toml");
    std::fs::write(
        &good,
        "[model]\nname = \"tiny\"\n[data]\nn_train = 16\nn_test = 2\nvocab_size = 300\n[train]\nepochs = 0\n[eval]\nmax_new_tokens = 2\n",
    )
    .unwrap();
    let out = ablate(&["run", good.to_str().unwrap(), "--db", db_arg, "--no-report"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = std::fs::read(&db).unwrap();

    let cases = cases();
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for (path, expect) in &cases {
        let rel = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .to_str()
            .unwrap();
        for cmd in ["plan", "run"] {
            let out = ablate(&[cmd, rel, "--db", db_arg]);
            let err = String::from_utf8_lossy(&out.stderr);
            let want = format!("error: {rel}: {expect}");
            let ok = out.status.code() == Some(2)
                && err.lines().count() == 1
                && err.starts_with(&want)
                && !err.contains("panicked");
            if !ok {
                failures.push(format!(
                    "{cmd} {rel}: exit {:?}\n  want: {want}\n  got:  {err}",
                    out.status.code()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(std::fs::read(&db).unwrap(), before, "the database changed");
}
