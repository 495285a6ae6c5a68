//! Links a person follows: Grafana's Explore showing one trace.

/// Grafana's Explore at `grafana`, showing trace `trace_id` from the Tempo data source (uid
/// `tempo`, as docker/'s provisioning names it).
pub fn explore_url(grafana: &str, trace_id: &str) -> String {
    let panes = format!(
        r#"{{"trace":{{"datasource":"tempo","queries":[{{"refId":"A","datasource":{{"type":"tempo","uid":"tempo"}},"queryType":"traceql","query":"{trace_id}"}}],"range":{{"from":"now-7d","to":"now"}}}}}}"#
    );
    format!(
        "{}/explore?schemaVersion=1&orgId=1&panes={}",
        grafana.trim_end_matches('/'),
        percent_encode(&panes)
    )
}

/// `text` as a URL query value: everything but unreserved characters percent-encoded.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_explore_link_names_the_trace() {
        let url = explore_url("http://localhost:3000/", "abc123");
        assert!(url.starts_with("http://localhost:3000/explore?"), "{url}");
        assert!(url.contains("%22query%22%3A%22abc123%22"), "{url}");
        assert_eq!(percent_encode("a b/c~"), "a%20b%2Fc~");
    }
}
