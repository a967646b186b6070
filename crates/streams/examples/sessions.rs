//! Sessions of activity per user: records of a key less than `--window-ms` apart form one
//! session; each session's record count is written when the session closes.
//!
//! cargo run -p sluice-streams --example sessions -- --gateway ADDR --app-id s --input activity --output sessions --window-ms 300000

mod common;

use clap::Parser;
use sluice_streams::{SessionWindows, StreamsBuilder, Windowed};

fn main() -> std::process::ExitCode {
    let args = common::Args::parse();
    let b = StreamsBuilder::new();
    b.stream::<String, bytes::Bytes>(&args.input)
        .group_by_key()
        .windowed_by_session(SessionWindows::with_inactivity_gap(args.window_ms).grace(args.grace_ms))
        .emit_final()
        .count("sessions")
        .to_stream()
        .map(|w: Windowed<String>, n| (format!("{}@{}-{}", w.key, w.start, w.end), n.map(|n| n.to_string())))
        .to(&args.output);
    common::run(b.build(), &args)
}
