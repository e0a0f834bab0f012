//! Command-line interface: clap definitions and one function per subcommand. Exit codes
//! are documented in the README and in `--help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::{self, ConfigError, Override};
use crate::exec::{self, ExecOptions, Reporter};
use crate::plan::{self, Plan};
use crate::report::{self, TemplateSource};
use crate::store::{Store, StoreError};
use crate::ui;

mod cluster;

/// The smoke sweep, built in so that `ablate run` works from any directory.
pub const SMOKE: &str = include_str!("../../experiments/smoke.toml");

pub mod exit {
    /// Every run succeeded (or was already done).
    pub const OK: u8 = 0;
    /// At least one run failed or diverged.
    pub const RUNS_FAILED: u8 = 1;
    /// Bad input: an invalid experiment file, flag, SQL statement or missing database.
    pub const USER_ERROR: u8 = 2;
    /// An internal error: the database or the file system failed.
    pub const INTERNAL: u8 = 3;
    /// The scheduler failed: sbatch or squeue is missing or refused (`ablate submit --slurm`).
    pub const SCHEDULER: u8 = 4;
    /// Interrupted by Ctrl-C (or SIGTERM, as Slurm sends on scancel); the database is
    /// consistent and `ablate run` resumes.
    pub const INTERRUPTED: u8 = 130;
}

const AFTER_HELP: &str = "\
Exit codes: 0 success · 1 a run failed or diverged (collect: a task failed or is missing) \
· 2 bad input (experiment file, flag, SQL) · 3 internal error (database, file system) \
· 4 the scheduler failed (sbatch, squeue) · 130 interrupted (resume with the same command)

Examples:
  ablate run                              # the built-in CPU smoke sweep
  ablate plan experiments/                # every experiment, with run status
  ablate run experiments/smoke.toml --jobs 2 --set train.lr=1e-3
  ablate run experiments/paper/scaling.toml --devices 0,1,2,3
  ablate submit --slurm experiments/paper/ --partition gpu --time 04:00:00
  ablate status && ablate collect
  ablate report experiments/smoke.toml    # results/reports/smoke.md
  ablate rescore smoke --evaluator rules  # re-judge stored predictions, no model
  ablate query \"SELECT * FROM run_summary\" --csv
  ablate score bfcl --questions Q.json --answers A.json --predictions P.jsonl";

#[derive(Debug, Parser)]
#[command(
    name = "ablate",
    version,
    about = "Declarative experiment and ablation runner for fine-tuning small language models on tool calling",
    long_about = "TOML experiment files go in; training and evaluation runs come out; every metric \
                  lands in SQLite and markdown reports answer the sweep's questions.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Results database; run artifacts and reports go beside it.
    #[arg(
        long,
        global = true,
        env = "ABLATE_DB",
        default_value = "results/ablate.db"
    )]
    pub db: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Inputs {
    /// Experiment files or directories of them (default: experiments/smoke.toml, or the
    /// built-in smoke sweep when there is no such file).
    pub paths: Vec<PathBuf>,
    /// Override a config key in every run, e.g. --set train.lr=1e-3 (repeatable; the
    /// highest layer, above ABLATE_* environment variables such as ABLATE_TRAIN__LR).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<Override>,
    /// Refuse a grid of more runs than this (counted before expanding it).
    #[arg(long, value_name = "N", default_value_t = plan::DEFAULT_MAX_RUNS)]
    pub max_runs: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Expand experiments into runs and show each run's id, axes and status. Starts nothing.
    Plan {
        #[command(flatten)]
        inputs: Inputs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run every pending run (done runs are skipped, also across sweeps), then write reports.
    Run {
        #[command(flatten)]
        inputs: Inputs,
        /// Runs to execute at the same time.
        #[arg(long, short = 'j', default_value_t = 1, conflicts_with = "devices")]
        jobs: usize,
        /// Pin runs to these GPUs, one run per device at a time (a run that `[[resources]]`
        /// gives n devices takes n), e.g. --devices 0,1,2,3.
        #[arg(long, value_delimiter = ',', value_name = "IDS")]
        devices: Option<Vec<usize>>,
        /// Print one JSON object per event on stdout instead of progress bars.
        #[arg(long)]
        json: bool,
        /// Do not write reports after the sweep.
        #[arg(long)]
        no_report: bool,
        /// Redo the done stages that other code produced (another git commit, or other
        /// uncommitted changes; `plan` lists them). By default nothing done reruns.
        #[arg(long)]
        rerun_stale: bool,
    },
    /// Submit the pending runs to Slurm as job arrays, one task per run.
    ///
    /// Writes an sbatch script and a manifest per array into <results>/slurm/<sweep>-<n>/
    /// and submits it. Each task runs `ablate task` and writes its run to its own shard
    /// database (<results>/shards/<run id>.db); `ablate collect` merges them. Runs that are
    /// done, queued or running are not submitted, so submitting again resubmits exactly the
    /// failed and missing ones; a requeued task resumes from its last checkpoint.
    #[command(
        after_help = "sbatch options come from the experiment's [slurm] table (partition, gres, time, mem,
        cpus_per_task, max_parallel, sbatch_args, setup, ablate); flags win.

        Examples:
  ablate submit --slurm experiments/paper/epochs.toml --partition gpu --time 02:00:00
          ablate submit --slurm --dry-run    # write and print the script, submit nothing"
    )]
    Submit {
        #[command(flatten)]
        inputs: Inputs,
        /// Submit to Slurm (the one launcher there is; required, so that it is explicit).
        #[arg(long, required = true)]
        slurm: bool,
        #[command(flatten)]
        flags: cluster::SlurmFlags,
        /// Write the scripts and print them; submit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print a JSON object with the submitted arrays.
        #[arg(long)]
        json: bool,
    },
    /// Run one task of a submitted array (what the sbatch script calls).
    Task {
        /// The array's manifest.json.
        manifest: PathBuf,
        /// Which task (default: $SLURM_ARRAY_TASK_ID).
        #[arg(long)]
        index: Option<usize>,
    },
    /// Merge finished Slurm tasks' shard databases into the results database, and list the
    /// tasks that failed or are missing. Running it again changes nothing.
    Collect {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show each run's state: pending, queued, running, done, failed, missing (from the
    /// database, the tasks' shards and squeue).
    Status {
        /// Sweeps (experiment names) to show; default: all.
        sweeps: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Render the report of each experiment into <results>/reports/<name>.md.
    Report {
        #[command(flatten)]
        inputs: Inputs,
        /// A template to use instead of the experiment's: a path, or a built-in name
        /// (sweep, epochs, stability, scaling, evaluators, generalization).
        #[arg(long)]
        template: Option<PathBuf>,
    },
    /// Write a sweep's runs with their axes and summary metrics as CSV (default) or JSON;
    /// or, with --tooleval DIR, the ToolBench episodes of a sweep's runs (or of one run) in
    /// ToolEval's converted-answer format, which StableToolBench's eval_pass_rate.py reads
    /// as it is: DIR/model_predictions_converted/<run id>/<group>.json and
    /// DIR/test_query_ids/<group>.json (pass DIR/model_predictions_converted as its
    /// --converted_answer_path, the run id as --reference_model, DIR/test_query_ids as
    /// --test_ids).
    #[command(
        after_help = "Examples:\n  ablate export smoke > smoke.csv\n  ablate export smoke --json | jq '.runs[] | {run_id, pass_rate}'\n  ablate export paper-generalization --tooleval tooleval/\n  ablate export 3f2a --tooleval tooleval/ --name opt350m-clip0.3"
    )]
    Export {
        /// The sweep (experiment name); with --tooleval also a run id (a unique prefix).
        sweep: String,
        /// CSV, one row per run, one column per axis (the default).
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        /// A JSON object with the sweep's axes and its runs (with --tooleval: what was
        /// written).
        #[arg(long)]
        json: bool,
        /// Write the runs' episodes for ToolEval under this folder.
        #[arg(long, value_name = "DIR", conflicts_with = "csv")]
        tooleval: Option<PathBuf>,
        /// With --tooleval and one run: the system name to write it under (default: the
        /// run id).
        #[arg(long, requires = "tooleval")]
        name: Option<String>,
    },
    /// Judge stored predictions again, without the model: each run's generation gets a
    /// verdict set of EVALUATOR at its current version (with --set eval.judge.* changed),
    /// unless that set is done already. A run that names the evaluator with the same
    /// settings takes the new set as its own. `ablate report` then shows what flipped.
    ///
    /// Examples:
    ///   ablate rescore cpu-evaluators --evaluator rules
    ///   ablate rescore 3f2a --evaluator llm_judge --set eval.judge.model=gpt-4o
    #[command(verbatim_doc_comment)]
    Rescore {
        /// Sweeps (experiment names) or run ids (unique prefixes) whose runs to re-score.
        #[arg(required = true)]
        targets: Vec<String>,
        /// rules, bfcl, episode or llm_judge.
        #[arg(long, value_parser = parse_evaluator)]
        evaluator: crate::config::Evaluator,
        /// Change a judge setting, e.g. --set eval.judge.model=gpt-4o (eval.judge.* only).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<Override>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare runs side by side, each against the first.
    ///
    /// Shows the config keys that differ, pass rates with intervals, and each run against
    /// the first on their shared test examples (paired bootstrap, exact McNemar,
    /// Holm-corrected).
    #[command(
        after_help = "Run ids may be abbreviated to any unique prefix.\n\nExample:\n  ablate compare 3a1a0859 b0388b55 b7ed434d"
    )]
    Compare {
        /// Two or more run ids (or unique prefixes); the first is the reference.
        #[arg(num_args = 2.., required = true)]
        runs: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download model repositories into the local Hugging Face cache (on a machine with
    /// internet, before a sweep runs where there is none; plan and run never download).
    /// Fetches config.json, the tokenizer files and one weight layout, then checks the
    /// snapshot as plan will. Honours HF_ENDPOINT, HF_HOME / HF_HUB_CACHE and HF_TOKEN.
    #[command(
        after_help = "Example:\n  ablate fetch facebook/opt-125m facebook/opt-350m facebook/opt-1.3b\n  \
        ablate plan experiments/paper    # finds them in the cache"
    )]
    Fetch {
        /// Repository ids, e.g. facebook/opt-350m.
        #[arg(required = true)]
        models: Vec<String>,
        /// A branch, tag or commit.
        #[arg(long, default_value = "main")]
        revision: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Look at data as the model sees it.
    #[command(subcommand)]
    Data(DataCommand),
    /// Score a model's predictions with an evaluator, outside any sweep.
    #[command(subcommand)]
    Score(ScoreCommand),
    /// People's verdicts on stored predictions, compared with every evaluator's.
    #[command(subcommand)]
    Labels(LabelsCommand),
    /// Browse the results database in a web browser (read-only).
    ///
    /// Pages: sweeps (with their question and run counts, and the markdown report), the
    /// runs of a sweep (filter by axis value and status, e.g. `?train.lr=0.001`; sortable;
    /// a toggle for only the columns that differ; paired tests against the baseline), a
    /// run's examples (filter by verdict, evaluator, category and dataset; `?vs=<run>` keeps
    /// the examples two runs judge differently, grouped by the kind of failure), curves of
    /// any runs overlaid (smoothing, log scale, grad-norm spikes), compare (differing
    /// config keys and paired tests), live (runs in progress, refreshed). Every table has
    /// a CSV link; every page a stable URL.
    ///
    /// The database is opened read-only and never written (one of an older schema is
    /// refused: `ablate report` migrates it); files are served from the reports folder
    /// beside it only. Binds to 127.0.0.1 unless told otherwise. Prints the address, then
    /// serves until interrupted.
    #[command(
        after_help = "Examples:\n  ablate serve                         # http://127.0.0.1:8765/\n  ablate serve --addr 127.0.0.1:0      # any free port; the first line printed is the address\n  ablate serve --db /archive/ablate.db # an archived database, even in a read-only folder"
    )]
    Serve {
        /// Address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:8765")]
        addr: String,
    },
    /// Run one read-only SQL statement against the results database.
    Query {
        /// The statement, e.g. "SELECT * FROM run_summary".
        sql: String,
        /// Print CSV.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        /// Print a JSON array of objects.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LabelsCommand {
    /// Import verdicts given by people: a CSV with a header, or JSONL, with the columns
    /// `run` (a run id or a unique prefix), `example` (the example id, as `eval_results`
    /// has it), `verdict` (pass/fail, true/false, 1/0, yes/no) and optionally `annotator`,
    /// `note`, and `dataset` (when a run's example ids repeat across datasets). The file is
    /// checked whole first: unknown runs or examples, bad verdicts and duplicates are all
    /// listed and nothing is imported (exit 2). Finished runs show the labels in
    /// eval_results as evaluator NAME, or NAME/annotator, so `ablate report` and the
    /// evaluator_agreement view compare them with the judge, rules and BFCL (Cohen's kappa,
    /// and between annotators). Importing again replaces a label of the same run, example
    /// and annotator.
    #[command(
        after_help = "Example:\n  ablate labels import labels.csv --evaluator human\n\n\
        labels.csv:\n  run,example,verdict,annotator,note\n  3f2a9c,synthetic-0001,pass,ana,\n  3f2a9c,synthetic-0002,fail,ana,wrong city"
    )]
    Import {
        /// The labels file (.csv, or .jsonl with one object per line).
        file: PathBuf,
        /// The name the labels are stored under, e.g. human.
        #[arg(long)]
        evaluator: String,
        /// Print what was imported as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Convert ToolBench DFS answer files into ToolBench's SFT format, as its preprocessing
    /// writes `toolllama_G123_dfs_*.json`: a JSON list of `{"id": "Step N: <query>",
    /// "conversations": [{"from", "value"}]}`, one entry per assistant step, the API list in
    /// the system turn as a Python literal. data.train and data.eval read it.
    #[command(
        after_help = "Example:\n  ablate data convert ../shared/data/toolbench/ToolBench/data_example/answer --out train.json"
    )]
    Convert {
        /// A directory of answer files (searched recursively).
        answers: PathBuf,
        /// The JSON file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Show how one example is rendered with the chat template and tokenized, with the
    /// loss mask (which tokens train).
    #[command(
        after_help = "Examples:\n  ablate data inspect synthetic --index 3\n  \
        ablate data inspect ../shared/data/toolbench/ToolBench/data_example/answer --index 2\n  \
        ablate data inspect ../shared/data/bfcl/BFCL_v4_multiple.json --tokenizer results/runs/<id>/tokenizer.json"
    )]
    Inspect {
        /// `synthetic`, a BFCL question file, a directory of ToolBench answer files, or a
        /// ToolBench conversations file.
        source: String,
        /// Which example (0-based).
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// A tokenizer.json to use; default: a BPE trained on the source's own texts.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Vocabulary size of the trained BPE (without --tokenizer).
        #[arg(long, default_value_t = 768)]
        vocab_size: usize,
        /// Loss on the completion only, or on every token.
        #[arg(long, default_value = "completion", value_parser = ["completion", "all"])]
        loss_on: String,
        /// The chat template (`data.template`): `compact`, or `toolllama` for ToolBench's
        /// SFT files.
        #[arg(long, default_value = "compact", value_parser = ["compact", "toolllama"])]
        template: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScoreCommand {
    /// BFCL's AST checker (Python categories): accuracy per category and overall.
    ///
    /// Predictions are JSON Lines of {"id": ..., "calls": [{"name": ..., "arguments":
    /// {...}}]}, `[]` for no call; a question without a prediction fails. Questions and
    /// possible answers are BFCL's files, paired line by line as BFCL pairs them; the
    /// category comes from each id (irrelevance needs no answers file).
    #[command(
        after_help = "Example:\n  ablate score bfcl --questions BFCL_v4_simple_python.json \\\n    \
        --answers possible_answer/BFCL_v4_simple_python.json --predictions preds.jsonl"
    )]
    Bfcl {
        /// BFCL question file (JSON Lines: id, question, function).
        #[arg(long)]
        questions: PathBuf,
        /// BFCL possible-answer file (JSON Lines: id, ground_truth).
        #[arg(long)]
        answers: Option<PathBuf>,
        /// The model's calls per id (JSON Lines).
        #[arg(long)]
        predictions: PathBuf,
        /// Print one JSON object: accuracy (0 to 1), total, passed, per-category scores
        /// and every verdict with its reason.
        #[arg(long)]
        json: bool,
    },
    /// ToolEval's pass rate on converted answers, with the prompts and function schemas
    /// of a ToolEval evaluator folder (config.yaml + template.txt from your copy of
    /// ToolEval), asking any OpenAI-compatible endpoint, under either procedure:
    ///
    /// - sopr (StableToolBench's eval_pass_rate.py, the default): per query and judgment
    ///   Solved, Unsure or Unsolved (a path without Finish, or an empty or given-up
    ///   answer, is Unsolved without a question); each judgment's rate is the mean of
    ///   Solved 1, Unsure 0.5, Unsolved 0, printed as mean ± sd over judgments.
    ///
    /// - pass_rate (ToolBench's eval_pass_rate.py): an answer that is not Solved is
    ///   weighed against check_task_solvable; a query passes when it passed at least as
    ///   often as it failed. Where ToolBench draws a random coin (Unsure), ablate's coin
    ///   is a hash of the query id and the judgment, so reruns agree.
    Tooleval {
        /// Converted answers: query id -> {query, available_tools, answer}.
        #[arg(long)]
        answers: PathBuf,
        /// test_query_ids/<group>.json: only these ids are judged.
        #[arg(long)]
        ids: Option<PathBuf>,
        /// A ToolEval evaluator folder (config.yaml, template.txt).
        #[arg(long)]
        evaluator: PathBuf,
        /// The endpoint's base URL; /chat/completions is appended.
        #[arg(long)]
        url: String,
        /// The judge model (default: the evaluator's config).
        #[arg(long)]
        model: Option<String>,
        /// Judgments per answer (eval_pass_rate.py's --evaluate_times).
        #[arg(long, default_value_t = 4)]
        k: usize,
        /// sopr (StableToolBench) or pass_rate (ToolBench).
        #[arg(long, default_value = "sopr", value_parser = ["sopr", "pass_rate"])]
        procedure: String,
        /// The environment variable holding the API key (unset: no Authorization header).
        #[arg(long, default_value = "OPENAI_API_KEY")]
        api_key_env: String,
        /// Print one JSON object: per query its statuses, the rates, mean and sd.
        #[arg(long)]
        json: bool,
    },
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

fn user(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: exit::USER_ERROR,
        error: e.into(),
    }
}

fn internal(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: exit::INTERNAL,
        error: e.into(),
    }
}

fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::Missing(_)
        | StoreError::NotReadOnly
        | StoreError::MultipleStatements(_)
        | StoreError::BadQuery(_)
        | StoreError::TooNew { .. }
        | StoreError::UnreadableLog(_) => user(e),
        // A statement SQLite cannot prepare is the user's SQL.
        StoreError::Sqlite {
            source: rusqlite::Error::SqlInputError { .. },
            ..
        } => user(e),
        // `--db` names a file that is not SQLite's: the user's file, not ablate's failure.
        StoreError::Sqlite {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        } if f.code == rusqlite::ErrorCode::NotADatabase => user(e),
        _ => internal(e),
    }
}

/// Parses arguments, runs the command, prints errors; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            // Config problems are already one line each; other errors print as a chain.
            if f.error.downcast_ref::<ConfigError>().is_some() {
                eprintln!("error: {}", f.error.to_string().replace('\n', "\nerror: "));
            } else {
                eprintln!("error: {:#}", f.error);
            }
            ExitCode::from(f.code)
        }
    }
}

pub fn dispatch(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Plan { inputs, json } => cmd_plan(&cli.db, &inputs, json),
        Command::Run {
            inputs,
            jobs,
            devices,
            json,
            no_report,
            rerun_stale,
        } => cmd_run(
            &cli.db,
            &inputs,
            jobs,
            devices,
            json,
            no_report,
            rerun_stale,
        ),
        Command::Submit {
            inputs,
            slurm: _,
            flags,
            dry_run,
            json,
        } => cluster::cmd_submit(&cli.db, &inputs, &flags, dry_run, json),
        Command::Task { manifest, index } => cluster::cmd_task(&manifest, index),
        Command::Collect { json } => cluster::cmd_collect(&cli.db, json),
        Command::Status { sweeps, json } => cluster::cmd_status(&cli.db, &sweeps, json),
        Command::Report { inputs, template } => cmd_report(&cli.db, &inputs, template.as_deref()),
        Command::Query { sql, csv, json } => cmd_query(&cli.db, &sql, csv, json),
        Command::Serve { addr } => cmd_serve(&cli.db, &addr),
        Command::Export {
            sweep,
            json,
            tooleval: Some(dir),
            name,
            ..
        } => cmd_export_tooleval(&cli.db, &sweep, &dir, name.as_deref(), json),
        Command::Export { sweep, json, .. } => cmd_export(&cli.db, &sweep, json),
        Command::Compare { runs, json } => cmd_compare(&cli.db, &runs, json),
        Command::Rescore {
            targets,
            evaluator,
            sets,
            json,
        } => cmd_rescore(&cli.db, &targets, evaluator, &sets, json),
        Command::Fetch {
            models,
            revision,
            json,
        } => cmd_fetch(&models, &revision, json),
        Command::Data(DataCommand::Convert { answers, out }) => cmd_data_convert(&answers, &out),
        Command::Labels(LabelsCommand::Import {
            file,
            evaluator,
            json,
        }) => cmd_labels_import(&cli.db, &file, &evaluator, json),
        Command::Data(DataCommand::Inspect {
            source,
            index,
            tokenizer,
            vocab_size,
            loss_on,
            template,
            json,
        }) => cmd_data_inspect(
            &source,
            index,
            tokenizer.as_deref(),
            vocab_size,
            &loss_on,
            &template,
            json,
        ),
        Command::Score(ScoreCommand::Bfcl {
            questions,
            answers,
            predictions,
            json,
        }) => cmd_score_bfcl(&questions, answers.as_deref(), &predictions, json),
        Command::Score(ScoreCommand::Tooleval {
            answers,
            ids,
            evaluator,
            url,
            model,
            k,
            procedure,
            api_key_env,
            json,
        }) => cmd_score_tooleval(
            &answers,
            ids.as_deref(),
            crate::config::JudgeConfig {
                url,
                model: model.unwrap_or_default(),
                api_key_env,
                k: Some(k),
                evaluator: evaluator.display().to_string(),
                procedure: if procedure == "pass_rate" {
                    crate::config::JudgeProcedure::PassRate
                } else {
                    crate::config::JudgeProcedure::Sopr
                },
                ..Default::default()
            },
            json,
        ),
    }
}

fn cmd_score_tooleval(
    answers: &Path,
    ids: Option<&Path>,
    cfg: crate::config::JudgeConfig,
    json: bool,
) -> Result<u8, Failure> {
    use crate::config::JudgeProcedure;
    use crate::eval::llm_judge::{Item, Judge};
    use crate::eval::tooleval::{self, AnswerStatus};
    if cfg.k == Some(0) {
        return Err(user(anyhow::anyhow!("--k must be at least 1")));
    }
    let judge = Judge::new(&cfg, None).map_err(user)?;
    let mut converted = tooleval::load_converted(answers).map_err(user)?;
    if let Some(ids) = ids {
        let keep = crate::data::toolbench::load_query_ids(ids).map_err(user)?;
        converted.retain(|(id, _)| keep.contains(id));
    }
    let k = judge.k;
    let mut statuses: Vec<Vec<AnswerStatus>> = Vec::new();
    let mut per_query = serde_json::Map::new();
    let mut passed_queries = 0usize;
    for (id, a) in &converted {
        let item = Item {
            id,
            query: &a.query,
            available_tools: a.available_tools.clone(),
            finished: tooleval::finished(&a.answer),
            answer: a.answer.clone(),
        };
        let d = judge
            .judge(&item)
            .map_err(|e| user(anyhow::anyhow!("query {id}: {e}")))?;
        passed_queries += d.passed as usize;
        // As ToolEval's results files key them: judgment index -> status.
        let by_judgment = |f: &dyn Fn(&crate::eval::llm_judge::Judgment) -> serde_json::Value| {
            d.judgments
                .iter()
                .enumerate()
                .map(|(j, x)| (j.to_string(), f(x)))
                .collect::<serde_json::Map<_, _>>()
        };
        let mut q = serde_json::json!({
            "is_solved": by_judgment(&|x| serde_json::json!(x.answer.tooleval())),
        });
        if cfg.procedure == JudgeProcedure::PassRate {
            let n = d
                .judgments
                .iter()
                .filter(|x| x.passed == Some(true))
                .count();
            q["passed"] = serde_json::json!(n);
            q["failed"] = serde_json::json!(d.judgments.len() - n);
            q["task_solvable"] = serde_json::Value::Object(by_judgment(&|x| {
                serde_json::json!(x.task.map(|t| t.tooleval()))
            }));
            q["coins"] = serde_json::json!(d.judgments.iter().filter(|x| x.coin).count());
        }
        per_query.insert(id.clone(), q);
        statuses.push(d.judgments.iter().map(|x| x.answer).collect());
    }
    let (name, digest) = judge.evaluator().unwrap_or_default();
    let (rates, mean, sd) = match cfg.procedure {
        JudgeProcedure::Sopr => tooleval::sopr_rates(&statuses, k),
        // ToolBench prints one rate: the share of queries that passed.
        JudgeProcedure::PassRate => {
            let r = passed_queries as f64 / converted.len().max(1) as f64;
            (vec![r], r, 0.0)
        }
    };
    if json {
        let v = serde_json::json!({
            "evaluator": name,
            "evaluator_digest": digest,
            "model": judge.model,
            "procedure": cfg.procedure,
            "queries": per_query,
            "rates": rates,
            "mean": mean,
            "sd": sd,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        for (id, q) in &per_query {
            println!("{id}: {}", q["is_solved"]);
        }
        match cfg.procedure {
            JudgeProcedure::Sopr => println!(
                "solvable pass rate over {} queries: {:.1} ± {:.1} (judgments: {})",
                converted.len(),
                mean * 100.0,
                sd * 100.0,
                rates
                    .iter()
                    .map(|r| format!("{:.1}", r * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            JudgeProcedure::PassRate => println!(
                "pass rate over {} queries: {:.1} ({passed_queries} passed; ties pass)",
                converted.len(),
                mean * 100.0,
            ),
        }
    }
    Ok(exit::OK)
}

fn cmd_fetch(models: &[String], revision: &str, json: bool) -> Result<u8, Failure> {
    let mut fetched = Vec::new();
    for m in models {
        if !json {
            eprintln!("fetching {m} ({revision})");
        }
        let f = crate::model::fetch::fetch(m, revision).map_err(user)?;
        if !json {
            eprintln!(
                "  {} files in {}: {}",
                f.files.len(),
                f.snapshot.display(),
                f.files.join(", ")
            );
        }
        fetched.push(f);
    }
    if json {
        println!("{}", serde_json::to_string(&fetched).expect("json"));
    }
    Ok(exit::OK)
}

fn cmd_data_convert(answers: &Path, out: &Path) -> Result<u8, Failure> {
    let files = crate::data::toolbench::answer_files(answers).map_err(user)?;
    let mut entries = Vec::new();
    let mut converted = 0;
    for f in &files {
        if let Some(e) = crate::data::toolllama::from_answer_file(f).map_err(user)? {
            entries.extend(e);
            converted += 1;
        }
    }
    let text = serde_json::to_string_pretty(&entries).expect("json");
    std::fs::write(out, text)
        .with_context(|| format!("writing {}", out.display()))
        .map_err(internal)?;
    eprintln!(
        "wrote {} entries (one per assistant step) of {converted} answer files ({} skipped \
         as valid_data: false) to {}",
        entries.len(),
        files.len() - converted,
        out.display()
    );
    Ok(exit::OK)
}

fn cmd_data_inspect(
    source: &str,
    index: usize,
    tokenizer: Option<&Path>,
    vocab_size: usize,
    loss_on: &str,
    template: &str,
    json: bool,
) -> Result<u8, Failure> {
    use crate::data::{self, Source};
    let template: data::Template =
        serde_json::from_value(serde_json::Value::from(template)).map_err(user)?;
    let src = Source::parse(source);
    let examples = match src.load().map_err(user)? {
        Some(ex) => ex,
        None => {
            // The synthetic training split with the default seed and size.
            let d = config::RunConfig::default().data;
            data::synthetic::generate(d.n_train.max(index + 1), d.seed, "train")
        }
    };
    let e = examples.get(index).ok_or_else(|| {
        user(anyhow::anyhow!(
            "{source}: --index {index} is out of range ({} examples)",
            examples.len()
        ))
    })?;
    let tok = match tokenizer {
        Some(p) => data::load_tokenizer(p).map_err(user)?,
        None => data::cache::TokenCache::none()
            .preset_tokenizer(&examples, template, vocab_size)
            .map_err(user)?,
    };
    let loss = if loss_on == "all" {
        config::LossOn::All
    } else {
        config::LossOn::Completion
    };
    let enc = data::encode_example(&tok, e, template, loss).map_err(user)?;
    let tokens: Vec<String> = enc
        .ids
        .iter()
        .map(|&i| tok.id_to_token(i).unwrap_or_else(|| format!("<{i}>")))
        .collect();
    let (prompt, completion) = (
        template.prompt(e).map_err(user)?,
        template.completion(e).map_err(user)?,
    );
    if json {
        let v = serde_json::json!({
            "id": e.id, "dataset": src.name(), "category": e.category,
            "prompt": prompt, "completion": completion,
            "ids": enc.ids, "tokens": tokens, "labels": enc.labels,
            "loss_tokens": enc.labels.iter().filter(|l| **l >= 0).count(),
        });
        println!("{v}");
        return Ok(exit::OK);
    }
    let trained = enc.labels.iter().filter(|l| **l >= 0).count();
    println!(
        "example {} ({}, category {}): {} tokens, {trained} in the loss",
        e.id,
        src.name(),
        e.category,
        enc.ids.len()
    );
    println!("--- prompt ---\n{prompt}\n--- completion ---\n{completion}\n--- tokens (* = in the loss) ---");
    let rows: Vec<Vec<String>> = enc
        .ids
        .iter()
        .zip(&tokens)
        .zip(&enc.labels)
        .enumerate()
        .map(|(pos, ((id, t), l))| {
            vec![
                pos.to_string(),
                id.to_string(),
                format!("{t:?}"),
                if *l >= 0 { "*".into() } else { String::new() },
            ]
        })
        .collect();
    print!(
        "{}",
        ui::table(&["pos", "id", "token", "loss"].map(String::from), &rows)
    );
    Ok(exit::OK)
}

fn cmd_score_bfcl(
    questions: &Path,
    answers: Option<&Path>,
    predictions: &Path,
    json: bool,
) -> Result<u8, Failure> {
    use crate::bfcl;
    let qs: Vec<bfcl::Question> = bfcl::load_jsonl(questions).map_err(user)?;
    let ans: Vec<bfcl::Answer> = match answers {
        Some(a) => bfcl::load_jsonl(a).map_err(user)?,
        None if qs
            .iter()
            .all(|q| bfcl::category_of(&q.id).contains("irrelevance")) =>
        {
            vec![]
        }
        None => {
            return Err(user(anyhow::anyhow!(
                "--answers is required: {} holds categories other than irrelevance",
                questions.display()
            )))
        }
    };
    let preds: Vec<bfcl::Prediction> = bfcl::load_jsonl(predictions).map_err(user)?;
    let score = bfcl::score(&qs, &ans, &preds).map_err(user)?;
    if json {
        println!("{}", serde_json::to_string(&score).map_err(internal)?);
        return Ok(exit::OK);
    }
    let mut rows: Vec<Vec<String>> = score
        .categories
        .iter()
        .map(|(c, s)| {
            vec![
                c.clone(),
                s.passed.to_string(),
                s.total.to_string(),
                format!("{:.2}%", 100.0 * s.accuracy),
            ]
        })
        .collect();
    rows.push(vec![
        "overall".into(),
        score.passed.to_string(),
        score.total.to_string(),
        format!("{:.2}%", 100.0 * score.accuracy),
    ]);
    let headers = ["category", "passed", "total", "accuracy"].map(String::from);
    print!("{}", ui::table(&headers, &rows));
    let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
    for v in score.verdicts.iter().filter(|v| !v.verdict.valid) {
        *reasons.entry(v.verdict.error_type.as_str()).or_default() += 1;
    }
    if !reasons.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = reasons
            .iter()
            .map(|(r, n)| vec![r.to_string(), n.to_string()])
            .collect();
        print!("{}", ui::table(&["failure".into(), "count".into()], &rows));
    }
    Ok(exit::OK)
}

/// Loads and expands every experiment; all problems of all files are reported together.
fn load_plans(inputs: &Inputs) -> Result<Vec<Plan>, Failure> {
    Ok(load_expansions(inputs)?
        .into_iter()
        .map(plan::Expansion::into_plan)
        .collect())
}

/// Loads and checks every experiment's grid, without holding its runs.
fn load_expansions(inputs: &Inputs) -> Result<Vec<plan::Expansion>, Failure> {
    let exps = if inputs.paths.is_empty() {
        let default = Path::new("experiments/smoke.toml");
        if default.is_file() {
            vec![config::load_experiment(default, &inputs.sets)]
        } else {
            vec![config::load_experiment_text(
                Path::new("smoke.toml (built in)"),
                SMOKE,
                None,
                &inputs.sets,
            )]
        }
    } else {
        let found = config::experiment_files(&inputs.paths).map_err(user)?;
        for f in &found.skipped {
            eprintln!(
                "skipped: {} (not a regular file: a FIFO, a device or a dangling link)",
                f.display()
            );
        }
        found
            .files
            .iter()
            .map(|f| config::load_experiment(f, &inputs.sets))
            .collect()
    };
    let mut problems = Vec::new();
    let mut plans = Vec::new();
    for e in exps {
        match e.and_then(|e| plan::Expansion::new(e, inputs.max_runs)) {
            Ok(p) => plans.push(p),
            Err(ConfigError::Invalid(ps)) => problems.extend(ps),
            Err(other) => return Err(user(other)),
        }
    }
    // Two experiments of one name would overwrite each other's sweep and report.
    let mut names: std::collections::BTreeMap<&str, &Path> = Default::default();
    for p in &plans {
        if let Some(first) = names.insert(&p.experiment.name, &p.experiment.file) {
            problems.push(config::ConfigProblem {
                origin: p.experiment.file.display().to_string(),
                key: "experiment.name".into(),
                message: format!(
                    "\"{}\" is also the name of {}: each experiment needs a name of its own",
                    p.experiment.name,
                    first.display()
                ),
            });
        }
    }
    if !problems.is_empty() {
        return Err(user(ConfigError::Invalid(problems)));
    }
    Ok(plans)
}

fn results_dir(db: &Path) -> PathBuf {
    db.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Writes `value` pretty-printed as serde_json does, each line after the first indented by
/// `indent` more spaces.
fn write_pretty(
    out: &mut impl std::io::Write,
    value: &serde_json::Value,
    indent: usize,
) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("json");
    for (k, line) in text.lines().enumerate() {
        if k > 0 {
            write!(out, "\n{:indent$}", "")?;
        }
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// `plan --json`'s array of plan objects, written a run at a time in the text that
/// `to_string_pretty` gives the whole array: each object's fields in serde_json's (sorted)
/// order, `runs` among them.
#[derive(Default)]
struct PlanJson {
    plans: usize,
    runs: usize,
}

impl PlanJson {
    fn field(out: &mut impl std::io::Write, k: &str) -> std::io::Result<()> {
        write!(out, "\n    {}: ", serde_json::json!(k))
    }

    /// A plan object's fields before `runs`, and the opening of `runs`.
    fn begin(
        &mut self,
        out: &mut impl std::io::Write,
        before: &[(&str, serde_json::Value)],
    ) -> std::io::Result<()> {
        out.write_all(if self.plans == 0 {
            b"[\n  {"
        } else {
            b",\n  {"
        })?;
        self.plans += 1;
        self.runs = 0;
        for (k, v) in before {
            Self::field(out, k)?;
            write_pretty(out, v, 4)?;
            out.write_all(b",")?;
        }
        Self::field(out, "runs")
    }

    fn run(&mut self, out: &mut impl std::io::Write, r: &serde_json::Value) -> std::io::Result<()> {
        out.write_all(if self.runs == 0 {
            b"[\n      "
        } else {
            b",\n      "
        })?;
        self.runs += 1;
        write_pretty(out, r, 6)
    }

    /// The end of `runs`, the fields after it, and the end of the plan object.
    fn end(
        &mut self,
        out: &mut impl std::io::Write,
        after: &[(&str, serde_json::Value)],
    ) -> std::io::Result<()> {
        out.write_all(if self.runs > 0 { b"\n    ]" } else { b"[]" })?;
        for (k, v) in after {
            out.write_all(b",")?;
            Self::field(out, k)?;
            write_pretty(out, v, 4)?;
        }
        out.write_all(b"\n  }")
    }

    /// The end of the array.
    fn finish(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        out.write_all(if self.plans == 0 { b"[]\n" } else { b"\n]\n" })
    }
}

/// What `plan` prints after a plan's table, gathered as its runs stream by.
#[derive(Default)]
struct PlanNotes {
    /// How a run to be trained gets its model (done runs need no note).
    sharing: Vec<String>,
    left_out: Vec<String>,
    truncated: Vec<String>,
}

fn cmd_plan(db: &Path, inputs: &Inputs, json: bool) -> Result<u8, Failure> {
    use std::io::Write;
    let expansions = load_expansions(inputs)?;
    for x in &expansions {
        template_of(&x.experiment, None)?;
    }
    // Planning never creates or changes the database, so it does not migrate one either.
    let store = if db.exists() {
        let s = Store::open_read_only(db).map_err(store_failure)?;
        if !s.is_current().map_err(store_failure)? {
            return Err(user(anyhow::anyhow!(
                "database {} was written by an older ablate: `ablate run` (or `ablate report`) \
                 brings it to this version's schema first; `plan` writes nothing",
                db.display()
            )));
        }
        Some(s)
    } else {
        None
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let writing = |e: std::io::Error| internal(anyhow::Error::new(e).context("writing the plan"));
    let mut plan_json = PlanJson::default();
    let mut summaries = plan::DataSummaries::new(db.parent().unwrap_or(Path::new(".")));
    let code = crate::run::provenance::Code::current();
    let differs = |prov: &serde_json::Value| code.differs_from(prov);
    // A plan's runs are made, previewed and written a chunk at a time (a grid of a million
    // runs is never held whole); only the text table's compact rows are kept.
    for (n, x) in expansions.iter().enumerate() {
        let exp = &x.experiment;
        let axes = plan::axis_names(exp);
        let mut previewer = exec::preview::Previewer::new(store.as_ref(), &differs);
        let mut cost = Cost::default();
        let mut fewest_examples: Option<usize> = None;
        let mut stale: Vec<exec::preview::StaleStage> = Vec::new();
        let mut stale_ids = std::collections::HashSet::new();
        let mut pending = 0usize;
        let mut headers = vec!["id".to_string()];
        headers.extend(axes.iter().cloned());
        headers.push("status".into());
        headers.push("will run".into());
        let mut table = ui::Table::new(headers);
        let mut notes = PlanNotes::default();
        if json {
            let before = [
                ("axes", serde_json::json!(axes)),
                ("experiment", serde_json::json!(exp.name)),
                ("file", serde_json::json!(exp.file.display().to_string())),
            ];
            plan_json.begin(&mut out, &before).map_err(writing)?;
        }
        for runs in x.runs() {
            let previews = previewer.next(&runs).map_err(store_failure)?;
            let data: Vec<plan::DataSummary> = runs
                .iter()
                .map(|r| summaries.of(&r.config))
                .collect::<Result<_, _>>()
                .map_err(|e| user(anyhow::anyhow!(e)))?;
            for ((r, v), d) in runs.iter().zip(&previews).zip(&data) {
                cost.add(r, v, d);
                let examples = match r.config.eval.limit {
                    0 => d.eval,
                    limit => d.eval.min(limit),
                };
                fewest_examples = Some(fewest_examples.map_or(examples, |m| m.min(examples)));
                for s in &v.stale {
                    if stale_ids.insert(s.id.clone()) {
                        stale.push(s.clone());
                    }
                }
                if !v.will_run.is_empty() {
                    pending += 1;
                }
                if json {
                    let run = serde_json::json!({
                        "id": r.id, "axes": r.axes, "baseline": r.is_baseline,
                        "status": v.status, "config": r.config, "data": d,
                        "stages": {
                            "training": r.stages.training,
                            "generation": r.stages.generation,
                            "verdict_sets": r.stages.verdicts,
                            "checkpoint_epoch": r.stages.checkpoint_epoch,
                            "will_run": v.will_run,
                            "sharing": v.sharing,
                        },
                    });
                    plan_json.run(&mut out, &run).map_err(writing)?;
                } else {
                    table.push(&plan_row(r, v, &axes));
                    notes.add(r, v, d);
                }
            }
        }
        let detectable = fewest_examples.map(Detectable::of);
        if json {
            let after = [
                ("detectable", serde_json::json!(detectable)),
                ("stale", serde_json::json!(stale)),
                ("to_run", serde_json::json!(cost)),
            ];
            plan_json.end(&mut out, &after).map_err(writing)?;
            continue;
        }
        if n > 0 {
            writeln!(out).map_err(writing)?;
        }
        writeln!(
            out,
            "{} ({}): {} runs, {} to run",
            exp.name,
            exp.file.display(),
            x.len(),
            pending
        )
        .map_err(writing)?;
        table.write(&mut out).map_err(writing)?;
        writeln!(out, "  to run: {cost}").map_err(writing)?;
        if let Some(d) = &detectable {
            writeln!(out, "  {d}").map_err(writing)?;
        }
        for note in &notes.sharing {
            writeln!(out, "  {note}").map_err(writing)?;
        }
        if !stale.is_empty() {
            let reasons: std::collections::BTreeSet<&str> =
                stale.iter().map(|s| s.reason.as_str()).collect();
            writeln!(
                out,
                "  warning: {} done stages were produced by other code ({}) than this \
                 tree's; `ablate run --rerun-stale` redoes them",
                stale.len(),
                reasons.into_iter().collect::<Vec<_>>().join(", ")
            )
            .map_err(writing)?;
        }
        for note in notes.left_out.iter().chain(&notes.truncated) {
            writeln!(out, "  {note}").map_err(writing)?;
        }
    }
    if json {
        plan_json.finish(&mut out).map_err(writing)?;
    } else {
        writeln!(out, "(* baseline)").map_err(writing)?;
    }
    out.flush().map_err(writing)?;
    Ok(exit::OK)
}

/// A run's row of `plan`'s table: id (starred when it is the baseline), axis values,
/// status, and the stages it would run.
fn plan_row(r: &plan::PlannedRun, v: &exec::preview::RunPreview, axes: &[String]) -> Vec<String> {
    let mut row = vec![format!("{}{}", r.id, if r.is_baseline { " *" } else { "" })];
    row.extend(axes.iter().map(|a| plan::display_value(r.axes.get(a))));
    row.push(v.status.as_str().to_string());
    row.push(if v.will_run.is_empty() {
        "-".to_string()
    } else {
        v.will_run
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(" + ")
    });
    row
}

impl PlanNotes {
    fn add(&mut self, r: &plan::PlannedRun, v: &exec::preview::RunPreview, d: &plan::DataSummary) {
        if let Some(note) = v.sharing.as_ref().filter(|_| !v.will_run.is_empty()) {
            self.sharing.push(format!("{}: {note}", r.id));
        }
        if d.left_out > 0 {
            self.left_out.push(format!(
                "{}: {} of {} training examples left out: their query is in data.eval",
                r.id,
                d.left_out,
                d.left_out + d.train
            ));
        }
        if d.truncated + d.dropped > 0 {
            self.truncated.push(format!(
                "{}: at data.max_seq_len = {}, {} training examples cut and {} dropped \
                 (tokens: median {}, p95 {}, max {})",
                r.id,
                r.config.data.max_seq_len,
                d.truncated,
                d.dropped,
                d.tokens.median,
                d.tokens.p95,
                d.tokens.max
            ));
        }
    }
}

/// The smallest difference in pass rate between two runs of a plan that its evaluation
/// set can tell from noise, before anything runs (at a 50% rate, where it is largest).
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Detectable {
    /// Test examples a run (the fewest among the plan's runs, `eval.limit` applied).
    examples: usize,
    /// The minimum detectable effect at a 50% pass rate (0 to 1), if any.
    difference: Option<f64>,
}

impl Detectable {
    /// At the fewest test examples any run of the plan has.
    fn of(examples: usize) -> Detectable {
        Detectable {
            examples,
            difference: crate::report::stats::mde(examples, 0.5),
        }
    }
}

impl std::fmt::Display for Detectable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.difference {
            Some(d) => write!(
                f,
                "detectable: with {} test examples a run, pass rates closer than {:.1} points \
                 read as noise (minimum detectable effect at a 50% rate: 80% power, α 0.05)",
                self.examples,
                100.0 * d
            ),
            None => write!(
                f,
                "detectable: {} test examples a run are too few to tell any two pass rates apart",
                self.examples
            ),
        }
    }
}

/// What a plan would cost: trainings (optimizer steps), generations (prompts decoded) and
/// verdict sets, counting each shared stage once and done stages not at all.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Cost {
    trainings: usize,
    train_steps: usize,
    generations: usize,
    prompts: usize,
    verdict_sets: usize,
}

impl Cost {
    /// Counts what a run would run.
    fn add(&mut self, r: &plan::PlannedRun, v: &exec::preview::RunPreview, d: &plan::DataSummary) {
        if v.will_run.contains(&crate::store::Stage::Train) {
            let epochs = r.stages.train_epochs;
            self.trainings += 1;
            self.train_steps +=
                (d.train - d.dropped).div_ceil(r.config.train.batch_size.max(1)) * epochs;
        }
        if v.will_run.contains(&crate::store::Stage::Generate) {
            self.generations += 1;
            self.prompts += match r.config.eval.limit {
                0 => d.eval,
                n => n.min(d.eval),
            };
        }
        if v.will_run.contains(&crate::store::Stage::Judge) {
            self.verdict_sets += 1;
        }
    }
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        write!(
            f,
            "{} ({}), {} ({}), {}",
            n(self.trainings, "training", "trainings"),
            n(self.train_steps, "optimizer step", "optimizer steps"),
            n(self.generations, "generation", "generations"),
            n(self.prompts, "prompt", "prompts"),
            n(self.verdict_sets, "verdict set", "verdict sets"),
        )
    }
}

fn install_ctrlc() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    // A second Ctrl-C exits at once; SQLite's transactions keep the database consistent.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(exit::INTERRUPTED as i32);
        }
        eprintln!(
            "interrupt: finishing the current step, then stopping (Ctrl-C again to quit now)"
        );
    });
    cancel
}

fn cmd_run(
    db: &Path,
    inputs: &Inputs,
    jobs: usize,
    devices: Option<Vec<usize>>,
    json: bool,
    no_report: bool,
    rerun_stale: bool,
) -> Result<u8, Failure> {
    let plans = load_plans(inputs)?;
    if let Some(d) = &devices {
        check_devices(&plans, d)?;
    }
    // A template typo fails now, not after the sweep has trained.
    let templates = plans
        .iter()
        .map(|p| template_of(&p.experiment, None))
        .collect::<Result<Vec<_>, _>>()?;
    let mut store = Store::open(db).map_err(store_failure)?;
    let opts = ExecOptions {
        jobs,
        devices,
        ownership: crate::store::Ownership::CheckOwner,
        results: results_dir(db),
        cancel: install_ctrlc(),
        git_rev: exec::git_rev(),
        db: Some(db.to_path_buf()),
        runner: crate::run::runner,
    };
    let mut reporter: Box<dyn Reporter> = if json {
        Box::new(ui::JsonReporter)
    } else {
        Box::new(ui::ProgressReporter::new())
    };
    let mut code = exit::OK;
    for (p, template) in plans.iter().zip(&templates) {
        if rerun_stale {
            let code = crate::run::provenance::Code::current();
            let stale: Vec<(crate::store::Stage, String)> =
                exec::preview::preview(p, Some(&store), &|prov| code.differs_from(prov))
                    .map_err(store_failure)?
                    .into_iter()
                    .flat_map(|v| v.stale)
                    .map(|s| (s.stage, s.id))
                    .collect();
            store.reset_stages(&stale).map_err(store_failure)?;
        }
        let outcome =
            exec::execute(p, &mut store, &opts, reporter.as_mut()).map_err(store_failure)?;
        if !no_report {
            let path = report::write_report(
                &store,
                &p.experiment.name,
                template,
                &results_dir(db).join("reports"),
                &report_options(p),
            )
            .map_err(report_failure)?;
            if !json {
                eprintln!("report: {}", path.display());
            }
        }
        if outcome.interrupted > 0 || opts.cancel.load(Ordering::Relaxed) {
            return Ok(exit::INTERRUPTED);
        }
        if !outcome.all_ok() {
            code = exit::RUNS_FAILED;
        }
    }
    Ok(code)
}

/// `--devices`: distinct ordinals, and enough of them for every run's `[[resources]]`.
fn check_devices(plans: &[Plan], devices: &[usize]) -> Result<(), Failure> {
    let distinct: std::collections::BTreeSet<_> = devices.iter().collect();
    if devices.is_empty() || distinct.len() != devices.len() {
        return Err(user(anyhow::anyhow!(
            "--devices: give distinct device ordinals, e.g. --devices 0,1"
        )));
    }
    for p in plans {
        if let Some(r) = p.runs.iter().find(|r| r.devices > devices.len()) {
            return Err(user(anyhow::anyhow!(
                "{}: resources: run {} needs {} devices, but --devices gives {}",
                p.experiment.file.display(),
                r.id,
                r.devices,
                devices.len()
            )));
        }
    }
    Ok(())
}

/// The report template: `--template`, else the experiment's `[experiment] report` (beside
/// the file, in ./report-templates/, a path, or a built-in name), else the general one.
fn template_of(exp: &config::Experiment, flag: Option<&Path>) -> Result<TemplateSource, Failure> {
    if let Some(f) = flag {
        return TemplateSource::resolve(Some(&f.display().to_string()), None)
            .map_err(|m| user(anyhow::anyhow!("--template: {m}")));
    }
    let file = &exp.file;
    TemplateSource::resolve(exp.meta.report.as_deref(), file.parent()).map_err(|m| {
        user(anyhow::anyhow!(
            "{}: experiment.report: {m}",
            file.display()
        ))
    })
}

fn report_options(p: &Plan) -> report::ReportOptions {
    report::ReportOptions {
        hybrid: p.experiment.meta.hybrid.clone(),
        ..Default::default()
    }
}

fn report_failure(e: report::ReportError) -> Failure {
    use report::ReportError as E;
    match e {
        E::Store(s) => store_failure(s),
        E::Io { .. } | E::Plot { .. } => internal(e),
        _ => user(e),
    }
}

fn cmd_report(db: &Path, inputs: &Inputs, template: Option<&Path>) -> Result<u8, Failure> {
    let plans = load_plans(inputs)?;
    let templates = plans
        .iter()
        .map(|p| template_of(&p.experiment, template))
        .collect::<Result<Vec<_>, _>>()?;
    let store = Store::open_for_reading(db).map_err(store_failure)?;
    for (p, t) in plans.iter().zip(&templates) {
        let path = report::write_report(
            &store,
            &p.experiment.name,
            t,
            &results_dir(db).join("reports"),
            &report_options(p),
        )
        .map_err(report_failure)?;
        println!("{}", path.display());
    }
    Ok(exit::OK)
}

fn cmd_export(db: &Path, sweep: &str, json: bool) -> Result<u8, Failure> {
    let store = Store::open_for_reading(db).map_err(store_failure)?;
    let opts = report::ReportOptions {
        bootstrap_iters: 0,
        ..Default::default()
    };
    let data = report::collect(&store, sweep, &opts).map_err(report_failure)?;
    if json {
        let v = report::export::to_json(&data);
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        report::export::write_csv(&data, std::io::stdout())
            .context("writing CSV")
            .map_err(internal)?;
    }
    Ok(exit::OK)
}

fn parse_evaluator(s: &str) -> Result<crate::config::Evaluator, String> {
    crate::config::Evaluator::parse(s).ok_or_else(|| {
        let known: Vec<&str> = crate::config::Evaluator::ALL
            .iter()
            .map(|e| e.name())
            .collect();
        format!("unknown evaluator \"{s}\" (known: {})", known.join(", "))
    })
}

/// Sweeps by name, else runs by id prefix; each run once, in the order given.
fn resolve_runs(store: &Store, db: &Path, targets: &[String]) -> Result<Vec<String>, Failure> {
    let mut ids: Vec<String> = Vec::new();
    for t in targets {
        let runs: Vec<String> = match store.sweep_runs(t).map_err(store_failure)? {
            r if !r.is_empty() => r.into_iter().map(|(id, _, _)| id).collect(),
            _ => match store
                .run_ids_with_prefix(t)
                .map_err(store_failure)?
                .as_slice()
            {
                [one] => vec![one.clone()],
                [] => {
                    return Err(user(anyhow::anyhow!(
                        "{t}: no sweep or run of that name in {}",
                        db.display()
                    )))
                }
                many => {
                    return Err(user(anyhow::anyhow!(
                        "{t}: the prefix names {} runs; give more of the id",
                        many.len()
                    )))
                }
            },
        };
        for r in runs {
            if !ids.contains(&r) {
                ids.push(r);
            }
        }
    }
    Ok(ids)
}

fn cmd_export_tooleval(
    db: &Path,
    target: &str,
    dir: &Path,
    name: Option<&str>,
    json: bool,
) -> Result<u8, Failure> {
    use serde_json::json;
    let store = Store::open_for_reading(db).map_err(store_failure)?;
    let ids = resolve_runs(&store, db, &[target.to_string()])?;
    if name.is_some() && ids.len() > 1 {
        return Err(user(anyhow::anyhow!(
            "--name names one run's answers, and {target} has {} runs",
            ids.len()
        )));
    }
    let mut exported = Vec::new();
    for id in &ids {
        let Some(generation) = store.run_generation(id).map_err(store_failure)? else {
            exported.push(json!({"run_id": id, "episodes": 0, "note": "no finished generation"}));
            continue;
        };
        let predictions = store.predictions(&generation).map_err(store_failure)?;
        let (groups, skipped) = report::tooleval::convert(&predictions);
        if groups.is_empty() {
            exported.push(json!({"run_id": id, "episodes": 0, "skipped": skipped}));
            continue;
        }
        let system = name.unwrap_or(id);
        let files = report::tooleval::write(dir, system, &groups)
            .with_context(|| format!("writing under {}", dir.display()))
            .map_err(user)?;
        let per_group: serde_json::Map<String, serde_json::Value> = groups
            .iter()
            .map(|(g, f)| (g.clone(), json!(f.len())))
            .collect();
        exported.push(json!({
            "run_id": id,
            "system": system,
            "episodes": groups.values().map(|f| f.len()).sum::<usize>(),
            "skipped": skipped,
            "groups": per_group,
            "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"runs": exported})).expect("json")
        );
    } else {
        for e in &exported {
            match e["system"].as_str() {
                Some(system) => println!(
                    "{}: {} episodes as {system} ({})",
                    e["run_id"].as_str().unwrap_or_default(),
                    e["episodes"],
                    e["groups"]
                        .as_object()
                        .map(|g| g
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                ),
                None => println!(
                    "{}: no episodes to export",
                    e["run_id"].as_str().unwrap_or_default()
                ),
            }
        }
        println!(
            "written under {}: score with StableToolBench's eval_pass_rate.py \
             --converted_answer_path {} --test_ids {}",
            dir.display(),
            dir.join("model_predictions_converted").display(),
            dir.join("test_query_ids").display()
        );
    }
    if exported.iter().all(|e| e["system"].is_null()) {
        return Err(user(anyhow::anyhow!(
            "{target}: no run has stored episodes (ToolBench agent evaluation) to export"
        )));
    }
    Ok(exit::OK)
}

fn cmd_labels_import(db: &Path, file: &Path, evaluator: &str, json: bool) -> Result<u8, Failure> {
    use crate::store::labels::LabelError;
    if !db.exists() {
        return Err(store_failure(StoreError::Missing(db.display().to_string())));
    }
    let mut store = Store::open(db).map_err(store_failure)?;
    let done = match store.import_labels(file, evaluator) {
        Ok(d) => d,
        Err(LabelError::Store(e)) => return Err(store_failure(e)),
        Err(e) => return Err(user(e)),
    };
    if json {
        println!("{}", serde_json::to_string(&done).expect("json"));
    } else {
        println!(
            "imported {} label(s) as {} on {} run(s){}",
            done.labels,
            done.evaluator,
            done.runs.len(),
            if done.annotators.is_empty() {
                String::new()
            } else {
                format!(" from {}", done.annotators.join(", "))
            }
        );
    }
    Ok(exit::OK)
}

fn cmd_rescore(
    db: &Path,
    targets: &[String],
    evaluator: crate::config::Evaluator,
    sets: &[Override],
    json: bool,
) -> Result<u8, Failure> {
    use crate::run::rescore::{self, RescoreError};
    if !db.exists() {
        return Err(store_failure(StoreError::Missing(db.display().to_string())));
    }
    let mut store = Store::open(db).map_err(store_failure)?;
    let ids = resolve_runs(&store, db, targets)?;
    let mut runs = Vec::new();
    for id in &ids {
        let info = store
            .run_info(id)
            .map_err(store_failure)?
            .ok_or_else(|| user(anyhow::anyhow!("{id}: no such run")))?;
        if info.status != "done" {
            // Only finished runs have predictions to judge.
            continue;
        }
        let cfg = crate::config::RunConfig::from_stored(&info.config_json)
            .with_context(|| format!("run {id}: its stored config does not parse"))
            .map_err(internal)?;
        runs.push((id.clone(), cfg));
    }
    if runs.is_empty() {
        return Err(user(anyhow::anyhow!(
            "no finished run among {}: nothing to re-score",
            targets.join(", ")
        )));
    }
    let cancel = install_ctrlc();
    let results = db.parent().unwrap_or(Path::new(".")).to_path_buf();
    let done = rescore::rescore(
        &mut store,
        &results,
        &runs,
        evaluator,
        sets,
        Some(db),
        &cancel,
        &|_| {},
    )
    .map_err(|e| match e {
        RescoreError::Store(s) => store_failure(s),
        e @ RescoreError::Run { .. } => Failure {
            code: exit::RUNS_FAILED,
            error: e.into(),
        },
        e => user(e),
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&done).expect("json"));
    } else {
        let headers: Vec<String> = [
            "run",
            "evaluator",
            "version",
            "verdict set",
            "pass rate",
            "",
        ]
        .map(String::from)
        .to_vec();
        let rows: Vec<Vec<String>> = done
            .iter()
            .map(|r| {
                vec![
                    r.run_id.clone(),
                    r.evaluator.to_string(),
                    r.version.clone(),
                    r.verdict_set.clone(),
                    if r.skipped.is_some() {
                        "-".into()
                    } else {
                        format!("{}/{}", r.passed, r.judged)
                    },
                    match (&r.skipped, r.already_done, r.relinked) {
                        (Some(why), _, _) => format!("skipped: {why}"),
                        (None, true, false) => "already judged".into(),
                        (None, _, true) => "judged; the run takes it".into(),
                        (None, false, false) => "judged".into(),
                    },
                ]
            })
            .collect();
        print!("{}", ui::table(&headers, &rows));
        println!("`ablate report` shows the verdicts that flipped between versions");
    }
    Ok(exit::OK)
}

fn cmd_compare(db: &Path, runs: &[String], json: bool) -> Result<u8, Failure> {
    let store = Store::open_for_reading(db).map_err(store_failure)?;
    let c = report::compare_runs(&store, runs, &report::ReportOptions::default())
        .map_err(report_failure)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&c).expect("json"));
    } else {
        print!("{}", ui::comparison(&c));
    }
    Ok(exit::OK)
}

fn cmd_serve(db: &Path, addr: &str) -> Result<u8, Failure> {
    use std::io::Write;
    let site = crate::serve::Site::open(db).map_err(|e| match e {
        crate::serve::ServeError::Store(e) => store_failure(e),
        e => user(e),
    })?;
    crate::serve::serve(site, addr, |bound| {
        // The first line is the address, for people and for scripts that start it.
        println!("http://{bound}/");
        eprintln!("serving {} read-only; Ctrl-C stops", db.display());
        let _ = std::io::stdout().flush();
    })
    .map_err(user)?;
    Ok(exit::OK)
}

fn cmd_query(db: &Path, sql: &str, csv: bool, json: bool) -> Result<u8, Failure> {
    use std::io::Write;
    let store = Store::open_for_reading(db).map_err(store_failure)?;
    let cell = report::format::csv_cell;
    // Rows are written as they are read (a result of millions of rows takes the memory of
    // one), in the same text as a whole result printed at once.
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let streamed = if json {
        let mut n = 0usize;
        let r = store.query_each(sql, &mut |cols, row| {
            let Some(row) = row else { return Ok(()) };
            let obj = serde_json::Value::Object(cols.iter().cloned().zip(row).collect());
            let text = serde_json::to_string_pretty(&obj).expect("json");
            out.write_all(if n == 0 { b"[\n" } else { b",\n" })?;
            for (k, line) in text.lines().enumerate() {
                if k > 0 {
                    out.write_all(b"\n")?;
                }
                write!(out, "  {line}")?;
            }
            n += 1;
            Ok(())
        });
        r.and_then(|()| {
            let end: &[u8] = if n == 0 { b"[]\n" } else { b"\n]\n" };
            out.write_all(end).map_err(StoreError::Output)
        })
    } else if csv {
        let mut w = csv::Writer::from_writer(&mut out);
        // The output's own error, so that a closed pipe is seen as one.
        let io = |e: csv::Error| match e.into_kind() {
            csv::ErrorKind::Io(e) => e,
            other => std::io::Error::other(format!("{other:?}")),
        };
        let r = store.query_each(sql, &mut |cols, row| match row {
            None => w.write_record(cols).map_err(io),
            Some(r) => w.write_record(r.iter().map(cell)).map_err(io),
        });
        r.and_then(|()| w.flush().map_err(StoreError::Output))
    } else {
        // Column widths come from the header and the first rows; a later, wider cell
        // stretches its own line only.
        const MEASURED: usize = 1000;
        let mut head: Vec<Vec<String>> = Vec::new();
        let mut columns: Vec<String> = Vec::new();
        let mut layout: Option<ui::TableLayout> = None;
        let r = store.query_each(sql, &mut |cols, row| {
            let Some(row) = row else {
                columns = cols.to_vec();
                return Ok(());
            };
            let cells: Vec<String> = row.iter().map(cell).collect();
            match &layout {
                Some(l) => writeln!(out, "{}", l.line(&cells)),
                None => {
                    head.push(cells);
                    if head.len() == MEASURED {
                        let l = ui::TableLayout::fit(&columns, &head);
                        writeln!(out, "{}", l.line(&columns))?;
                        for r in head.drain(..) {
                            writeln!(out, "{}", l.line(&r))?;
                        }
                        layout = Some(l);
                    }
                    Ok(())
                }
            }
        });
        r.and_then(|()| {
            if layout.is_none() {
                write!(out, "{}", ui::table(&columns, &head)).map_err(StoreError::Output)?;
            }
            Ok(())
        })
    };
    // A reader that stops early (`| head`) is not an error.
    let flushed = streamed.and_then(|()| out.flush().map_err(StoreError::Output));
    match flushed {
        Err(StoreError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.map_err(store_failure)?,
    }
    Ok(exit::OK)
}
