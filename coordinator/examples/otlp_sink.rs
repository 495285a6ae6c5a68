//! An OTLP gRPC trace sink for benchmarks (scripts/bench-e2e.sh): accepts spans on a loopback
//! port and counts them, so traced runs are measured against a collector that answers.
//!
//! Usage: `otlp_sink COUNT_FILE` — prints `endpoint=http://127.0.0.1:<port>`, then rewrites
//! COUNT_FILE with the number of spans received every 200 ms until killed.

use std::time::Duration;

use test_support::otlp::Receiver;

fn main() {
    let Some(count_file) = std::env::args().nth(1) else {
        eprintln!("usage: otlp_sink COUNT_FILE");
        std::process::exit(2);
    };
    let receiver = Receiver::counting();
    println!("endpoint={}", receiver.endpoint());
    loop {
        let count = receiver.span_count();
        let _ = std::fs::write(&count_file, format!("{count}\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
}
