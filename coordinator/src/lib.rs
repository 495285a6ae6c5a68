//! The parti-sim coordinator: owns a run — validates the config, places producers and
//! workers on agents, tracks every message, and gives the verdict.
//!
//! Layout:
//! - [`config`]: the YAML run configuration (the plan's schema), defaults and validation.
//! - [`tracker`]: per-partition message accounting and the verdict's evidence.

#![forbid(unsafe_code)]

pub mod config;
pub mod tracker;
