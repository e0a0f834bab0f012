//! `ablate serve` in a real browser: Debian's headless Chromium, driven over WebDriver by
//! ChromeDriver, through every page of a database made by a CPU sweep. It checks what a
//! person sees (text as rendered, columns as displayed after a click), not the HTML, and
//! writes a screenshot of each page under the test's `results/screenshots/` (and a copy
//! under `target/tmp/screenshots/` for review). Chromium and ChromeDriver are installed by
//! `scripts/chromium-local.sh`; ChromeDriver (and the browser it starts) and the server are
//! stopped by PID, also when an assertion fails. Where the machine cannot install them (not
//! root, no apt-get) the test says so and skips; `ABLATE_SKIP_BROWSER=1` skips it on
//! purpose.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::serve::{ablate, serve};
use crate::{free_port, stdout_ok};

/// Four runs: the tiny model untrained and trained for 1 and 2 epochs, and a model behind
/// an endpoint (a stub that knows the gold answer of every other example), so that runs
/// pass different examples (the discordant pairs). `train.lr` has one value: the toggle
/// hides it.
const SWEEP: &str = r#"
[experiment]
name = "browsed"
description = "Does training longer help, and how far is a large model?"
baseline = { "train.epochs" = 0, "model.name" = "tiny" }
[model]
name = "tiny"
[model.endpoint]
url = "URL"
api_key_env = "STUB_ENDPOINT_KEY"
[data]
n_train = 48
n_test = 8
vocab_size = 512
max_seq_len = 128
[train]
batch_size = 16
[eval]
max_new_tokens = 24
evaluators = ["rules"]
[grid]
"model.name" = ["tiny", "openai:big-llm"]
"train.epochs" = [0, 1, 2]
"train.lr" = [3e-3]
[[grid.exclude]]
"model.name" = "openai:big-llm"
"train.epochs" = 1
[[grid.exclude]]
"model.name" = "openai:big-llm"
"train.epochs" = 2
"#;

/// ChromeDriver and its browser session, stopped when dropped: the session is closed (the
/// browser exits) and ChromeDriver's process group is killed by its PID.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The paths of Chromium and ChromeDriver, installed if missing; None to skip.
fn installed() -> Option<(String, String)> {
    if std::env::var("ABLATE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("skipping the browser test: ABLATE_SKIP_BROWSER=1");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/chromium-local.sh");
    let out = Command::new(&script)
        .arg("install")
        .output()
        .expect("bash runs");
    match out.status.code() {
        Some(0) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut lines = text.lines();
            let chromium = lines.next().expect("chromium's path").to_string();
            let driver = lines.next().expect("chromedriver's path").to_string();
            Some((chromium, driver))
        }
        Some(3) => {
            eprintln!(
                "skipping the browser test: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        _ => panic!(
            "scripts/chromium-local.sh install failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

impl Browser {
    fn start(chromium: &str, driver: &str, profile: &Path) -> Browser {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that the browser it starts is stopped with it.
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "chromedriver answers"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut b = Browser {
            driver: child,
            base,
            session: String::new(),
        };
        // The flags keep a root, offline, headless browser from reaching for the network.
        // A page that does not load fails in 30 s, naming the command, rather than after
        // ChromeDriver's default 300 s.
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "timeouts": {"pageLoad": 30000, "script": 10000, "implicit": 0},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let v = b.call("POST", "/session", caps);
        b.session = v["sessionId"].as_str().expect("a session").to_string();
        b
    }

    /// A WebDriver command: its `value`.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let reply = match method {
            "GET" => ureq::get(&url).call(),
            _ => ureq::post(&url).send_json(body),
        };
        let v: Value = match reply {
            Ok(r) => r.into_json().unwrap(),
            Err(ureq::Error::Status(code, r)) => {
                panic!(
                    "{method} {path}: {code} {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("{method} {path}: {e}"),
        };
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    /// The value of a script run in the page (its `return`).
    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Waits (up to 10 s) until a script condition holds, such as a page loaded after a
    /// click that submits a form.
    fn wait_for(&self, condition: &str) {
        let t0 = Instant::now();
        while self.js(&format!("return !!({condition});")) != Value::Bool(true) {
            assert!(t0.elapsed() < Duration::from_secs(10), "never: {condition}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn click(&self, css: &str) {
        let el = self.call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        let id = el
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{css}: {el}"))
            .to_string();
        self.call("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// Saves the page as the browser shows it, in each folder.
    fn screenshot(&self, name: &str, dirs: &[PathBuf]) {
        let png = self.call("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 text"))
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{name}: not a PNG");
        for d in dirs {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join(format!("{name}.png")), &bytes).unwrap();
        }
    }

    /// The text of each cell of each displayed row of a table, as rendered.
    fn table(&self, id: &str) -> Vec<Vec<String>> {
        let v = self.js(&format!(
            "return Array.from(document.querySelectorAll('#{id} tbody tr'))
               .filter(r => r.offsetParent !== null)
               .map(r => Array.from(r.cells).map(c => c.innerText.trim()));"
        ));
        serde_json::from_value(v).unwrap()
    }

    /// The displayed header cells of a table.
    fn headers(&self, id: &str) -> Vec<String> {
        let v = self.js(&format!(
            "return Array.from(document.querySelectorAll('#{id} thead th'))
               .filter(h => getComputedStyle(h).display !== 'none')
               .map(h => h.innerText.trim());"
        ));
        serde_json::from_value(v).unwrap()
    }
}

fn query<T: rusqlite::types::FromSql>(db: &Path, sql: &str) -> Vec<Vec<T>> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut st = c.prepare(sql).unwrap();
    let n = st.column_count();
    st.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_person_browses_every_page_in_chromium() {
    let Some((chromium, driver)) = installed() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stub = crate::endpoint::half_gold_stub();
    let sweep = SWEEP.replace("URL", &format!("{}/v1", stub.base));
    std::fs::write(d.join("browsed.toml"), sweep).unwrap();
    let db = d.join("results/ablate.db");
    stdout_ok(
        &ablate(&["run", "browsed.toml", "--db", db.to_str().unwrap()])
            .current_dir(d)
            .env("STUB_ENDPOINT_KEY", "sk-browser-test")
            .output()
            .unwrap(),
    );
    drop(stub);
    // Closed, checkpointed: the file as it stands before anything reads it.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    drop(c);
    let before = std::fs::read(&db).unwrap();
    let shots = [
        d.join("results/screenshots"),
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots"),
    ];

    let server = serve(&db);
    let browser = Browser::start(&chromium, &driver, &d.join("chromium-profile"));
    let url = |path: &str| format!("{}{path}", server.base);

    // Sweeps: the question and the report link.
    browser.go(&url("/"));
    let text = browser.js("return document.body.innerText;");
    let text = text.as_str().unwrap();
    assert!(
        text.contains("browsed") && text.contains("Does training longer help"),
        "{text}"
    );
    browser.screenshot("sweeps", &shots);

    // The sweep's report, as HTML: its runs table as a table, its plots as images.
    browser.click("a[href='/reports/browsed']");
    browser
        .wait_for("location.pathname === '/reports/browsed' && document.readyState === 'complete'");
    let shown = browser.js(
        "return { tables: document.querySelectorAll('article table').length,
                  images: Array.from(document.querySelectorAll('article img'))
                      .map(i => [i.getAttribute('src'), i.naturalWidth]) };",
    );
    assert!(shown["tables"].as_u64().unwrap() >= 1, "{shown}");
    let images = shown["images"].as_array().unwrap();
    assert!(
        images.iter().any(|i| i[0] == "browsed/loss.svg"),
        "the loss plot: {shown}"
    );
    for i in images {
        assert!(
            i[1].as_u64().unwrap() > 0,
            "an image that did not load: {i}"
        );
    }
    browser.screenshot("report", &shots);

    // Runs: every row's id, axis values and pass rate as the database has them.
    let runs: Vec<Vec<String>> = query(
        &db,
        "SELECT s.run_id,
                json_extract(s.axes_json, '$.\"model.name\"'),
                CAST(json_extract(s.axes_json, '$.\"train.epochs\"') AS TEXT),
                printf('%.1f%%', 100.0 * v.pass_rate)
         FROM sweep_runs s JOIN run_summary v USING (run_id) ORDER BY s.position",
    );
    assert_eq!(runs.len(), 4);
    browser.go(&url("/sweeps/browsed"));
    let shown = browser.table("runs");
    let headers = browser.headers("runs");
    let col = |name: &str| headers.iter().position(|h| h == name).expect(name);
    let (id_col, model_col, epochs_col, rate_col) = (
        col("run"),
        col("model.name"),
        col("train.epochs"),
        col("pass rate"),
    );
    let seen: Vec<Vec<String>> = shown
        .iter()
        .map(|r| {
            vec![
                r[id_col].trim_end_matches(" ★").to_string(),
                r[model_col].clone(),
                r[epochs_col].clone(),
                r[rate_col].clone(),
            ]
        })
        .collect();
    assert_eq!(seen, runs, "the runs table as shown");
    assert!(shown[0][id_col].ends_with('★'), "the baseline is starred");
    browser.screenshot("runs", &shots);

    // Sorting: a click on the run header sorts by id, a second click reverses it.
    let ids = |b: &Browser| -> Vec<String> {
        b.table("runs")
            .iter()
            .map(|r| r[id_col].trim_end_matches(" ★").to_string())
            .collect()
    };
    let mut sorted: Vec<String> = runs.iter().map(|r| r[0].clone()).collect();
    sorted.sort();
    browser.click("#runs thead th:nth-child(1)");
    assert_eq!(ids(&browser), sorted, "ascending by id");
    browser.click("#runs thead th:nth-child(1)");
    sorted.reverse();
    assert_eq!(ids(&browser), sorted, "descending by id");
    // A numeric column sorts as numbers.
    browser.click(&format!("#runs thead th:nth-child({})", epochs_col + 1));
    let epochs: Vec<String> = browser
        .table("runs")
        .iter()
        .map(|r| r[epochs_col].clone())
        .collect();
    assert_eq!(epochs, ["0", "0", "1", "2"]);

    // The toggle hides the axis that does not vary, and only it.
    assert!(headers.contains(&"train.lr".to_string()));
    browser.click("#differing");
    let after = browser.headers("runs");
    let hidden: Vec<&String> = headers.iter().filter(|h| !after.contains(h)).collect();
    assert_eq!(hidden, ["train.lr"], "{after:?}");
    assert!(browser
        .table("runs")
        .iter()
        .all(|r| r.len() == headers.len()));
    browser.screenshot("runs-differing-only", &shots);
    browser.click("#differing");
    assert_eq!(browser.headers("runs"), headers);

    // Filtering keeps the rows that mention the text.
    let third = runs[3][0].clone();
    browser.js(&format!(
        "const f = document.getElementById('filter'); f.value = '{third}';
         f.dispatchEvent(new Event('input')); return null;"
    ));
    assert_eq!(ids(&browser), [third]);

    // The form filters by axis value: the runs trained for 2 epochs (one), in a URL.
    browser.js("document.querySelector('select[name=\"train.epochs\"]').value = '2'; return null;");
    browser.click("form.filters button");
    browser.wait_for(
        "location.search.includes('train.epochs=2') && document.readyState === 'complete'",
    );
    let two: Vec<String> = runs
        .iter()
        .filter(|r| r[2] == "2")
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(ids(&browser), two);
    browser.screenshot("runs-filtered", &shots);

    // Curves: each trained run's line is named by its configuration in the legend.
    let all: Vec<&str> = runs.iter().map(|r| r[0].as_str()).collect();
    browser.go(&url(&format!("/curves?runs={}", all.join(","))));
    let legend = browser.js(
        "return Array.from(document.querySelectorAll('#plot svg text')).map(t => t.textContent);",
    );
    let legend: Vec<String> = serde_json::from_value(legend).unwrap();
    for (epochs, label) in [("1", "epochs 1"), ("2", "epochs 2")] {
        assert!(
            legend.iter().any(|t| t.contains(label)),
            "the {epochs}-epoch run's line is named: {legend:?}"
        );
    }
    let lines = browser
        .js("return document.querySelectorAll('#plot svg polyline, #plot svg path').length;");
    assert!(lines.as_u64().unwrap() >= 2, "{lines}");
    browser.screenshot("curves", &shots);

    // Compare: the keys that differ, and only those.
    browser.go(&url(&format!("/compare?runs={}", all.join(","))));
    let keys: BTreeSet<String> = browser
        .table("differing-keys")
        .iter()
        .map(|r| r[0].clone())
        .filter(|k| k != "pass rate")
        .collect();
    let configs: Vec<Vec<String>> = query(
        &db,
        "SELECT config_json FROM runs WHERE id IN (SELECT run_id FROM sweep_runs)",
    );
    let configs: Vec<Value> = configs
        .iter()
        .map(|c| serde_json::from_str(&c[0]).unwrap())
        .collect();
    let mut differing = BTreeSet::new();
    for (section, keys) in configs[0].as_object().unwrap() {
        for key in keys.as_object().unwrap().keys() {
            let values: BTreeSet<String> = configs
                .iter()
                .map(|c| c[section][key].to_string())
                .collect();
            if values.len() > 1 {
                differing.insert(format!("{section}.{key}"));
            }
        }
    }
    assert_eq!(keys, differing);
    assert!(keys.contains("train.epochs"));
    browser.screenshot("compare", &shots);

    // Examples: the pairs two runs judge differently, counted by kind of failure.
    let (a, b) = (&runs[0][0], &runs[3][0]);
    let discordant: Vec<Vec<String>> = query(
        &db,
        &format!(
            "SELECT x.example_id FROM eval_results x JOIN eval_results y
               ON y.dataset = x.dataset AND y.example_id = x.example_id
              AND y.evaluator = x.evaluator
             WHERE x.run_id = '{a}' AND y.run_id = '{b}' AND x.passed != y.passed
             ORDER BY x.example_id"
        ),
    );
    assert!(
        !discordant.is_empty(),
        "the sweep's runs disagree somewhere"
    );
    browser.go(&url(&format!("/runs/{a}?vs={b}")));
    let mut shown: Vec<Vec<String>> = browser
        .table("examples")
        .iter()
        .map(|r| vec![r[0].clone()])
        .collect();
    shown.sort();
    assert_eq!(shown, discordant);
    let by_kind: usize = browser
        .table("discordant")
        .iter()
        .map(|r| r[1].parse::<usize>().unwrap() + r[2].parse::<usize>().unwrap())
        .sum();
    assert_eq!(by_kind, discordant.len());
    browser.screenshot("examples-vs", &shots);

    // Filtering a run's examples by kind of verdict, through the form.
    browser.go(&url(&format!("/runs/{b}")));
    browser.js("document.querySelector('select[name=verdict]').value = 'pass'; return null;");
    browser.click("form.filters button");
    browser
        .wait_for("location.search.includes('verdict=pass') && document.readyState === 'complete'");
    let passes = browser.table("examples");
    let want: Vec<Vec<i64>> = query(
        &db,
        &format!("SELECT COUNT(*) FROM eval_results WHERE run_id = '{b}' AND verdict = 'pass'"),
    );
    assert_eq!(passes.len() as i64, want[0][0]);
    assert!(
        !passes.is_empty() && passes.iter().all(|r| r[4] == "pass"),
        "{passes:?}"
    );
    browser.screenshot("examples", &shots);
    browser.go(&url("/live"));
    let text = browser.js("return document.body.innerText;");
    assert!(text.as_str().unwrap().contains("No run is in progress"));
    browser.screenshot("live", &shots);

    drop(browser);
    drop(server);
    assert!(
        std::fs::read(&db).unwrap() == before,
        "the database changed"
    );
    for name in [
        "sweeps",
        "report",
        "runs",
        "curves",
        "compare",
        "examples-vs",
        "live",
    ] {
        assert!(d.join(format!("results/screenshots/{name}.png")).is_file());
    }
}
