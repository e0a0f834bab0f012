//! ablate: a declarative experiment and ablation runner for fine-tuning small language
//! models on tool calling.
//!
//! The pipeline, one module each: [`config`] (figment layers, validation) → [`plan`]
//! (grid expansion, run and stage ids) → [`exec`] (scheduling: slots, claims, events,
//! Slurm) → [`run`] (a run's stages: train, generate, judge) → [`store`] (SQLite) →
//! [`report`] (templates). [`data`], [`model`], [`train`] and [`eval`] are the stages'
//! tools; [`ui`] and [`cli`] are the only modules that print.

// Execution emits events and returns values; only the command line and the display print.
#![deny(clippy::print_stdout, clippy::print_stderr, clippy::dbg_macro)]

pub mod bfcl;
pub mod chat;
#[allow(clippy::print_stdout, clippy::print_stderr)]
pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod exec;
pub mod model;
pub mod plan;
pub mod report;
pub mod run;
pub mod serve;
pub mod store;
pub mod toolenv;
pub mod train;
#[allow(clippy::print_stdout, clippy::print_stderr)]
pub mod ui;
