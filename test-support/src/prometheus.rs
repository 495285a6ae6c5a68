//! A real Prometheus server (Debian's package, which `scripts/setup.sh` unpacks into
//! `.tools/`), on loopback, scraping whatever targets a test names once it knows them
//! (a file-based service discovery file, picked up as it changes), queried over its HTTP API.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_until;

/// How often the test Prometheus scrapes.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// A running Prometheus, killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// One series of an instant query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its labels (`__name__` among them for a plain selector).
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A `.tools/bin/<name>` of the workspace (setup.sh's), else `<name>` on `$PATH`.
pub fn tool(name: &str) -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/bin")
        .join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

impl Prometheus {
    /// Start one with an empty target list (a few ports are tried: the free port is found by
    /// binding and releasing it, and another process may take it in between).
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("prometheus-")
            .tempdir()
            .expect("tempdir");
        let targets = dir.path().join("targets.json");
        std::fs::write(&targets, "[]").expect("targets file");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {s}s\n  scrape_timeout: {s}s\n\
                 scrape_configs:\n  - job_name: parti-sim\n    file_sd_configs:\n\
                 \x20     - files: ['{}']\n        refresh_interval: 1s\n",
                targets.display(),
                s = SCRAPE_INTERVAL.as_secs()
            ),
        )
        .expect("config");
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(tool("prometheus"))
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.path().join("prometheus.log")).expect("log"),
                ))
                .spawn()
                .expect("start prometheus: run ./scripts/setup.sh (unpacks it into .tools/)");
            let mut exited = None;
            wait_until("prometheus ready", Duration::from_secs(30), || {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return Ok(());
                }
                match http_get(port, "/-/ready") {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            });
            match exited {
                None => return Self { child, port, dir },
                Some(status) => failures.push(format!(
                    "port {port}: {status}: {}",
                    std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
                )),
            }
        }
        panic!("prometheus did not start: {failures:#?}");
    }

    /// Scrape `target` (`host:port`) from now on, as job `parti-sim`.
    pub fn scrape(&self, target: &str) {
        let file = self.dir.path().join("targets.json");
        let staged = self.dir.path().join("targets.json.new");
        std::fs::write(&staged, format!("[{{\"targets\": [\"{target}\"]}}]")).expect("targets");
        // Renamed into place: the watcher never reads a half-written file.
        std::fs::rename(&staged, &file).expect("targets");
    }

    /// Wait until a scrape of the target has succeeded (`up == 1`).
    pub fn wait_until_up(&self, within: Duration) {
        wait_until("the target scraped (up == 1)", within, || {
            let up = self.query("up");
            if up.iter().any(|s| s.value == 1.0) {
                Ok(())
            } else {
                Err(format!("{up:?}"))
            }
        });
    }

    /// An instant query's vector (panics on an error answer: the query is the test's).
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        let path = format!(
            "/api/v1/query?query={}",
            telemetry::links::percent_encode(promql)
        );
        let body = match http_get(self.port, &path) {
            Ok((200, body)) => body,
            other => panic!("query {promql:?}: {other:?}"),
        };
        let json: serde_json::Value = serde_json::from_str(&body).expect("query answer");
        let result = json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        result
            .iter()
            .map(|series| Sample {
                labels: series["metric"]
                    .as_object()
                    .map(|labels| {
                        labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect()
    }

    /// The single value of a query that must answer with exactly one series.
    pub fn value(&self, promql: &str) -> f64 {
        match self.query(promql).as_slice() {
            [one] => one.value,
            other => panic!("{promql:?}: expected one series, got {other:?}"),
        }
    }

    /// Every metric name Prometheus has stored.
    pub fn metric_names(&self) -> Vec<String> {
        let body = match http_get(self.port, "/api/v1/label/__name__/values") {
            Ok((200, body)) => body,
            other => panic!("names: {other:?}"),
        };
        let json: serde_json::Value = serde_json::from_str(&body).expect("names");
        json["data"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// `GET path` on `127.0.0.1:port` (HTTP/1.0, so the body ends with the connection):
/// status and body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}
