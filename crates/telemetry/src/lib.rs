//! Logs, traces and metrics for every Sluice process (services and the CLI).
//!
//! Logs always go to stderr through `tracing`. OpenTelemetry is opt-in: with an OTLP endpoint
//! (`[telemetry] otlp_endpoint` in a service's config, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`), `tracing` spans are exported as OpenTelemetry spans and the
//! global meter provider exports metrics, both over OTLP/gRPC. Without one, no exporter, no
//! OpenTelemetry layer and no-op instruments: nothing is paid.
//!
//! Trace context is W3C `traceparent`: in gRPC metadata for unary calls and stream opening
//! ([`inject`], [`server_span`]), in a message field for requests multiplexed on long-lived
//! streams ([`traceparent`], [`context_from`]), and in a record header so that a consumer's
//! processing span continues the producer's trace ([`RECORD_HEADER`]).

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use opentelemetry::KeyValue;
pub use opentelemetry::metrics::Meter;

/// Set once OpenTelemetry export is installed: until then context lookups return at once
/// (the producer asks for every record).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The record header carrying the producer's trace context.
pub const RECORD_HEADER: &str = "traceparent";

/// Where and how to export.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC endpoint (`http://host:4317`); `None` turns OpenTelemetry off.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of everything this process exports.
    pub service_name: String,
    /// `service.instance.id`: tells apart processes of one service (their address).
    pub instance_id: Option<String>,
    /// How often metrics are exported.
    pub metrics_interval: Duration,
    /// How long finished spans wait before being exported in a batch.
    pub span_delay: Duration,
    /// Log filter when `RUST_LOG` is not set (`info` for services, `warn` for CLI commands).
    pub log_filter: String,
}

impl TelemetryConfig {
    /// The configured endpoint (empty means none), with the standard OpenTelemetry
    /// environment variables taking precedence: `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `OTEL_SERVICE_NAME`.
    pub fn resolve(configured_endpoint: &str, default_service: &str, metrics_interval_ms: u64) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT")
            .or_else(|| (!configured_endpoint.trim().is_empty()).then(|| configured_endpoint.trim().to_string()));
        Self {
            otlp_endpoint: endpoint,
            service_name: env("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_string()),
            instance_id: None,
            metrics_interval: Duration::from_millis(metrics_interval_ms.max(100)),
            span_delay: Duration::from_millis(500),
            log_filter: "info".into(),
        }
    }
}

/// Installed exporters; [`Telemetry::shutdown`] flushes them.
#[derive(Default)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    metrics: Option<SdkMeterProvider>,
}

/// Why OpenTelemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(String),
}

/// Installs logging (stderr, `RUST_LOG`, default `info`) and, when configured, OpenTelemetry
/// traces and metrics. Must run inside a tokio runtime when an endpoint is set (the OTLP
/// exporter's channel lives on it). Calling it twice keeps the first set-up.
pub fn init(cfg: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_filter));
    // Logs and spans are filtered apart: a quiet CLI still exports its spans.
    // Colours only on a terminal: logs written to files stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .with_filter(filter);
    let Some(endpoint) = &cfg.otlp_endpoint else {
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        return Ok(Telemetry::default());
    };
    let err = |e: &dyn std::fmt::Display| TelemetryError::Exporter(e.to_string());
    let mut resource = opentelemetry_sdk::Resource::builder().with_service_name(cfg.service_name.clone());
    if let Some(id) = &cfg.instance_id {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", id.clone()));
    }
    let resource = resource.build();
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| err(&e))?;
    let processor = BatchSpanProcessor::builder(spans)
        .with_batch_config(BatchConfigBuilder::default().with_scheduled_delay(cfg.span_delay).build())
        .build();
    let traces = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource.clone()).build();
    let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| err(&e))?;
    let reader = PeriodicReader::builder(metric_exporter).with_interval(cfg.metrics_interval).build();
    let metrics = SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_meter_provider(metrics.clone());
    let otel = tracing_opentelemetry::layer()
        .with_tracer(traces.tracer("sluice"))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    if tracing_subscriber::registry().with(fmt).with(otel).try_init().is_ok() {
        EXPORTING.store(true, std::sync::atomic::Ordering::Release);
    }
    tracing::info!(%endpoint, service = %cfg.service_name, "exporting traces and metrics over OTLP");
    Ok(Telemetry { traces: Some(traces), metrics: Some(metrics) })
}

impl Telemetry {
    /// Exports what is pending and stops the exporters. Blocking work, done off the async
    /// workers.
    pub async fn shutdown(self) {
        let Self { traces, metrics } = self;
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(t) = traces {
                let _ = t.force_flush();
                let _ = t.shutdown();
            }
            if let Some(m) = metrics {
                let _ = m.force_flush();
                let _ = m.shutdown();
            }
        })
        .await;
    }
}

/// Whether traces and metrics are being exported (work that only feeds them can be skipped
/// otherwise).
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Acquire)
}

/// The meter every Sluice instrument comes from (no-op until [`init`] installed exporters).
pub fn meter() -> Meter {
    opentelemetry::global::meter("sluice")
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(&value))
        {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Puts the current span's trace context into outgoing gRPC metadata.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if !EXPORTING.load(std::sync::atomic::Ordering::Acquire) {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

/// The current span's context as a `traceparent` value, when it is being traced.
pub fn traceparent() -> Option<String> {
    if !EXPORTING.load(std::sync::atomic::Ordering::Acquire) {
        return None;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut map: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    map.remove("traceparent")
}

/// The context a `traceparent` value names (an empty context when it is malformed).
pub fn context_from(traceparent: &str) -> opentelemetry::Context {
    let map: HashMap<String, String> = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    TraceContextPropagator::new().extract(&map)
}

/// Makes `span` a child of the context in `traceparent`, when it names one.
pub fn continue_from(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let cx = context_from(traceparent);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Adds a link from `span` to the span named by `traceparent`, when it names one.
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    let cx = context_from(traceparent);
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
}

/// The span of one incoming RPC (`Server::trace_fn`): named after the method, a child of the
/// caller's context when the request carries one.
pub fn server_span(req: &http::Request<()>) -> tracing::Span {
    let path = req.uri().path();
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("", path));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
    span
}

/// A client interceptor putting the caller's trace context into every request's metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct Propagate;

impl tonic::service::Interceptor for Propagate {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject(req.metadata_mut());
        Ok(req)
    }
}
