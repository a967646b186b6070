//! At-most-once consumption in a consumer group: each poll commits the position after the
//! records it returns before returning them, so a crash never re-delivers a record (it may
//! lose the ones being processed).
//!
//! ```text
//! cargo run -p sluice-client --example at_most_once -- [GATEWAY] [TOPIC] [GROUP]
//! ```
//! (defaults: 127.0.0.1:7070 events example-amo).

use std::time::Duration;

use sluice_client::Client;
use sluice_client::group::{DeliveryMode, GroupConfig, GroupConsumer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let (gateway, topic, group) = (arg(0, "127.0.0.1:7070"), arg(1, "events"), arg(2, "example-amo"));

    let client = Client::connect(&gateway).await?;
    let cfg = GroupConfig { delivery: DeliveryMode::AtMostOnce, ..GroupConfig::new(&group) };
    let mut consumer = GroupConsumer::subscribe(client, &[topic.as_str()], cfg).await?;
    eprintln!("member {} of group '{group}'", consumer.member_id());
    loop {
        let records = tokio::select! {
            r = consumer.poll(Duration::from_secs(1)) => r?,
            _ = tokio::signal::ctrl_c() => break,
        };
        // Already committed: if this process dies now, these records are not seen again.
        for r in &records {
            println!(
                "{}-{}@{}: {}",
                r.topic,
                r.partition,
                r.offset,
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
            );
        }
    }
    consumer.close().await?;
    Ok(())
}
