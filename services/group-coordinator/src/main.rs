//! `sluice-group-coordinator`: consumer groups (membership, assignment, committed offsets) and, later, transactions.

use clap::Parser;
use sluice_runtime::{CommonArgs, Shutdown};

#[derive(Parser)]
#[command(version, about = "Sluice group-coordinator")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_core::settings::init_tracing();
    let settings = Args::parse().common.settings()?;
    let (listener, addr) = sluice_runtime::bind(&settings.listen).await?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let router = sluice_group_coordinator::router().await?;
    tracing::info!(%addr, "group-coordinator listening");
    sluice_runtime::serve(router, listener, shutdown).await
}
