//! Records per key in tumbling windows (one minute by default), final results only: each
//! window's count is written once, when the window closes (after `--grace-ms`).
//!
//! cargo run -p sluice-streams --example windowed_counts -- --gateway ADDR --app-id wc --input clicks --output clicks-per-minute

mod common;

use clap::Parser;
use sluice_streams::{StreamsBuilder, TimeWindows, Windowed};

fn main() -> std::process::ExitCode {
    let args = common::Args::parse();
    let b = StreamsBuilder::new();
    b.stream::<String, bytes::Bytes>(&args.input)
        .group_by_key()
        .windowed_by(TimeWindows::of(args.window_ms).grace(args.grace_ms))
        .emit_final()
        .count("window-counts")
        .to_stream()
        // "key@start" as the key, the count as text: readable with `sluice consume`.
        .map(|w: Windowed<String>, n| (format!("{}@{}", w.key, w.start), n.map(|n| n.to_string())))
        .to(&args.output);
    common::run(b.build(), &args)
}
