//! `sluice-connect-runner`: source and sink connectors.

use clap::Parser;
use sluice_runtime::{CommonArgs, Shutdown};

#[derive(Parser)]
#[command(version, about = "Sluice connect-runner")]
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
    let router = sluice_connect_runner::router().await?;
    tracing::info!(%addr, "connect-runner listening");
    sluice_runtime::serve(router, listener, shutdown).await
}
