//! Lines of text in, the count of each word out: a table written to a topic as its updates
//! (key = word, value = count as an 8-byte big-endian integer).
//!
//! cargo run -p sluice-streams --example wordcount -- --gateway ADDR --app-id wc --input lines --output counts

mod common;

use clap::Parser;
use sluice_streams::StreamsBuilder;

fn main() -> std::process::ExitCode {
    let args = common::Args::parse();
    let b = StreamsBuilder::new();
    b.stream::<Option<String>, String>(&args.input)
        .flat_map_values(|_, line| line.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>())
        .select_key(|_, word| word.clone())
        .group_by_key()
        .count("word-counts")
        .to_stream()
        .to(&args.output);
    common::run(b.build(), &args)
}
