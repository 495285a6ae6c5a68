//! Issue 12, hostile input: the config loader given anything — arbitrary text, a shipped
//! config with a value replaced by a hostile one — returns a config or a clear error, never
//! a panic, and never an accepted config that is not valid.

use std::path::PathBuf;

use proptest::prelude::*;
use sim_core::config::Config;

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// Hostile values for a config field: out of range, of another type, YAML's own tricks.
const HOSTILE_VALUES: &[&str] = &[
    "-1",
    "0",
    "18446744073709551616",
    "1e400",
    ".nan",
    "-.inf",
    "~",
    "\"\"",
    "[]",
    "{}",
    "999999999999999h",
    "0s-0s",
    "!!binary aGVsbG8=",
    "*nowhere",
    "&anchor x",
    "'unterminated",
    "{a: [b, {c: d}]}",
];

proptest! {
    /// Issue 12, hostile input: any text is a config or an error, never a panic.
    #[test]
    fn any_text_is_a_config_or_an_error(text in "\\PC{0,300}") {
        let _ = Config::from_yaml_str(&text);
    }

    /// Issue 12, hostile input: a shipped config with any one value replaced by a hostile
    /// one is read (and then valid: it round-trips) or refused naming a field, never a panic.
    #[test]
    fn a_shipped_config_with_any_value_replaced_is_read_or_refused(
        file in prop::sample::select(vec!["realistic.yaml", "quick.yaml", "demo.yaml"]),
        line in any::<prop::sample::Index>(),
        with in prop::sample::select(HOSTILE_VALUES),
    ) {
        let text = std::fs::read_to_string(configs_dir().join(file)).expect("shipped config");
        let lines: Vec<&str> = text.lines().collect();
        let at = line.index(lines.len());
        let edited: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| match l.split_once(':') {
                Some((key, _)) if i == at && !key.trim_start().starts_with('#') => {
                    format!("{key}: {with}")
                }
                _ => (*l).to_string(),
            })
            .collect();
        match Config::from_yaml_str(&edited.join("\n")) {
            Ok(config) => {
                let again = Config::from_yaml_str(&config.effective_yaml());
                prop_assert!(again.is_ok(), "accepted, but its own effective form is not: {again:?}");
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }
}
