//! The report as a picture: one self-contained HTML file (inline SVG and CSS, nothing fetched)
//! — the verdict, throughput and latency over time with every fault shaded and labelled, the
//! recovery of each fault, and which worker owned which partition when.
//!
//! Drawn from the run's [`RunSummary`] and [`Timeline`], the same record `simctl report
//! --run-dir` judges, so the picture of a run directory can be drawn again at any time.
//! At 1500 partitions the ownership chart gives each partition one pixel row, sorted by their
//! first owner, so each worker's share is a band and every move a change of colour.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::chaos::FaultRecord;
use crate::report::RunSummary;
use crate::timeline::{Sample, Timeline};

/// Chart width in SVG units (the page scales it).
const WIDTH: f64 = 1000.0;
/// Height of the throughput and latency charts.
const CHART_HEIGHT: f64 = 220.0;
/// Left margin for axis labels.
const LEFT: f64 = 60.0;

/// The whole page.
pub fn render(summary: &RunSummary, timeline: &Timeline) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let outcome = summary.judgement.outcome;
    let end_s = summary
        .elapsed_s
        .max(timeline.samples.last().map_or(0.0, |s| s.at_s))
        .max(1.0);
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{id}: {outcome}</title><style>{STYLE}</style></head><body>\n\
         <h1>{id} <span class=\"{class}\">{verdict}</span></h1>\n",
        id = escape(&summary.run_id),
        outcome = outcome.as_str(),
        class = outcome.as_str(),
        verdict = outcome.to_string().to_uppercase(),
    );
    let t = &summary.tracker;
    let _ = writeln!(
        page,
        "<p>{:.0}s of {:.0}s; {} partitions, {} producers, {} workers; sent {}, received {}, \
         lost {}, duplicates {}, ownership overlaps {}; {} faults.</p>",
        summary.elapsed_s,
        summary.duration_s,
        summary.partitions,
        summary.producers,
        summary.workers,
        t.sent,
        t.received,
        t.lost,
        t.duplicates(),
        t.ownership_overlaps,
        summary
            .faults
            .iter()
            .filter(|f| f.outcome.is_injected())
            .count()
    );
    if !summary.judgement.failures.is_empty() {
        page.push_str("<ul class=\"reasons\">\n");
        for failure in &summary.judgement.failures {
            let _ = writeln!(page, "<li>{}</li>", escape(&failure.to_string()));
        }
        page.push_str("</ul>\n");
    }
    let rates = rates(&timeline.samples);
    page.push_str("<h2>Throughput (messages/s)</h2>\n");
    chart(
        &mut page,
        end_s,
        &summary.faults,
        &[
            ("sent", "#1f77b4", &rates.sent),
            ("processed", "#2ca02c", &rates.received),
            ("in flight", "#ff7f0e", &rates.in_flight),
        ],
    );
    page.push_str("<h2>Latency, publish → processed (ms)</h2>\n");
    chart(
        &mut page,
        end_s,
        &summary.faults,
        &[
            ("p50", "#9467bd", &rates.p50),
            ("p99", "#d62728", &rates.p99),
        ],
    );
    recoveries(&mut page, &summary.faults);
    page.push_str("<h2>Partition ownership</h2>\n");
    ownership(&mut page, end_s, timeline, &summary.faults);
    page.push_str("</body></html>\n");
    page
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1100px}\
    h1 span{padding:0 .4em;border-radius:4px;color:#fff}\
    .pass{background:#2ca02c}.fail{background:#d62728}.infrastructure{background:#7f7f7f}\
    svg{width:100%;height:auto;border:1px solid #ddd}\
    .fault{fill:#d62728;fill-opacity:.12}.fault-label{font-size:10px;fill:#d62728}\
    .axis{font-size:10px;fill:#555}.legend{font-size:11px}\
    table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}";

/// Per-second rates and latencies, each a series of (at_s, value).
struct Series {
    sent: Vec<(f64, f64)>,
    received: Vec<(f64, f64)>,
    in_flight: Vec<(f64, f64)>,
    p50: Vec<(f64, f64)>,
    p99: Vec<(f64, f64)>,
}

fn rates(samples: &[Sample]) -> Series {
    let mut series = Series {
        sent: Vec::new(),
        received: Vec::new(),
        in_flight: Vec::new(),
        p50: Vec::new(),
        p99: Vec::new(),
    };
    for pair in samples.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let dt = (b.at_s - a.at_s).max(1e-3);
        series
            .sent
            .push((b.at_s, b.sent.saturating_sub(a.sent) as f64 / dt));
        series
            .received
            .push((b.at_s, b.received.saturating_sub(a.received) as f64 / dt));
        series.in_flight.push((b.at_s, b.in_flight as f64));
        series.p50.push((b.at_s, b.p50_ms));
        series.p99.push((b.at_s, b.p99_ms));
    }
    series
}

/// Where a fault's band ends: its recovery's end, else a few seconds on (so it shows).
fn band_end(fault: &FaultRecord) -> f64 {
    match (fault.recovery_from_s, fault.rebalance_s) {
        (Some(from), Some(took)) => from + took,
        _ => fault.at_s + 2.0,
    }
}

/// Shaded bands, one per injected fault, labelled with its type.
fn fault_bands(page: &mut String, end_s: f64, faults: &[FaultRecord], height: f64) {
    let x = |s: f64| LEFT + (s / end_s) * (WIDTH - LEFT);
    for (index, fault) in faults
        .iter()
        .enumerate()
        .filter(|(_, f)| f.outcome.is_injected())
    {
        let (from, to) = (x(fault.at_s), x(band_end(fault).min(end_s)));
        let _ = writeln!(
            page,
            "<rect class=\"fault\" data-fault=\"{index}\" x=\"{from:.1}\" y=\"0\" width=\"{:.1}\" height=\"{height:.0}\">\
             <title>{} {} at {:.1}s, recovery {}</title></rect>\
             <text class=\"fault-label\" x=\"{:.1}\" y=\"10\">{}</text>",
            (to - from).max(1.0),
            fault.event.as_str(),
            escape(&fault.target),
            fault.at_s,
            fault
                .rebalance_s
                .map_or_else(|| "not measured".into(), |s| format!("{s:.1}s")),
            from + 1.0,
            fault.event.as_str()
        );
    }
}

/// One line of a chart: its name, its colour, its points (at_s, value).
type Line<'a> = (&'a str, &'a str, &'a Vec<(f64, f64)>);

/// A line chart of `lines` over the run, faults shaded.
fn chart(page: &mut String, end_s: f64, faults: &[FaultRecord], lines: &[Line<'_>]) {
    let height = CHART_HEIGHT;
    let top = lines
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|(_, v)| *v))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let x = |s: f64| LEFT + (s / end_s) * (WIDTH - LEFT);
    let y = |v: f64| height - 20.0 - (v / top) * (height - 40.0);
    let _ = writeln!(
        page,
        "<svg viewBox=\"0 0 {WIDTH} {height}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    fault_bands(page, end_s, faults, height - 20.0);
    for fraction in [0.0, 0.5, 1.0] {
        let v = top * fraction;
        let _ = writeln!(
            page,
            "<text class=\"axis\" x=\"2\" y=\"{:.1}\">{}</text>",
            y(v) + 3.0,
            short(v)
        );
    }
    let _ = writeln!(
        page,
        "<text class=\"axis\" x=\"{LEFT}\" y=\"{:.0}\">0s</text>\
         <text class=\"axis\" x=\"{:.0}\" y=\"{:.0}\">{end_s:.0}s</text>",
        height - 5.0,
        WIDTH - 30.0,
        height - 5.0
    );
    for (at, (name, colour, points)) in lines.iter().enumerate() {
        if !points.is_empty() {
            let path: Vec<String> = points
                .iter()
                .map(|(s, v)| format!("{:.1},{:.1}", x(*s), y(*v)))
                .collect();
            let _ = writeln!(
                page,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
                path.join(" ")
            );
        }
        let _ = writeln!(
            page,
            "<text class=\"legend\" x=\"{:.0}\" y=\"{:.0}\" fill=\"{colour}\">{name}</text>",
            WIDTH - 220.0 + at as f64 * 70.0,
            24.0
        );
    }
    page.push_str("</svg>\n");
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The table of faults and their measured recoveries.
fn recoveries(page: &mut String, faults: &[FaultRecord]) {
    page.push_str(
        "<h2>Faults and recoveries</h2>\n<table><tr><th>at</th><th>fault</th><th>target</th>\
         <th>outcome</th><th>recovery</th><th>catch-up</th><th>moved / ideal</th></tr>\n",
    );
    let seconds = |s: Option<f64>| s.map_or_else(|| "-".into(), |s| format!("{s:.1}s"));
    for fault in faults {
        let _ = writeln!(
            page,
            "<tr><td>{:.1}s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            fault.at_s,
            fault.event.as_str(),
            escape(&fault.target),
            escape(&fault.outcome.to_string()),
            seconds(fault.rebalance_s),
            seconds(fault.catch_up_s),
            match (fault.moved, fault.ideal_moves) {
                (Some(m), Some(i)) => format!("{m} / {i}"),
                (Some(m), None) => m.to_string(),
                _ => "-".into(),
            }
        );
    }
    page.push_str("</table>\n");
}

/// Ten colours far apart; past ten workers they repeat darker, then lighter.
const PALETTE: [(u16, u8); 10] = [
    (210, 60),
    (30, 90),
    (120, 45),
    (0, 70),
    (270, 45),
    (20, 35),
    (320, 55),
    (0, 0),
    (60, 60),
    (185, 70),
];

/// The colour of the `index`th worker (sorted by name): distinct for the first ten.
fn colour(index: usize) -> String {
    let (hue, saturation) = PALETTE[index % PALETTE.len()];
    let lightness = [50, 35, 65][(index / PALETTE.len()) % 3];
    format!("hsl({hue},{saturation}%,{lightness}%)")
}

/// Rows of partitions over time, coloured by owner; faults shaded.
fn ownership(page: &mut String, end_s: f64, timeline: &Timeline, faults: &[FaultRecord]) {
    // Each partition's owner intervals.
    let mut intervals: BTreeMap<u32, Vec<(f64, String)>> = BTreeMap::new();
    for change in &timeline.owners {
        intervals
            .entry(change.partition)
            .or_default()
            .push((change.at_s, change.worker.clone()));
    }
    if intervals.is_empty() {
        page.push_str("<p>No assignment document was seen.</p>\n");
        return;
    }
    // Sorted by first owner, then id: each worker's first share is one band.
    let mut order: Vec<(&u32, &Vec<(f64, String)>)> = intervals.iter().collect();
    order.sort_by(|a, b| a.1[0].1.cmp(&b.1[0].1).then(a.0.cmp(b.0)));
    let row = (600.0 / order.len() as f64).clamp(1.0, 12.0);
    let height = row * order.len() as f64 + 20.0;
    let x = |s: f64| LEFT + (s / end_s) * (WIDTH - LEFT);
    let _ = writeln!(
        page,
        "<svg viewBox=\"0 0 {WIDTH} {height:.0}\" xmlns=\"http://www.w3.org/2000/svg\" \
         shape-rendering=\"crispEdges\">"
    );
    // Workers by name, each its colour; "" (no owner) is white.
    let workers: BTreeMap<&str, String> = timeline
        .owners
        .iter()
        .map(|c| c.worker.as_str())
        .filter(|w| !w.is_empty())
        .collect::<std::collections::BTreeSet<&str>>()
        .into_iter()
        .enumerate()
        .map(|(index, worker)| (worker, colour(index)))
        .collect();
    let fill = |worker: &str| workers.get(worker).map_or("#ffffff", String::as_str);
    for (index, (partition, changes)) in order.iter().enumerate() {
        let top = index as f64 * row;
        for (at, (from, worker)) in changes.iter().enumerate() {
            let to = changes.get(at + 1).map_or(end_s, |next| next.0);
            let _ = write!(
                page,
                "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{row:.1}\" \
                 fill=\"{}\"><title>partition {partition}: {} from {from:.1}s</title></rect>",
                x(*from),
                (x(to) - x(*from)).max(0.5),
                fill(worker),
                if worker.is_empty() {
                    "no owner".to_string()
                } else {
                    escape(worker)
                }
            );
        }
        page.push('\n');
    }
    fault_bands(page, end_s, faults, height - 20.0);
    page.push_str("</svg>\n<p class=\"legend\">");
    for (worker, colour) in &workers {
        let _ = write!(
            page,
            "<span style=\"color:{colour}\">&#9632;</span> {} ",
            escape(worker)
        );
    }
    let _ = writeln!(
        page,
        "&nbsp; {} partitions, one row each, sorted by first owner.</p>",
        order.len()
    );
    if timeline.owners_dropped > 0 {
        let _ = writeln!(
            page,
            "<p>{} later owner changes are not drawn (the history keeps the first {}).</p>",
            timeline.owners_dropped,
            crate::timeline::MAX_OWNER_CHANGES
        );
    }
}

/// Text safe inside HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::chaos::FaultOutcome;
    use crate::config::ChaosEvent;
    use crate::events::EndReason;
    use crate::timeline::Counters;
    use crate::tracker::{Tracker, TrackerConfig};
    use crate::verdict::Judgement;
    use serde_json::json;

    fn fault(at_s: f64, event: ChaosEvent, outcome: FaultOutcome) -> FaultRecord {
        FaultRecord {
            at_s,
            event,
            target: "worker-<1>".into(),
            outcome,
            detail: String::new(),
            moved: Some(2),
            ideal_moves: Some(2),
            duplicates: None,
            rebalance_s: Some(3.0),
            recovery_from_s: Some(at_s),
            catch_up_s: Some(0.5),
        }
    }

    #[test]
    fn one_band_per_injected_fault_and_nothing_fetched() {
        let tracker = Tracker::new(TrackerConfig::default(), 4).snapshot(0);
        let mut summary = RunSummary::bare(
            "run-1".into(),
            Judgement::new(Vec::new()),
            EndReason::Drained,
            tracker,
        );
        summary.elapsed_s = 60.0;
        summary.faults = vec![
            fault(10.0, ChaosEvent::WorkerCrash, FaultOutcome::Injected),
            fault(
                20.0,
                ChaosEvent::WorkerPause,
                FaultOutcome::Skipped("none".into()),
            ),
            fault(30.0, ChaosEvent::LeaderFailure, FaultOutcome::Injected),
        ];
        let mut timeline = Timeline::default();
        for s in 0..60u64 {
            timeline.latency(2_000);
            timeline.sample(
                s as f64,
                Counters {
                    sent: s * 80,
                    received: s * 80,
                    ..Counters::default()
                },
            );
        }
        timeline.assignment(
            1.0,
            &json!({"owners": {"worker-0": ["0", "1"], "worker-1": ["2", "3"]}}),
        );
        timeline.assignment(12.0, &json!({"owners": {"worker-1": ["0", "1", "2", "3"]}}));
        let page = render(&summary, &timeline);
        let bands: BTreeSet<&str> = page
            .split("data-fault=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert_eq!(
            bands,
            ["0", "2"].into(),
            "the injected faults, in every chart"
        );
        assert!(page.contains("worker-&lt;1&gt;"), "escaped");
        for fetching in ["src=", "<link", "<script", "url(", "@import"] {
            assert!(!page.contains(fetching), "self-contained: {fetching}");
        }
        assert!(
            page.contains("partition 0: worker-1 from 12.0s"),
            "ownership moves"
        );
        assert!(page.contains(">PASS<"));
    }
}
