//! The module graph: dependencies flow one way. Read from the sources: a module depends
//! on another when its code names `crate::<other>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module → the top-level modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let deps = g.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(m) = stack.pop() {
        for d in g.get(&m).into_iter().flatten() {
            if d == to {
                return true;
            }
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    false
}

#[test]
fn modules_depend_one_way_and_evaluators_never_touch_the_store() {
    let g = graph();
    assert!(g.contains_key("eval") && g.contains_key("store"), "{g:?}");
    let cycles: Vec<String> = g.keys().filter(|m| reaches(&g, m, m)).cloned().collect();
    assert!(cycles.is_empty(), "modules on a cycle: {cycles:?}\n{g:#?}");
    for (from, to) in [
        ("eval", "store"),
        ("data", "config"),
        ("data", "eval"),
        ("exec", "run"),
        ("config", "plan"),
    ] {
        assert!(!reaches(&g, from, to), "{from} depends on {to}: {g:#?}");
    }
    // Only the command line and the display print (clippy denies it elsewhere too).
    assert!(
        !g["run"].contains("ui") && !g["exec"].contains("ui"),
        "{g:#?}"
    );
}
