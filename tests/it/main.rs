//! The one integration-test binary: end-to-end CLI tests and numerical parity with
//! transformers and torch.

mod bad_input;
mod bfcl;
mod cli;
mod hub;
mod judge;
mod model;
mod parity;
mod reliability;
mod reports;
mod slurm;
mod toolbench;
