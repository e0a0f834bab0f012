//! `ablate serve`: a read-only web view of the results database. Pages are rendered on the
//! server from the same numbers the reports use (minijinja, plotters); a few lines of
//! script sort and filter tables, and every page reads fine without it.
//!
//! Safety: the database is opened read-only (SQLite refuses writes), nothing in a URL is
//! run as SQL (ids are checked, and bound as parameters like names), files are served only
//! from the reports folder (plain names, resolved to real paths inside it), and a bad URL
//! is a 404 page.
//! Pages are rendered one at a time (one database connection); connections are served by
//! axum on tokio (`http`), so an idle keep-alive socket never holds up a request.

mod http;
mod plot;
mod tables;

pub use http::serve;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{context, Environment};
use serde::Serialize;
use serde_json::Value;

use crate::report::{self, ReportOptions};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{0}: written by an older ablate; `ablate report` (or any command that writes) \
         migrates it, and serve then reads it (serve itself never writes)"
    )]
    OldSchema(String),
    #[error("{0}: not an ablate results database (it has no `runs` table); name one with --db")]
    NotAblate(String),
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: String, message: String },
}

/// One HTTP answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

const HTML: &str = "text/html; charset=utf-8";

impl Page {
    fn html(body: String) -> Page {
        Page {
            status: 200,
            content_type: HTML,
            body: body.into_bytes(),
        }
    }
}

pub struct Site {
    store: Store,
    /// `<results>/reports`, the only folder files are served from.
    reports: PathBuf,
    env: Environment<'static>,
    db_label: String,
}

/// Rows shown on one examples page at most.
const MAX_EXAMPLES: usize = 2000;

impl Site {
    /// Opens `db` read-only; a database of an older schema is refused (migrating writes).
    pub fn open(db: &Path) -> Result<Site, ServeError> {
        let store = Store::open_read_only(db)?;
        if !store.is_current()? {
            let (_, tables) = store.query(
                "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND name = 'runs'",
            )?;
            return Err(if tables[0][0] == serde_json::json!(0) {
                ServeError::NotAblate(db.display().to_string())
            } else {
                ServeError::OldSchema(db.display().to_string())
            });
        }
        let mut env = Environment::new();
        for (name, text) in [
            ("base.html.j2", include_str!("templates/base.html.j2")),
            ("sweeps.html.j2", include_str!("templates/sweeps.html.j2")),
            ("runs.html.j2", include_str!("templates/runs.html.j2")),
            (
                "examples.html.j2",
                include_str!("templates/examples.html.j2"),
            ),
            ("compare.html.j2", include_str!("templates/compare.html.j2")),
            ("curves.html.j2", include_str!("templates/curves.html.j2")),
            ("live.html.j2", include_str!("templates/live.html.j2")),
            ("report.html.j2", include_str!("templates/report.html.j2")),
            ("error.html.j2", include_str!("templates/error.html.j2")),
        ] {
            env.add_template(name, text)
                .expect("the built-in pages parse");
        }
        report::register_filters(&mut env);
        let results = db.parent().unwrap_or(Path::new("."));
        Ok(Site {
            store,
            reports: results.join("reports"),
            env,
            db_label: db.display().to_string(),
        })
    }

    /// The page for a request target (`/path?query`), never panicking on any input.
    pub fn respond(&self, target: &str) -> Page {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let q = parse_query(query);
        let Some(segments) = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect::<Option<Vec<String>>>()
        else {
            return self.error(400, "The address is not valid UTF-8.");
        };
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let result = match segs.as_slice() {
            [] => self.sweeps(),
            ["sweeps.csv"] => self.sweeps_csv(),
            ["sweeps", name] => match name.strip_suffix(".csv") {
                Some(name) => self.sweep_csv(name, &q),
                None => self.runs(name, &q),
            },
            ["runs", id] => match id.strip_suffix(".csv") {
                Some(id) => self.examples_csv(id, &q),
                None => self.examples(id, &q),
            },
            ["compare"] => self.compare(&q),
            ["compare.csv"] => self.compare_csv(&q),
            ["curves"] => self.curves(&q),
            ["live"] => self.live(),
            ["live.csv"] => self.live_csv(),
            ["reports", name] if !name.ends_with(".md") => self.report_page(name),
            ["reports", rest @ ..] => self.report_file(rest),
            _ => Err(Miss::NotFound(format!("No page at {path}."))),
        };
        match result {
            Ok(page) => page,
            Err(Miss::NotFound(m)) => self.error(404, &m),
            Err(Miss::Bad(m)) => self.error(400, &m),
            Err(Miss::Failed(m)) => self.error(500, &m),
        }
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<Page, Miss> {
        let t = self.env.get_template(name).expect("built-in page");
        let ctx = context! { db => self.db_label, ..ctx };
        t.render(ctx)
            .map(Page::html)
            .map_err(|e| Miss::Failed(format!("rendering {name}: {e}")))
    }

    fn error(&self, status: u16, message: &str) -> Page {
        let body = self
            .env
            .get_template("error.html.j2")
            .and_then(|t| t.render(context! { code => status, message, db => self.db_label }))
            .unwrap_or_else(|_| message.to_string());
        Page {
            status,
            content_type: HTML,
            body: body.into_bytes(),
        }
    }

    fn rows(&self, sql: &str) -> Result<Vec<Vec<Value>>, Miss> {
        self.store
            .query(sql)
            .map(|(_, rows)| rows)
            .map_err(|e| Miss::Failed(e.to_string()))
    }

    fn sweeps(&self) -> Result<Page, Miss> {
        let sweeps = self.sweep_list()?;
        self.render("sweeps.html.j2", context! { sweeps })
    }

    fn sweep_list(&self) -> Result<Vec<Sweep>, Miss> {
        let rows = self.rows(
            "SELECT s.name, s.description, s.updated_at, COUNT(r.id),
                    COALESCE(SUM(r.status = 'done'), 0),
                    COALESCE(SUM(r.status IN ('failed', 'diverged')), 0),
                    COALESCE(SUM(r.status = 'running'), 0),
                    COALESCE(SUM(r.status IN ('pending', 'interrupted')), 0)
             FROM sweeps s LEFT JOIN sweep_runs sr ON sr.sweep = s.name
             LEFT JOIN runs r ON r.id = sr.run_id
             GROUP BY s.name ORDER BY s.updated_at DESC, s.name",
        )?;
        let sweeps = rows
            .into_iter()
            .map(|r| {
                let name = text(&r[0]);
                Sweep {
                    report: safe_name(&name) && self.reports.join(format!("{name}.md")).is_file(),
                    name,
                    description: text(&r[1]),
                    updated_at: text(&r[2]),
                    runs: int(&r[3]),
                    done: int(&r[4]),
                    failed: int(&r[5]),
                    running: int(&r[6]),
                    pending: int(&r[7]),
                }
            })
            .collect();
        Ok(sweeps)
    }

    fn sweep_data(&self, name: &str) -> Result<report::ReportData, Miss> {
        let opts = ReportOptions {
            bootstrap_iters: 500,
            ..ReportOptions::default()
        };
        report::collect(&self.store, name, &opts).map_err(|e| match e {
            report::ReportError::UnknownSweep(_) => Miss::NotFound(format!("No sweep {name}.")),
            e => Miss::Failed(e.to_string()),
        })
    }

    fn runs(&self, name: &str, q: &BTreeMap<String, String>) -> Result<Page, Miss> {
        let mut data = self.sweep_data(name)?;
        let filters = filter_runs(&mut data, q);
        // The page's own filters, for its CSV link.
        let query: BTreeMap<&str, &str> = filters
            .iter()
            .filter(|f| !f.chosen.is_empty())
            .map(|f| (f.name.as_str(), f.chosen.as_str()))
            .collect();
        // An axis whose value is the same in every run: hidden by the toggle.
        let same: Vec<u8> = (0..data.axes.len())
            .map(|i| {
                let first = data.rows.first().map(|r| &r.axis_values[i]);
                data.rows.iter().all(|r| Some(&r.axis_values[i]) == first) as u8
            })
            .collect();
        let run_ids: Vec<&str> = data.rows.iter().map(|r| r.run_id.as_str()).collect();
        // Each run's stages: its training, its generation, its verdict sets done of all.
        let stages: BTreeMap<String, String> = self
            .store
            .sweep_stages(name)
            .map_err(|e| Miss::Failed(e.to_string()))?
            .into_iter()
            .map(|r| {
                let line = format!(
                    "train {} · generate {} · judge {} of {}",
                    r.training, r.generation, r.verdict_sets_done, r.verdict_sets
                );
                (r.run_id, line)
            })
            .collect();
        self.render(
            "runs.html.j2",
            context! {
                sweep => name, description => data.description, axes => data.axes,
                rows => data.rows, same, run_ids, comparisons => data.comparisons, stages,
                filters, query,
            },
        )
    }

    /// A run id from a URL: hex only, resolved as a unique prefix.
    fn run_id(&self, id: &str) -> Result<String, Miss> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Miss::NotFound(format!("{id:?} is not a run id.")));
        }
        report::resolve_run(&self.store, id).map_err(|e| Miss::NotFound(e.to_string()))
    }

    fn verdict_rows(&self, id: &str) -> Result<Vec<Example>, Miss> {
        let rows = self
            .store
            .examples(id)
            .map_err(|e| Miss::Failed(e.to_string()))?;
        Ok(rows
            .into_iter()
            .map(|r| Example {
                dataset: r.verdict.dataset,
                example_id: r.verdict.example_id,
                category: r.verdict.category,
                evaluator: r.verdict.evaluator,
                verdict: r.verdict.verdict,
                passed: r.verdict.passed,
                prediction: r.prediction,
                gold: r.gold,
                other_verdict: None,
                other_passed: None,
            })
            .collect())
    }

    /// A run's examples as its page shows them: filtered by `q`, and against `q["vs"]`
    /// only the discordant ones, with their counts by kind of failure.
    fn example_view(&self, id: &str, q: &BTreeMap<String, String>) -> Result<ExampleView, Miss> {
        let id = self.run_id(id)?;
        let status = self
            .store
            .run_info(&id)
            .map_err(|e| Miss::Failed(e.to_string()))?
            .map(|i| i.status)
            .unwrap_or_default();
        let mut all = self.verdict_rows(&id)?;
        let pick = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        let distinct = |f: fn(&Example) -> &str| {
            let mut v: Vec<String> = all.iter().map(|e| f(e).to_string()).collect();
            v.sort();
            v.dedup();
            v
        };
        let (verdicts, evaluators, categories, datasets) = (
            distinct(|e| &e.verdict),
            distinct(|e| &e.evaluator),
            distinct(|e| &e.category),
            distinct(|e| &e.dataset),
        );
        // Against another run: the examples they judge differently (the discordant pairs
        // of the McNemar test), grouped by the kind of failure on the failing side.
        let other = match pick("vs") {
            "" => None,
            vs => Some(self.run_id(vs)?),
        };
        let mut discordant = None;
        if let Some(other) = &other {
            let theirs: BTreeMap<(String, String, String), (String, bool)> = self
                .verdict_rows(other)?
                .into_iter()
                .map(|e| {
                    (
                        (e.evaluator, e.dataset, e.example_id),
                        (e.verdict, e.passed),
                    )
                })
                .collect();
            let mut kinds: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            all.retain_mut(|e| {
                let key = (e.evaluator.clone(), e.dataset.clone(), e.example_id.clone());
                let Some((v, p)) = theirs.get(&key) else {
                    return false;
                };
                if *p == e.passed {
                    return false;
                }
                if e.passed {
                    kinds.entry(v.clone()).or_default().0 += 1;
                } else {
                    kinds.entry(e.verdict.clone()).or_default().1 += 1;
                }
                e.other_verdict = Some(v.clone());
                e.other_passed = Some(*p);
                true
            });
            discordant = Some(
                kinds
                    .into_iter()
                    .map(|(kind, (fixed_here, fixed_there))| Kind {
                        kind,
                        fixed_here,
                        fixed_there,
                    })
                    .collect(),
            );
        }
        let filters: BTreeMap<String, String> = ["verdict", "evaluator", "category", "dataset"]
            .into_iter()
            .map(|k| (k.to_string(), pick(k).to_string()))
            .collect();
        all.retain(|e| {
            [
                ("verdict", &e.verdict),
                ("evaluator", &e.evaluator),
                ("category", &e.category),
                ("dataset", &e.dataset),
            ]
            .iter()
            .all(|(k, v)| filters[*k].is_empty() || filters[*k] == v.as_str())
        });
        Ok(ExampleView {
            id,
            status,
            examples: all,
            verdicts,
            evaluators,
            categories,
            datasets,
            filters,
            other,
            discordant,
        })
    }

    fn examples(&self, id: &str, q: &BTreeMap<String, String>) -> Result<Page, Miss> {
        let mut v = self.example_view(id, q)?;
        let truncated = v.examples.len() > MAX_EXAMPLES;
        v.examples.truncate(MAX_EXAMPLES);
        // The page's own query (its filters and `vs`), for its tables' CSV links.
        let query: BTreeMap<&str, &str> = v
            .filters
            .iter()
            .map(|(k, f)| (k.as_str(), f.as_str()))
            .chain(v.other.as_deref().map(|o| ("vs", o)))
            .filter(|(_, f)| !f.is_empty())
            .collect();
        self.render(
            "examples.html.j2",
            context! {
                run_id => v.id, status => v.status, examples => v.examples, truncated,
                verdicts => v.verdicts, evaluators => v.evaluators, categories => v.categories,
                datasets => v.datasets, filters => v.filters, other => v.other,
                discordant => v.discordant, query,
            },
        )
    }

    fn run_list(&self, q: &BTreeMap<String, String>) -> Result<Vec<String>, Miss> {
        let ids: Vec<String> = q
            .get("runs")
            .map(|s| {
                s.split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if ids.is_empty() {
            return Err(Miss::Bad("Name the runs: ?runs=<id>,<id>".into()));
        }
        if ids.len() > 200 {
            return Err(Miss::Bad("At most 200 runs at once.".into()));
        }
        ids.iter().map(|id| self.run_id(id)).collect()
    }

    fn compare(&self, q: &BTreeMap<String, String>) -> Result<Page, Miss> {
        let ids = self.run_list(q)?;
        if ids.len() < 2 {
            return Err(Miss::Bad("Compare needs two runs or more.".into()));
        }
        let cmp = report::compare_runs(&self.store, &ids, &ReportOptions::default())
            .map_err(|e| Miss::Failed(e.to_string()))?;
        self.render("compare.html.j2", context! { cmp, runs => ids.join(",") })
    }

    fn curves(&self, q: &BTreeMap<String, String>) -> Result<Page, Miss> {
        let ids = self.run_list(q)?;
        let metric = q.get("metric").map(String::as_str).unwrap_or("loss");
        let Some(&(name, split)) = plot::METRICS.iter().find(|m| plot::key(m) == metric) else {
            return Err(Miss::Bad(format!("No metric {metric:?}.")));
        };
        let smooth: f64 = q
            .get("smooth")
            .and_then(|s| s.parse().ok())
            .filter(|s: &f64| (0.0..1.0).contains(s))
            .unwrap_or(0.0);
        let log = q.get("log").is_some_and(|v| v == "1");
        let mut series = Vec::new();
        for (k, id) in ids.iter().enumerate() {
            let points = self
                .store
                .series(id, name, split)
                .map_err(|e| Miss::Failed(e.to_string()))?;
            // Named and coloured as its sweep's report names and colours it (a run of no
            // sweep: by its id and its place in the list).
            let (label, colour) = self.legend(id)?.unwrap_or_else(|| (id.clone(), k));
            series.push(plot::Curve {
                run_id: id.clone(),
                label,
                colour,
                points,
            });
        }
        plot::distinct_colours(&mut series);
        let svg =
            plot::curves(&series, &plot::key(&(name, split)), smooth, log).map_err(Miss::Failed)?;
        let metrics: Vec<String> = plot::METRICS.iter().map(plot::key).collect();
        self.render(
            "curves.html.j2",
            context! { runs => ids, metric, metrics, smooth, log, svg },
        )
    }

    /// A run's legend label and colour, as its sweep's report has them: its axis values in
    /// the sweep's axis order, and its position in the sweep (the first sweep, by name,
    /// that has it).
    fn legend(&self, id: &str) -> Result<Option<(String, usize)>, Miss> {
        let failed = |e: crate::store::StoreError| Miss::Failed(e.to_string());
        let Some((sweep, position, axes_json)) = self.store.sweep_of(id).map_err(failed)? else {
            return Ok(None);
        };
        let axes = self
            .store
            .sweep_meta(&sweep)
            .map_err(failed)?
            .map(|(_, _, axes)| axes)
            .unwrap_or_default();
        let values: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&axes_json).unwrap_or_default();
        let shown: Vec<String> = axes
            .iter()
            .map(|a| crate::plan::display_value(values.get(a)))
            .collect();
        Ok(Some((
            crate::report::plots::run_label(id, &axes, &shown),
            position,
        )))
    }

    fn live(&self) -> Result<Page, Miss> {
        let runs: Vec<minijinja::Value> = self
            .store
            .progress()
            .map_err(|e| Miss::Failed(e.to_string()))?
            .into_iter()
            .map(|p| {
                context! {
                    run_id => p.run_id, started_at => p.started_at, host => p.host,
                    step => p.step, total => p.total_steps, loss => p.loss,
                    step_time => p.step_time_s, eta => p.eta_s().map(crate::report::format::duration),
                }
            })
            .collect();
        self.render("live.html.j2", context! { runs })
    }

    /// `/reports/<sweep>`: the sweep's markdown report as HTML, its tables as tables and
    /// its plots as images (their relative links resolve under `/reports/<sweep>/`). HTML
    /// written in the markdown is shown as text, not run.
    fn report_page(&self, sweep: &str) -> Result<Page, Miss> {
        use pulldown_cmark::{Event, Options, Parser};
        let md = self.report_file(&[&format!("{sweep}.md")])?;
        let text = String::from_utf8_lossy(&md.body);
        let events = Parser::new_ext(&text, Options::ENABLE_TABLES).map(|e| match e {
            Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
            e => e,
        });
        let mut html = String::new();
        pulldown_cmark::html::push_html(&mut html, events);
        self.render("report.html.j2", context! { sweep, html })
    }

    /// `/reports/<sweep>.md` or `/reports/<sweep>/<plot>.svg`: files of the reports
    /// folder only, by plain names, resolved inside it.
    fn report_file(&self, parts: &[&str]) -> Result<Page, Miss> {
        let missing = || Miss::NotFound("No such report file.".into());
        if parts.is_empty() || parts.len() > 2 || !parts.iter().all(|p| safe_name(p)) {
            return Err(missing());
        }
        let content_type = match parts.last().and_then(|p| p.rsplit_once('.')) {
            Some((_, "md")) if parts.len() == 1 => "text/markdown; charset=utf-8",
            Some((_, "svg")) if parts.len() == 2 => "image/svg+xml",
            _ => return Err(missing()),
        };
        let root = self.reports.canonicalize().map_err(|_| missing())?;
        let file = parts
            .iter()
            .fold(root.clone(), |p, s| p.join(s))
            .canonicalize()
            .map_err(|_| missing())?;
        if !file.starts_with(&root) || !file.is_file() {
            return Err(missing());
        }
        let body = std::fs::read(&file).map_err(|_| missing())?;
        Ok(Page {
            status: 200,
            content_type,
            body,
        })
    }
}

/// Why a page could not be made.
enum Miss {
    NotFound(String),
    Bad(String),
    Failed(String),
}

#[derive(Serialize)]
struct Sweep {
    name: String,
    description: String,
    updated_at: String,
    runs: i64,
    done: i64,
    failed: i64,
    running: i64,
    pending: i64,
    report: bool,
}

/// One of the runs page's filters: an axis (its name as the table heads it) or `status`.
#[derive(Serialize)]
struct RunFilter {
    name: String,
    /// Its values over all the sweep's runs, as the table shows them.
    choices: Vec<String>,
    /// The value asked for in the URL, or empty for any.
    chosen: String,
}

/// Keeps the runs whose axis values and status are those `q` asks for
/// (`?train.lr=0.001&status=done`, values as the table shows them); the filters with
/// their choices, for the page's form.
fn filter_runs(data: &mut report::ReportData, q: &BTreeMap<String, String>) -> Vec<RunFilter> {
    let n_axes = data.axes.len();
    let names: Vec<String> = data
        .axes
        .iter()
        .cloned()
        .chain(["status".to_string()])
        .collect();
    let filters: Vec<RunFilter> = names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let mut choices: Vec<String> = data
                .rows
                .iter()
                .map(|r| filter_value(n_axes, r, i).to_string())
                .collect();
            choices.sort();
            choices.dedup();
            let chosen = q.get(&name).cloned().unwrap_or_default();
            RunFilter {
                name,
                choices,
                chosen,
            }
        })
        .collect();
    data.rows.retain(|r| {
        filters
            .iter()
            .enumerate()
            .all(|(i, f)| f.chosen.is_empty() || f.chosen == filter_value(n_axes, r, i))
    });
    filters
}

/// What filter `i` reads of a run: axis `i`'s value as the table shows it, and past the
/// axes the status.
fn filter_value(n_axes: usize, r: &report::RunRow, i: usize) -> &str {
    if i < n_axes {
        &r.axis_values[i]
    } else {
        &r.status
    }
}

/// A run's examples page before it is cut to `MAX_EXAMPLES` rows.
struct ExampleView {
    id: String,
    status: String,
    examples: Vec<Example>,
    verdicts: Vec<String>,
    evaluators: Vec<String>,
    categories: Vec<String>,
    datasets: Vec<String>,
    filters: BTreeMap<String, String>,
    other: Option<String>,
    discordant: Option<Vec<Kind>>,
}

/// Discordant examples of one kind of failure: those only this run passes (the other
/// failed so) and those only the other passes (this one failed so).
#[derive(Serialize)]
struct Kind {
    kind: String,
    fixed_here: usize,
    fixed_there: usize,
}

#[derive(Debug, Clone, Serialize)]
struct Example {
    dataset: String,
    example_id: String,
    category: String,
    evaluator: String,
    verdict: String,
    passed: bool,
    prediction: String,
    gold: String,
    other_verdict: Option<String>,
    other_passed: Option<bool>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// A file name a URL may name: no separators, no leading dot, no control characters.
fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('.')
        && !s.contains(['/', '\\', '\0'])
        && !s.chars().any(char::is_control)
}

/// `%xx` decoded; None when the bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let k = percent_decode(&k.replace('+', " "))?;
            let v = percent_decode(&v.replace('+', " "))?;
            (!k.is_empty()).then_some((k, v))
        })
        .collect()
}
