//! ablate: a declarative experiment and ablation runner for fine-tuning small language
//! models on tool calling.
//!
//! The pipeline, one module each: [`config`] (figment layers, validation) → [`plan`]
//! (grid expansion, run ids) → [`exec`] (executor, events) → [`train`] / [`eval`]
//! (candle) → [`store`] (SQLite) → [`report`] (templates). [`data`] and [`model`] feed
//! training and evaluation; [`ui`] is the only module that prints; [`cli`] is the
//! command line over all of it.

pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod exec;
pub mod model;
pub mod plan;
pub mod report;
pub mod run;
pub mod store;
pub mod train;
pub mod ui;
