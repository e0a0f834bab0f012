//! The shipped experiments: every CPU twin runs here and renders its report (intervals,
//! p-values, SVG plots), and the paper's GPU sweeps plan once their data and weights exist.

use crate::stdout_ok as ok;
use crate::WithoutAblateEnv;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ablate(cwd: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ablate"));
    c.current_dir(cwd)
        .args(args)
        .without_ablate_env()
        .env_remove("HF_HOME")
        .stdin(Stdio::null());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("ablate runs")
}

const TWINS: [&str; 6] = [
    "baseline",
    "epochs",
    "stability",
    "scaling",
    "evaluators",
    "generalization",
];

/// Numbers depend on float rounding of the machine; the shape of a report does not.
fn filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"\b[0-9a-f]{12}\b", "[id]"),
        (r"< 0\.001", "[num]"),
        (r"[+-]?\d+\.\d+(%|k|M|B)?( ± [+-]?\d+\.\d+%?)?", "[num]"),
        (r"\(\d+/\d+\)", "([k]/[n])"),
        (r"\| \d+ / \d+ \|", "| [a] / [b] |"),
        (r"\(\d+ spikes?\)", "([n] spikes)"),
        // Throughput, the last column of the scaling table.
        (r"(?m)\| \d+ \|$", "| [int] |"),
        (r"\b(within noise|better|worse)\b", "[verdict]"),
        (
            r"\| (yes: val loss rose after its minimum|no) \|",
            "| [overfit] |",
        ),
    ]
}

#[test]
fn every_cpu_twin_runs_and_its_report_renders_with_intervals_tests_and_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("ablate.db");
    // The shipped twins, shrunk so the suite stays fast: same axes, templates and plots.
    let out = ablate(
        &repo(),
        &[
            "run",
            "experiments/cpu",
            "--db",
            db.to_str().unwrap(),
            "--set",
            "data.n_train=48",
            "--set",
            "data.n_test=8",
            "--set",
            "eval.limit=6",
            "--set",
            "eval.max_new_tokens=12",
        ],
        &[],
    );
    ok(&out);
    for twin in TWINS {
        let name = format!("cpu-{twin}");
        let md = tmp.path().join(format!("reports/{name}.md"));
        let report = std::fs::read_to_string(&md).unwrap_or_else(|e| panic!("{md:?}: {e}"));
        // Every plot it links exists and is an SVG with text.
        let links: Vec<&str> = report
            .split("](")
            .skip(1)
            .filter_map(|s| s.split(')').next())
            .filter(|s| s.ends_with(".svg"))
            .collect();
        assert!(!links.is_empty(), "{name}: no plot\n{report}");
        for l in &links {
            let svg = std::fs::read_to_string(tmp.path().join("reports").join(l)).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("<text"), "{l}");
            // Rendered as a person sees it, kept for review beside the build.
            let png = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("plots")
                .join(l.replace(".svg", ".png"));
            let (w, h, colours) = render_png(&svg, &png);
            assert_eq!((w, h), (820, 480), "{l}");
            assert!(colours > 2, "{l}: {colours} colours: nothing drawn?");
            if l.ends_with("loss.svg") {
                // The legend says which axis each value belongs to.
                // The legend names each value's axis: `<run id>: <axis> <value>`.
                let named = svg.match_indices(": ").any(|(i, _)| {
                    let id = &svg[i.saturating_sub(8)..i];
                    let rest = &svg[i + 2..];
                    id.len() == 8
                        && id.bytes().all(|b| b.is_ascii_hexdigit())
                        && rest
                            .split(['<', '\n'])
                            .next()
                            .is_some_and(|t| t.trim().contains(' '))
                });
                assert!(named, "{l}: the legend does not name the axes");
            }
            if l.ends_with("heatmap.svg") {
                // The title says it once; the colour bar's label again.
                assert!(svg.matches("pass rate").count() >= 2, "{l}: no colour bar");
            }
        }
        insta::with_settings!({filters => filters(), snapshot_suffix => twin}, {
            insta::assert_snapshot!("twin_report", report);
        });
    }
    // Intervals and paired tests where the question needs them.
    let read = |n: &str| std::fs::read_to_string(tmp.path().join(format!("reports/cpu-{n}.md")));
    let epochs = read("epochs").unwrap();
    assert!(epochs.contains("95% t-interval") && epochs.contains("p (Holm)"));
    let stability = read("stability").unwrap();
    assert!(stability.contains("clip_lr_heatmap.svg"), "{stability}");
    let scaling = read("scaling").unwrap();
    assert!(scaling.contains("pass_rate_by_size.svg") && scaling.contains("oracle: hybrid"));
    let evaluators = read("evaluators").unwrap();
    assert!(evaluators.contains("| bfcl / rules |"), "{evaluators}");

    // Export and compare read the same database.
    let csv = ok(&ablate(
        &repo(),
        &["export", "cpu-epochs", "--db", db.to_str().unwrap()],
        &[],
    ));
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("run_id,status,is_baseline,train.epochs,train.seed,evaluator,pass_rate")
    );
    assert_eq!(lines.count(), 8, "{csv}");
    let json: serde_json::Value = serde_json::from_str(&ok(&ablate(
        &repo(),
        &[
            "export",
            "cpu-epochs",
            "--json",
            "--db",
            db.to_str().unwrap(),
        ],
        &[],
    )))
    .unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8);
    let ids: Vec<&str> = runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    let out = ok(&ablate(
        &repo(),
        &[
            "compare",
            &ids[0][..8],
            ids[2],
            "--db",
            db.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(
        out.contains("train.epochs") && out.contains("p (McNemar)"),
        "{out}"
    );
    let out = ablate(
        &repo(),
        &["compare", "zzzz", ids[2], "--db", db.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run \"zzzz\" is not in the database"));
}

#[test]
fn a_template_typo_fails_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("t.toml");
    std::fs::write(
        &f,
        "[experiment]\nreport = \"stabilty\"\n[model]\nname = \"tiny\"\n[train]\nepochs = 0\n",
    )
    .unwrap();
    let out = ablate(tmp.path(), &["run", "t.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("t.toml: experiment.report: template \"stabilty\"")
            && err.contains("stability.md.j2"),
        "{err}"
    );
    assert!(!tmp.path().join("results").exists(), "nothing ran");

    // A template variable that does not exist is an error, not an empty string.
    std::fs::write(tmp.path().join("bad.md.j2"), "{{ sweep }} {{ pass_rat }}").unwrap();
    std::fs::write(
        &f,
        "[experiment]\nreport = \"bad.md.j2\"\n[model]\nname = \"tiny\"\n[data]\nn_train = 16\nn_test = 2\nvocab_size = 300\n[train]\nepochs = 0\n[eval]\nmax_new_tokens = 2\n",
    )
    .unwrap();
    let out = ablate(tmp.path(), &["run", "t.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.md.j2") && err.contains("undefined"),
        "{err}"
    );

    // An include that leads outside the template's folder through a symlink is refused,
    // and the linked file's text appears nowhere.
    let secret = tmp.path().join("outside.txt");
    std::fs::write(&secret, "SECRET-OUTSIDE").unwrap();
    let tpl = tmp.path().join("tpl");
    std::fs::create_dir(&tpl).unwrap();
    std::os::unix::fs::symlink(&secret, tpl.join("x.j2")).unwrap();
    std::fs::write(tpl.join("inc.md.j2"), "{{ sweep }} {% include \"x.j2\" %}").unwrap();
    let out = ablate(
        tmp.path(),
        &["report", "t.toml", "--template", "tpl/inc.md.j2"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outside its folder"), "{err}");
    for f in walk_files(&tmp.path().join("results")) {
        let text = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&text).contains("SECRET-OUTSIDE"),
            "{f:?}"
        );
    }

    // A template that would loop for hours runs out of fuel and fails in seconds.
    std::fs::write(
        tmp.path().join("bad.md.j2"),
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    let out = ablate(tmp.path(), &["report", "t.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.md.j2") && err.contains("fuel"), "{err}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn the_paper_sweeps_plan_once_their_data_and_weights_are_there() {
    let shared = repo().join("../shared/data");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // ToolBench's layout, with the shared samples standing in for the full release.
    let link = |target: PathBuf, at: &str| {
        let at = d.join(at);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, at).unwrap();
    };
    // The test queries in the released layout (StableToolBench's solvable ones standing
    // in), and an empty tool response cache.
    let queries = shared.join("toolbench/StableToolBench/solvable_queries");
    link(
        queries.join("test_instruction"),
        "data/toolbench/test_instruction",
    );
    link(
        queries.join("test_query_ids"),
        "data/toolbench/test_query_ids",
    );
    std::fs::create_dir_all(d.join("data/toolbench/tool_response_cache")).unwrap();
    let sft = shared.join("toolbench/ToolBench/toolllama/toolllama_G123_dfs_sample.json");
    link(sft.clone(), "data/toolbench/toolllama_G123_dfs_train.json");
    link(sft, "data/toolbench/toolllama_G123_dfs_eval.json");
    for f in ["BFCL_v4_simple_python.json", "BFCL_v4_multiple.json"] {
        link(shared.join("bfcl").join(f), &format!("data/bfcl/{f}"));
    }
    link(
        shared.join("bfcl/possible_answer"),
        "data/bfcl/possible_answer",
    );
    let paper = repo().join("experiments/paper");
    let hub = d.join("hub");
    std::fs::create_dir_all(&hub).unwrap();

    // Without weights: every problem is the missing model, nothing else.
    let out = ablate(
        d,
        &["plan", paper.to_str().unwrap()],
        &[("HF_HUB_CACHE", &hub)],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for line in err.lines() {
        assert!(
            line.contains("model.name") && line.contains("not in the local Hugging Face cache"),
            "{line}"
        );
    }

    // With the three OPT ids in the cache (tiny stand-ins), every sweep plans.
    for id in ["opt-125m", "opt-350m", "opt-1.3b"] {
        let repo_dir = hub.join(format!("models--facebook--{id}"));
        super::model::save_tiny(&repo_dir.join("snapshots/0123abcd"));
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), "0123abcd").unwrap();
    }
    let out = ablate(
        d,
        &["plan", paper.to_str().unwrap(), "--json"],
        &[("HF_HUB_CACHE", &hub)],
    );
    let plans: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let sizes: Vec<(String, usize)> = plans
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["experiment"].as_str().unwrap_or_default().to_string(),
                p["runs"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        sizes,
        [
            ("paper-baseline".to_string(), 3),
            ("paper-epochs".to_string(), 12),
            ("paper-evaluators".to_string(), 2),
            ("paper-generalization".to_string(), 7),
            ("paper-scaling".to_string(), 6),
            ("paper-stability".to_string(), 18),
        ],
        "{plans}"
    );
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Renders an SVG to a PNG file the way a browser would (resvg, system fonts); returns its
/// size and how many distinct colours it has.
fn render_png(svg: &str, png: &Path) -> (u32, u32, usize) {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    let fonts = opt.fontdb_mut();
    fonts.load_system_fonts();
    // The plots ask for `sans-serif`; fontdb maps it to Arial, which Debian lacks.
    let sans = fonts
        .faces()
        .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
        .find(|name| name.contains("Sans") && !name.contains("Mono"));
    if let Some(family) = sans {
        fonts.set_sans_serif_family(family);
    }
    let tree = usvg::Tree::from_str(svg, &opt).unwrap();
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    pixmap.save_png(png).unwrap();
    std::fs::write(png.with_extension("svg"), svg).unwrap();
    let colours: std::collections::HashSet<[u8; 4]> = pixmap
        .pixels()
        .iter()
        .map(|p| [p.red(), p.green(), p.blue(), p.alpha()])
        .collect();
    (size.width(), size.height(), colours.len())
}
