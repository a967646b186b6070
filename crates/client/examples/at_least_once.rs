//! At-least-once consumption in a consumer group: records are processed, then their offsets
//! committed, so a crash re-delivers what was not yet committed and loses nothing.
//!
//! ```text
//! cargo run -p sluice-client --example at_least_once -- [GATEWAY] [TOPIC] [GROUP]
//! ```
//! (defaults: 127.0.0.1:7070 events example-alo). Stop it with Ctrl-C: it commits and leaves.

use std::time::Duration;

use sluice_client::Client;
use sluice_client::group::{DeliveryMode, GroupConfig, GroupConsumer, RebalanceListener, TopicPartition};

/// Prints the partitions this member gains and loses.
struct Log;

impl RebalanceListener for Log {
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        eprintln!("assigned {partitions:?}");
    }
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        eprintln!("revoked {partitions:?} (their positions were committed first)");
    }
    fn on_lost(&mut self, partitions: &[TopicPartition]) {
        eprintln!("lost {partitions:?}: another member may re-process what was not committed");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let (gateway, topic, group) = (arg(0, "127.0.0.1:7070"), arg(1, "events"), arg(2, "example-alo"));

    let client = Client::connect(&gateway).await?;
    let cfg = GroupConfig {
        delivery: DeliveryMode::AtLeastOnce,
        // Commits happen at the next poll after this interval: what earlier polls returned
        // has been processed by then.
        auto_commit_interval: Some(Duration::from_secs(1)),
        ..GroupConfig::new(&group)
    };
    let mut consumer = GroupConsumer::subscribe(client, &[topic.as_str()], cfg).await?;
    consumer.set_listener(Log);
    eprintln!("member {} of group '{group}'", consumer.member_id());
    loop {
        let records = tokio::select! {
            r = consumer.poll(Duration::from_secs(1)) => r?,
            _ = tokio::signal::ctrl_c() => break,
        };
        for r in &records {
            // Processing goes here; it must be done before the next poll.
            println!(
                "{}-{}@{}: {}",
                r.topic,
                r.partition,
                r.offset,
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
            );
        }
    }
    // Commits what was processed and leaves the group, so its partitions move at once.
    consumer.close().await?;
    Ok(())
}
