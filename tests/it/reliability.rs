//! Crash and concurrency: SIGKILL at random points of a sweep must not lose or double a
//! row, and several `ablate run` processes on one database must train each run once.

use crate::WithoutAblateEnv;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rusqlite::Connection;

const BASE: &str = r#"
[model]
name = "tiny"

[data]
n_train = 48
n_test = 6
vocab_size = 512
max_seq_len = 128

[train]
lr = 3e-3
batch_size = 16

[eval]
max_new_tokens = 10
"#;

fn ablate_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ablate"));
    c.current_dir(dir)
        .args(args)
        .without_ablate_env()
        .stdin(Stdio::null());
    c
}

fn q(db: &Path, sql: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// Everything a finished sweep stores that does not depend on timing: run statuses, metric
/// rows without the timings, verdicts with their predictions, sweep membership.
pub(crate) fn content(db: &Path) -> Vec<String> {
    let c = Connection::open(db).unwrap();
    let mut out = Vec::new();
    for sql in [
        "SELECT id || ' ' || status FROM runs ORDER BY id",
        "SELECT run_id || ' ' || name || ' ' || split || ' ' || step || ' ' || quote(value)
         FROM metrics WHERE name NOT IN ('tokens_per_s', 'step_time_s') ORDER BY 1",
        "SELECT run_id || ' ' || example_id || ' ' || evaluator || ' ' || verdict || ' ' || prediction
         FROM eval_results ORDER BY 1",
        "SELECT sweep || ' ' || run_id || ' ' || position FROM sweep_runs ORDER BY 1",
        // The stages, shared or not, with their rows.
        "SELECT id || ' ' || status || ' ' || key_json FROM trainings ORDER BY 1",
        "SELECT training_id || ' ' || name || ' ' || split || ' ' || step || ' ' || quote(value)
         FROM training_metrics WHERE name NOT IN ('tokens_per_s', 'step_time_s') ORDER BY 1",
        "SELECT id || ' ' || training_id || ' ' || status FROM generations ORDER BY 1",
        "SELECT generation_id || ' ' || kind || ' ' || example_id || ' ' || prediction
         FROM predictions ORDER BY 1",
        "SELECT id || ' ' || generation_id || ' ' || evaluator || ' ' || status FROM verdict_sets ORDER BY 1",
        "SELECT verdict_set_id || ' ' || example_id || ' ' || verdict FROM verdicts ORDER BY 1",
        "SELECT run_id || ' ' || training_id || ' ' || generation_id FROM run_stages ORDER BY 1",
    ] {
        let mut s = c.prepare(sql).unwrap();
        out.extend(s.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap));
    }
    out
}

fn integrity(db: &Path) -> String {
    Connection::open(db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn four_processes_on_one_database_train_each_run_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let exps = d.join("experiments");
    std::fs::create_dir(&exps).unwrap();
    // Overlapping grids: 11 sweep rows, 7 distinct runs.
    let grids = [
        (
            "a",
            "\"train.epochs\" = [0, 1]\n\"train.clip_norm\" = [0.3, 1.0]",
        ),
        (
            "b",
            "\"train.epochs\" = [1]\n\"train.clip_norm\" = [0.3, 1.0, \"none\"]",
        ),
        (
            "c",
            "\"train.epochs\" = [1, 2]\n\"train.clip_norm\" = [1.0]",
        ),
        (
            "d",
            "\"train.epochs\" = [2]\n\"train.clip_norm\" = [0.3, 1.0]",
        ),
    ];
    for (name, grid) in grids {
        std::fs::write(
            exps.join(format!("{name}.toml")),
            format!("{BASE}\n[grid]\n{grid}\n"),
        )
        .unwrap();
    }
    let files: Vec<String> = grids
        .iter()
        .map(|(n, _)| format!("experiments/{n}.toml"))
        .collect();
    // Each process takes the files in another order, so they collide on every run.
    let children: Vec<_> = (0..4)
        .map(|i| {
            let mut order = files.clone();
            order.rotate_left(i);
            let mut args = vec!["run"];
            args.extend(order.iter().map(String::as_str));
            ablate_cmd(d, &args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("locked"), "{err}");
    }
    let db = d.join("results/ablate.db");
    assert_eq!(q(&db, "SELECT count(*) FROM runs"), 7);
    assert_eq!(q(&db, "SELECT count(*) FROM runs WHERE status = 'done'"), 7);
    assert_eq!(
        q(&db, "SELECT sum(attempts) FROM runs"),
        7,
        "a run was trained twice"
    );
    assert_eq!(q(&db, "SELECT count(*) FROM sweep_runs"), 11);
    // 3 steps an epoch: epochs 0 (x2), 1 (x3), 2 (x2) = 21 steps, 6 train metrics each.
    assert_eq!(
        q(
            &db,
            "SELECT count(*) FROM metrics WHERE split = 'train' AND step >= 0"
        ),
        21 * 6
    );
    assert_eq!(q(&db, "SELECT count(*) FROM eval_results"), 7 * 6);
    assert_eq!(integrity(&db), "ok");
    // Every process wrote every report, each with all of its runs done.
    for (name, _) in grids {
        let r = std::fs::read_to_string(d.join(format!("results/reports/{name}.md"))).unwrap();
        assert!(
            !r.contains("| running |") && !r.contains("| pending |"),
            "{r}"
        );
    }
}

/// Kills `ablate run` with SIGKILL until `kills` kills have landed mid-sweep, then lets it
/// finish; returns each kill as `trigger->last phase seen`. The kill moments cycle through
/// four kinds, each with a seeded random delay: a timer from the start (mostly training),
/// soon after the generation stage begins, as soon as the judge stage begins, and just
/// after a run finished (its rows and status being written).
fn run_with_kills(dir: &Path, kills: usize, seed: u64) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hit = Vec::new();
    let t0 = Instant::now();
    let mut attempt = 0usize;
    while hit.len() < kills {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "no progress: {hit:?}"
        );
        let trigger = ["timer", "generate", "judge", "run_finished"][attempt % 4];
        attempt += 1;
        let mut child = ablate_cmd(
            dir,
            &["run", "experiments/chaos.toml", "--json", "--no-report"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        // The last event seen tells which phase the kill interrupted.
        let last = Arc::new(Mutex::new(String::from("start")));
        let (seen_tx, seen_rx) = std::sync::mpsc::channel::<()>();
        let reader = {
            let last = Arc::clone(&last);
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    let phase = match v["event"].as_str().unwrap_or("") {
                        "phase" => v["phase"].as_str().unwrap_or("").to_string(),
                        // Resuming happens inside training.
                        "run_resumed" => "train".to_string(),
                        // Still the stage it ended (the next says where the run went).
                        "stage_finished" => continue,
                        other => other.to_string(),
                    };
                    if phase == trigger {
                        let _ = seen_tx.send(());
                    }
                    *last.lock().unwrap() = phase;
                }
            })
        };
        let delay = match trigger {
            "timer" => Duration::from_millis(rng.random_range(300..2500)),
            "generate" => Duration::from_millis(rng.random_range(0..250)),
            // Judging rules verdicts takes milliseconds: kill at once.
            "judge" => Duration::ZERO,
            _ => Duration::from_millis(rng.random_range(0..30)),
        };
        if trigger != "timer" {
            // Wait for the event (a timeout just kills wherever the sweep is).
            let _ = seen_rx.recv_timeout(Duration::from_secs(30));
        }
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        if finished {
            break; // the sweep is complete: nothing left to interrupt
        }
        hit.push(format!("{trigger}->{}", last.lock().unwrap()));
    }
    run_to_end(dir);
    hit
}

/// Runs the chaos sweep to its end without interruption.
fn run_to_end(dir: &Path) {
    let out = ablate_cmd(dir, &["run", "experiments/chaos.toml", "--no-report"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chaos_dir(text: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("experiments")).unwrap();
    std::fs::write(tmp.path().join("experiments/chaos.toml"), text).unwrap();
    let db = tmp.path().join("results/ablate.db");
    (tmp, db)
}

#[test]
fn sigkill_at_random_points_then_resume_gives_the_uninterrupted_database() {
    let text = format!(
        "{}\n[run]\ncheckpoint_every = 1\nval_every = 2\n[grid]\n\"train.epochs\" = [1, 2]\n\"train.clip_norm\" = [0.3, \"none\"]\n",
        BASE.replace("n_train = 48", "n_train = 320").replace("n_test = 6", "n_test = 24").replace("max_new_tokens = 10", "max_new_tokens = 24")
    );
    let (reference, ref_db) = chaos_dir(&text);
    run_to_end(reference.path());

    // Where a kill lands depends on timing: on a loaded machine a stage can finish
    // between the event and the kill. Each round is a fresh sweep killed at random points
    // and must end with the uninterrupted database; rounds go on (at most 4) until the
    // kills, all rounds together, landed in every stage.
    let covered = |hit: &[String]| {
        hit.len() >= 10
            && hit.iter().any(|p| p.ends_with("->train"))
            && hit.iter().any(|p| p.ends_with("->generate"))
            && hit.iter().any(|p| p.ends_with("->judge"))
            && hit.iter().any(|p| p.starts_with("run_finished->"))
    };
    let mut hit: Vec<String> = Vec::new();
    for round in 0..4u64 {
        let (chaos, db) = chaos_dir(&text);
        hit.extend(run_with_kills(chaos.path(), 12, 20261125 + round));
        assert_eq!(integrity(&db), "ok");
        let (a, b) = (content(&ref_db), content(&db));
        assert_eq!(a.len(), b.len(), "row counts differ (round {round})");
        let diff: Vec<_> = a.iter().zip(&b).filter(|(x, y)| x != y).take(6).collect();
        assert!(
            diff.is_empty(),
            "the resumed database differs from the uninterrupted one (round {round}): {diff:#?}"
        );
        // No run was lost or doubled.
        assert_eq!(q(&db, "SELECT count(*) FROM runs WHERE status = 'done'"), 4);
        assert_eq!(
            q(&db, "SELECT count(*) FROM (SELECT run_id, name, split, step FROM metrics GROUP BY 1, 2, 3, 4 HAVING count(*) > 1)"),
            0
        );
        if covered(&hit) {
            break;
        }
    }
    assert!(
        covered(&hit),
        "kills should land in each stage (train, generate, judge) and after a run's final \
         write, 10 or more in all: {hit:?}"
    );
}

#[test]
fn a_running_row_whose_pid_now_belongs_to_another_process_is_taken_over() {
    let (dir, db) = chaos_dir(BASE);
    run_to_end(dir.path());
    // As after a reboot mid-run: the rows say `running`, owned on this host by a PID that
    // is alive again (this test's own) but is another process (another boot, another
    // start time). Judged by PID alone, `run` would wait for it forever.
    let me = std::process::id();
    let host = ablate::exec::hostname();
    Connection::open(&db)
        .unwrap()
        .execute_batch(&format!(
            "UPDATE runs SET status = 'running', pid = {me}, host = '{host}', owner = 'another-boot:1';
             UPDATE trainings SET status = 'running', pid = {me}, host = '{host}', owner = 'another-boot:1';"
        ))
        .unwrap();
    let mut child = ablate_cmd(
        dir.path(),
        &["run", "experiments/chaos.toml", "--json", "--no-report"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(120) {
            child.kill().ok();
            panic!("`run` waited for a process that is not the row's owner");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(child.wait().unwrap().success(), "{out}");
    // Taken over: the run and its training ran again and are done.
    assert!(out.contains(r#""stage":"train""#), "{out}");
    assert_eq!(q(&db, "SELECT count(*) FROM runs WHERE status = 'done'"), 1);
    assert_eq!(
        q(&db, "SELECT count(*) FROM trainings WHERE status = 'done'"),
        1
    );
    // The owner is now this run's process, known by more than its PID.
    assert_eq!(
        q(&db, "SELECT count(*) FROM runs WHERE owner LIKE '%:%'"),
        1
    );
}

/// A successful ablate command in `dir`, and its peak resident set size in kB (GNU time).
fn peak_rss(dir: &Path, args: &[&str]) -> (std::process::Output, u64) {
    peak_rss_to(dir, args, Stdio::piped())
}

/// [`peak_rss`], its standard output sent to `stdout`.
fn peak_rss_to(dir: &Path, args: &[&str], stdout: Stdio) -> (std::process::Output, u64) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kb=%M"])
        .arg(env!("CARGO_BIN_EXE_ablate"))
        .args(args)
        .current_dir(dir)
        .without_ablate_env()
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .expect("GNU time (Debian's `time` package) runs ablate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let kb: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kb="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no maxrss in {stderr}"));
    (out, kb)
}

/// `plan` makes, previews and prints a grid's runs a chunk at a time: 10^5 runs take
/// under 150 MB, text or JSON (holding them took 492 MB; 10^6 took 5.4 GB and take 564 MB).
#[test]
fn plan_of_a_hundred_thousand_runs_stays_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let values = |v: &[&str]| format!("[{}]", v.join(", "));
    let ten: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
    let lrs = [
        "1e-4", "2e-4", "3e-4", "4e-4", "5e-4", "6e-4", "7e-4", "8e-4", "9e-4", "1e-3",
    ];
    let clips = [
        "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0",
    ];
    let text = format!(
        "[experiment]\nname = \"big\"\n[model]\nname = \"tiny\"\n\
         [data]\nn_train = 48\nn_test = 6\nvocab_size = 512\nmax_seq_len = 128\n[grid]\n\
         \"train.seed\" = {}\n\"train.lr\" = {}\n\"train.clip_norm\" = {}\n\
         \"train.batch_size\" = {}\n\"eval.max_new_tokens\" = {}\n",
        values(&ten),
        values(&lrs),
        values(&clips),
        values(&ten),
        values(&ten),
    );
    std::fs::write(dir.path().join("big.toml"), text).unwrap();
    let (out, kb) = peak_rss(dir.path(), &["plan", "big.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("big (big.toml): 100000 runs, 100000 to run"),
        "{}",
        &text[..200.min(text.len())]
    );
    assert_eq!(
        text.lines().filter(|l| l.contains("pending")).count(),
        100_000
    );
    assert!(kb < 150_000, "text: {kb} kB peak");
    // 330 MB of JSON, not kept: its form is `plan --json`'s own tests' business.
    let (_, kb) = peak_rss_to(dir.path(), &["plan", "big.toml", "--json"], Stdio::null());
    assert!(kb < 150_000, "--json: {kb} kB peak");
}

/// `ablate query` writes rows as it reads them: two million rows take a few MB in every
/// output format (whole results took 1.7 GB to 8.8 GB per 10 million rows before), and a
/// reader that stops early ends it quietly.
#[test]
fn query_streams_a_large_result_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ablate.db");
    ablate::store::Store::open(&db).unwrap();
    let sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) \
               SELECT x, 'row ' || x AS label FROM c";
    for format in [None, Some("--csv"), Some("--json")] {
        let mut args = vec!["--db", db.to_str().unwrap(), "query", sql];
        args.extend(format);
        let (out, kb) = peak_rss(dir.path(), &args);
        assert!(kb < 100_000, "{format:?}: {kb} kB peak");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("row 2000000"), "{format:?}");
        if format == Some("--json") {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v.as_array().unwrap().len(), 2_000_000);
        }
    }
    // `| head`: the reader goes away; no error, no panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .args(["--db", db.to_str().unwrap(), "query", sql, "--csv"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .without_ablate_env()
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An archived database in a read-only folder, where SQLite cannot make the `-shm` file a
/// WAL database wants, is still read by every read command (opened immutable), and left
/// byte for byte as it was. As root, which may write anywhere, the commands run as
/// `nobody` (setpriv), who may not write the folder.
#[test]
fn a_database_in_a_read_only_folder_is_read_by_every_read_command() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("archived.toml"),
        "[experiment]\nname = \"archived\"\n[model]\nname = \"tiny\"\n[data]\nn_train = 48\n\
         n_test = 4\nvocab_size = 512\nmax_seq_len = 128\n[train]\nepochs = 0\n[eval]\n\
         max_new_tokens = 4\n",
    )
    .unwrap();
    let made = d.join("results/ablate.db");
    let out = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .args(["run", "archived.toml", "--db", made.to_str().unwrap()])
        .current_dir(d)
        .without_ablate_env()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Checkpointed and closed: no -wal or -shm travels with the archive.
    let c = Connection::open(&made).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    drop(c);
    let archive = d.join("archive");
    std::fs::create_dir(&archive).unwrap();
    let db = archive.join("ablate.db");
    std::fs::copy(&made, &db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = std::fs::read(&db).unwrap();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let command = |args: &[&str]| {
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_ablate"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_ablate"))
        };
        c.arg("--db")
            .arg(&db)
            .args(args)
            .current_dir(&archive)
            .without_ablate_env();
        c
    };
    let run = |args: &[&str]| command(args).output().unwrap();
    for args in [
        &["query", "SELECT COUNT(*) AS n FROM runs"][..],
        &["status"],
        &["export", "archived"],
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.trim().is_empty(), "{args:?}");
    }
    assert!(
        String::from_utf8_lossy(&run(&["query", "SELECT COUNT(*) AS n FROM runs"]).stdout)
            .contains('1')
    );
    // The dashboard reads it there too.
    {
        use std::io::BufRead;
        let mut child = command(&["serve", "--addr", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let page = ureq::get(&format!("{}sweeps/archived", line.trim()))
            .call()
            .map(|r| r.into_string().unwrap());
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let page = page.unwrap_or_else(|e| {
            panic!(
                "serve: {e} ({line:?}) {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(
            page.contains("archived") && page.contains("/runs/"),
            "{page}"
        );
    }
    assert!(std::fs::read(&db).unwrap() == before, "the archive changed");
    let beside: Vec<_> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["ablate.db"], "nothing was written beside it");
    // A log with changes beside it cannot be read there: refused, not silently ignored.
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        archive.join("ablate.db-wal"),
        b"changes not yet in the database",
    )
    .unwrap();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o555)).unwrap();
    let out = run(&["query", "SELECT COUNT(*) AS n FROM runs"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("write-ahead log")
            && stderr.contains("cannot be read in this read-only folder"),
        "{stderr}"
    );
    assert!(std::fs::read(&db).unwrap() == before);
    // So that the temporary folder can be removed.
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o755)).unwrap();
}
