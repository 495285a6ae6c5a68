//! The run's metrics as data, and as the Prometheus text exposition format (version 0.0.4),
//! written by hand: a scrape (or a push) renders the run's state at that moment, so there is
//! no registry of instruments to keep in step with the engine — the counters *are* the
//! tracker's, read when Prometheus asks.
//!
//! In the text a family is declared once (`# HELP`, `# TYPE`), then its samples follow;
//! label values are escaped as the format requires (`\\`, `"`, newline).

use std::fmt::Write;

/// What a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when a new run starts: Prometheus's `rate` handles that).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets, a sum and a count.
    Histogram,
}

impl Kind {
    /// The name the text format gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// Fixed-bound buckets of observations (seconds): cheap to record on the report path, and
/// what a Prometheus histogram exposes.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    /// Upper bounds, ascending (the `+Inf` bucket is implied).
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative), the last one past every bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Buckets {
    /// Empty buckets with these ascending upper bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Count one observation.
    pub fn record(&mut self, value: f64) {
        let at = self.bounds.partition_point(|bound| *bound < value);
        self.counts[at] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// Buckets whose per-bucket counts, sum and count are already known (a histogram kept
    /// elsewhere, read at scrape time).
    ///
    /// `counts` has one entry per bound plus the overflow bucket; a wrong length is padded
    /// or cut.
    pub fn from_counts(bounds: &'static [f64], mut counts: Vec<u64>, sum: f64) -> Self {
        counts.resize(bounds.len() + 1, 0);
        let count = counts.iter().sum();
        Self {
            bounds,
            counts,
            sum,
            count,
        }
    }

    /// Upper bounds, ascending (the `+Inf` bucket implied).
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Observations per bucket, not cumulative; one more than [`Self::bounds`].
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Sum of the observations.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// The run's metrics at one moment, family by family: what a scrape serves as text
/// ([`Exposition::text`]) and a push sends over OTLP (`metrics::otlp`).
#[derive(Debug, Default, Clone)]
pub struct Exposition {
    families: Vec<Family>,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    /// No families yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declare a family; its samples follow through the returned handle.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &str) -> &mut Family {
        self.families.push(Family {
            name,
            kind,
            help: help.to_string(),
            series: Vec::new(),
        });
        self.families
            .last_mut()
            .expect("a family was pushed just now")
    }

    /// Every family, in the order declared.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// The text, ready to serve as `text/plain; version=0.0.4`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for family in &self.families {
            family.write(&mut out);
        }
        out
    }
}

/// One family: a name, what it is, and its series.
#[derive(Debug, Clone)]
pub struct Family {
    name: &'static str,
    kind: Kind,
    help: String,
    series: Vec<Series>,
}

/// One label set's value.
#[derive(Debug, Clone)]
pub struct Series {
    /// Label pairs, in the order given.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: Value,
}

/// A series' value: a number (counter, gauge) or a histogram.
#[derive(Debug, Clone)]
pub enum Value {
    /// A counter's or a gauge's value.
    Number(f64),
    /// A histogram's buckets.
    Histogram(Buckets),
}

impl Family {
    /// One sample of a counter or gauge.
    pub fn sample(&mut self, labels: Labels<'_>, value: f64) -> &mut Self {
        self.push(labels, Value::Number(value))
    }

    /// A histogram's series for one label set.
    pub fn histogram(&mut self, labels: Labels<'_>, buckets: &Buckets) -> &mut Self {
        self.push(labels, Value::Histogram(buckets.clone()))
    }

    fn push(&mut self, labels: Labels<'_>, value: Value) -> &mut Self {
        let labels = labels
            .iter()
            .map(|(name, value)| ((*name).to_string(), (*value).to_string()))
            .collect();
        self.series.push(Series { labels, value });
        self
    }

    /// The family's name, as Prometheus shows it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What it is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Its description.
    pub fn help(&self) -> &str {
        &self.help
    }

    /// Its series, in the order given.
    pub fn series(&self) -> &[Series] {
        &self.series
    }

    fn write(&self, out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", escape_help(&self.help));
        let _ = writeln!(out, "# TYPE {name} {}", self.kind.as_str());
        for series in &self.series {
            let labels = &series.labels;
            match &series.value {
                Value::Number(value) => line(out, (name, ""), labels, None, *value),
                Value::Histogram(buckets) => {
                    let mut cumulative = 0;
                    for (at, count) in buckets.counts.iter().enumerate() {
                        cumulative += count;
                        let le = match buckets.bounds.get(at) {
                            Some(bound) => format_value(*bound),
                            None => "+Inf".to_string(),
                        };
                        line(out, (name, "_bucket"), labels, Some(&le), cumulative as f64);
                    }
                    line(out, (name, "_sum"), labels, None, buckets.sum);
                    line(out, (name, "_count"), labels, None, buckets.count as f64);
                }
            }
        }
    }
}

/// One sample line: `name{labels} value`.
fn line(
    out: &mut String,
    (name, suffix): (&str, &str),
    labels: &[(String, String)],
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    let le = le.map(|le| ("le", le));
    let mut pairs = labels
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .chain(le)
        .peekable();
    if pairs.peek().is_some() {
        out.push('{');
        for (at, (name, value)) in pairs.enumerate() {
            if at > 0 {
                out.push(',');
            }
            let _ = write!(out, "{name}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(value));
    out.push('\n');
}

/// A sample value as the format spells it.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        value.to_string()
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaped_labels() {
        let mut e = Exposition::new();
        e.family("x_total", Kind::Counter, "Things.\nMore")
            .sample(&[], 3.0)
            .sample(&[("who", "a\"b\\c\nd")], 1.5);
        let text = e.text();
        assert_eq!(
            text,
            "# HELP x_total Things.\\nMore\n# TYPE x_total counter\nx_total 3\n\
             x_total{who=\"a\\\"b\\\\c\\nd\"} 1.5\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        static BOUNDS: [f64; 2] = [0.1, 1.0];
        let mut b = Buckets::new(&BOUNDS);
        for v in [0.05, 0.1, 0.5, 7.0] {
            b.record(v);
        }
        let mut e = Exposition::new();
        e.family("d_seconds", Kind::Histogram, "D.")
            .histogram(&[("k", "v")], &b);
        let text = e.text();
        assert!(
            text.contains("d_seconds_bucket{k=\"v\",le=\"0.1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_bucket{k=\"v\",le=\"1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("d_seconds_bucket{k=\"v\",le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("d_seconds_count{k=\"v\"} 4\n"), "{text}");
        assert!(text.contains("d_seconds_sum{k=\"v\"} 7.65\n"), "{text}");
    }

    #[test]
    fn special_values() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(1e21), "1000000000000000000000");
    }
}
