//! docker/observability, checked without pulling an image (there is no registry here): the
//! compose file is accepted by Compose, Prometheus's config by `promtool`, the Grafana data
//! sources carry the uids the dashboards and `simctl trace` links use, and every dashboard
//! parses and queries only its data sources. That each metric a dashboard queries is really
//! exported is checked against a real scrape by the chaos run (`chaos.rs`).

use std::path::PathBuf;
use std::process::Command;

use test_support::prometheus::tool;

use super::workspace;

fn stack() -> PathBuf {
    workspace().join("docker/observability")
}

/// Every PromQL expression in a dashboard: panel targets and annotations.
pub(super) fn queries(value: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    walk(value, &mut |key, value| {
        if key == "expr"
            && let Some(expr) = value.as_str()
        {
            found.push(expr.to_string());
        }
    });
    found
}

/// The `simulation_*` metric names an expression reads.
pub(super) fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("simulation_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn walk(value: &serde_json::Value, visit: &mut dyn FnMut(&str, &serde_json::Value)) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                visit(key, value);
                walk(value, visit);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, visit)),
        _ => {}
    }
}

#[test]
fn compose_accepts_the_stack() {
    // `docker compose` (v2) where installed, else the standalone `docker-compose`.
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut command = if v2 {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    };
    let output = command
        .current_dir(stack())
        .args(["-f", "compose.yaml", "config", "-q"])
        .output()
        .expect("docker compose or docker-compose (the machine's Docker engine with Compose)");
    assert!(
        output.status.success(),
        "compose config:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    let output = Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(stack().join("prometheus/prometheus.yml"))
        .output()
        .expect("promtool (./scripts/setup.sh unpacks it into .tools/)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn data_sources_and_dashboards_agree() {
    let text =
        std::fs::read_to_string(stack().join("grafana/provisioning/datasources/datasources.yaml"))
            .expect("datasources");
    let sources: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("parses");
    let uids: Vec<&str> = sources["datasources"]
        .as_sequence()
        .expect("a list")
        .iter()
        .filter_map(|s| s["uid"].as_str())
        .collect();
    assert_eq!(uids, ["prometheus", "tempo"]);
    let tempo = &sources["datasources"][1]["jsonData"];
    assert_eq!(
        tempo["tracesToMetrics"]["datasourceUid"].as_str(),
        Some("prometheus")
    );
    assert_eq!(
        tempo["serviceMap"]["datasourceUid"].as_str(),
        Some("prometheus")
    );
    let dashboards = stack().join("grafana/dashboards");
    let mut count = 0;
    for entry in std::fs::read_dir(&dashboards).expect("dashboards") {
        let path = entry.expect("entry").path();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let panels = json["panels"].as_array().expect("panels");
        assert!(
            panels.len() >= 10,
            "{}: {} panels",
            path.display(),
            panels.len()
        );
        let mut used = Vec::new();
        walk(&json, &mut |key, value| {
            if key == "datasource"
                && let Some(uid) = value["uid"].as_str()
            {
                used.push(uid.to_string());
            }
        });
        assert!(
            used.iter().all(|uid| uids.contains(&uid.as_str())),
            "{}: data sources {used:?}",
            path.display()
        );
        assert!(used.iter().any(|u| u == "tempo"), "a Tempo search panel");
        assert!(!queries(&json).is_empty());
        count += 1;
    }
    assert!(count >= 1, "no dashboard in {}", dashboards.display());
}

#[test]
fn metric_names_are_read_from_expressions() {
    assert_eq!(
        metric_names("sum by (le) (rate(simulation_a_bucket[1m])) / simulation_b"),
        ["simulation_a_bucket", "simulation_b"]
    );
}
