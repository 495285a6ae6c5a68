//! Reading a run's JSON report (`simctl run --json`, `simctl report --json`) in assertions.
//!
//! Absent or mistyped fields read as empty, so an assertion on them fails with the report in
//! its message rather than a panic inside the reader.

use std::collections::BTreeSet;

use serde_json::Value;

/// The elements of the array `value`; none when it is absent or not an array.
pub fn elements(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The strings among the elements of the array `value`.
pub fn strings(value: &Value) -> Vec<&str> {
    elements(value).iter().filter_map(Value::as_str).collect()
}

/// The `reasons` lines of a report.
pub fn reasons(report: &Value) -> Vec<&str> {
    strings(&report["reasons"])
}

/// The `kind` of each of a report's `failures`.
pub fn failure_kinds(report: &Value) -> BTreeSet<String> {
    elements(&report["failures"])
        .iter()
        .filter_map(|f| f["kind"].as_str().map(str::to_string))
        .collect()
}

/// The partitions the tracker's sampled anomalies of `kind` name.
pub fn anomaly_partitions(report: &Value, kind: &str) -> BTreeSet<u64> {
    elements(&report["tracker"]["anomalies"])
        .iter()
        .filter(|a| a["kind"] == kind)
        .filter_map(|a| a["partition"].as_u64())
        .collect()
}
