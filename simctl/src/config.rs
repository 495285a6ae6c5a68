//! `simctl config validate|dump`, and reading a run configuration for every command that
//! takes one. A config that cannot be read or is invalid is bad input (exit 2); the error
//! names the file, and sim-core's message names the field path and the value.

use std::path::Path;

use anyhow::Context;
use sim_core::config::{Config, format_duration};

use crate::exit::{Exit, ExitError, bad_input};

/// `simctl config validate FILE`: one line about the run it describes.
pub fn validate(file: &Path) -> Result<Exit, ExitError> {
    let config = load(file)?;
    println!(
        "{}: valid ({} partitions, {} producers, {} workers, {})",
        file.display(),
        config.partitions.count,
        config.producers.count,
        config.workers.count,
        format_duration(config.simulation.duration)
    );
    Ok(Exit::Pass)
}

/// `simctl config dump FILE`: the effective configuration, defaults filled in.
pub fn dump(file: &Path) -> Result<Exit, ExitError> {
    print!("{}", load(file)?.effective_yaml());
    Ok(Exit::Pass)
}

/// The file's text (sent to the coordinator as written) and the config it validates to.
pub fn read(path: &Path) -> Result<(String, Config), ExitError> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(bad_input)?;
    let config = Config::from_yaml_str(&text)
        .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", path.display())))?;
    Ok((text, config))
}

/// The validated config in `path`.
pub fn load(path: &Path) -> Result<Config, ExitError> {
    read(path).map(|(_, config)| config)
}
