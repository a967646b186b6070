//! What the examples share: their command line, and running a topology until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sluice_streams::{Guarantee, StreamsApp, StreamsConfig, Topology};

#[derive(clap::Parser)]
pub struct Args {
    /// Gateway address(es), comma-separated.
    #[arg(long, env = "SLUICE_GATEWAY", default_value = "127.0.0.1:7070")]
    pub gateway: String,
    /// The application id: its consumer group and the prefix of its internal topics.
    #[arg(long)]
    pub app_id: String,
    /// The topic read.
    #[arg(long)]
    pub input: String,
    /// The topic written.
    #[arg(long)]
    pub output: String,
    /// exactly_once or at_least_once.
    #[arg(long, default_value = "at_least_once", value_parser = ["exactly_once", "at_least_once"])]
    pub processing_guarantee: String,
    /// Where the state stores go (default: a directory under the system's temporary one).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// This instance's name (default: the host name, or `<host>-N` while another instance
    /// on this machine holds it); an instance restarted under the same name fences what it
    /// left running and finds its stores again.
    #[arg(long)]
    pub instance: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub commit_interval_ms: u64,
    /// How long the group waits for a silent instance before moving its tasks.
    #[arg(long, default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// A second input topic, for the examples that join (enrich_orders: the customers).
    #[arg(long)]
    pub table: Option<String>,
    /// Window size, for the examples with windows (milliseconds).
    #[arg(long, default_value_t = 60_000)]
    pub window_ms: i64,
    /// Grace period for out-of-order records (milliseconds).
    #[arg(long, default_value_t = 0)]
    pub grace_ms: i64,
    /// OTLP/gRPC endpoint to export traces and metrics to (`OTEL_EXPORTER_OTLP_ENDPOINT`
    /// too); none by default.
    #[arg(long, default_value = "")]
    pub otlp_endpoint: String,
}

/// Runs `topology` until SIGINT or SIGTERM, then closes the instance cleanly.
pub fn run(topology: Topology, args: &Args) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    // Logs on stderr; traces and metrics over OTLP when an endpoint is given.
    let telemetry_cfg = sluice_telemetry::TelemetryConfig::resolve(&args.otlp_endpoint, "sluice-streams", 1000);
    let telemetry = match rt.block_on(async { sluice_telemetry::init(&telemetry_cfg) }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!("{topology}");
    let mut cfg = StreamsConfig::new(&args.app_id, &args.gateway);
    cfg.guarantee = match args.processing_guarantee.as_str() {
        "exactly_once" => Guarantee::ExactlyOnce,
        _ => Guarantee::AtLeastOnce,
    };
    cfg.commit_interval = Duration::from_millis(args.commit_interval_ms);
    cfg.session_timeout = Duration::from_millis(args.session_timeout_ms);
    if let Some(d) = &args.state_dir {
        cfg.state_dir = d.clone();
    }
    if let Some(i) = &args.instance {
        cfg.instance = i.clone();
    }
    let app = match StreamsApp::start(topology, cfg) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let failed = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return None,
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => return None,
                _ = tick.tick() => {
                    if let Some(why) = app.state().failed {
                        return Some(why);
                    }
                }
            }
        }
    });
    let state = app.state();
    app.close();
    rt.block_on(telemetry.shutdown());
    eprintln!("stopped: {} tasks, {} commits, {} records restored", state.tasks.len(), state.commits, state.restored);
    match failed {
        Some(why) => {
            eprintln!("error: {why}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    }
}
