//! OpenTelemetry end to end: a cluster and the CLI export to an OTLP receiver implemented
//! here (the collector's TraceService and MetricsService); one record produced and consumed
//! must give one trace from the producer through the gateway, the leader and a follower to
//! the consumer, and the expected metrics must arrive with sane values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{Metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use sluice_tests::{client, cluster_with, eventually};
use tonic::{Request, Response, Status};

/// Everything received, with the `service.name` of the process that sent it.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    metrics: Arc<Mutex<Vec<(String, Metric)>>>,
}

fn service_name(attrs: &[KeyValue]) -> String {
    attrs.iter().find(|a| a.key == "service.name").map(|a| text(&a.value)).unwrap_or_default()
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|a| a.key == key).map(|a| text(&a.value))
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs.resource.map(|r| service_name(&r.attributes)).unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        req: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut metrics = self.metrics.lock().unwrap();
        for rm in req.into_inner().resource_metrics {
            let service = rm.resource.map(|r| service_name(&r.attributes)).unwrap_or_default();
            for sm in rm.scope_metrics {
                metrics.extend(sm.metrics.into_iter().map(|m| (service.clone(), m)));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

async fn start_receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(r.clone()))
        .add_service(MetricsServiceServer::new(r.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (r, addr)
}

async fn cli(env: &[(&str, &str)], args: &[&str], stdin: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let bin = sluice_testkit::binary("sluice").expect("sluice binary");
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "sluice {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The largest value of `name` in the latest export that has it, leaving out the internal
/// offsets topic (the group coordinator writes to it too).
fn last_value(metrics: &[(String, Metric)], name: &str) -> Option<(f64, Vec<KeyValue>)> {
    let user = |a: &[KeyValue]| !attr(a, "topic").is_some_and(|t| t.starts_with("__"));
    metrics.iter().rev().filter(|(_, m)| m.name == name).find_map(|(_, m)| match &m.data {
        Some(Data::Gauge(g)) => g
            .data_points
            .iter()
            .filter(|p| user(&p.attributes))
            .map(|p| (number(&p.value), p.attributes.clone()))
            .reduce(|a, b| if b.0 > a.0 { b } else { a }),
        Some(Data::Sum(s)) => s
            .data_points
            .iter()
            .filter(|p| user(&p.attributes))
            .map(|p| (number(&p.value), p.attributes.clone()))
            .reduce(|a, b| if b.0 > a.0 { b } else { a }),
        Some(Data::Histogram(h)) => h
            .data_points
            .iter()
            .filter(|p| user(&p.attributes))
            .map(|p| (p.count as f64, p.attributes.clone()))
            .reduce(|a, b| if b.0 > a.0 { b } else { a }),
        _ => None,
    })
}

fn number(v: &Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        Some(number_data_point::Value::AsDouble(d)) => *d,
        None => f64::NAN,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_from_producer_to_consumer_and_the_metrics_arrive() {
    let (receiver, endpoint) = start_receiver().await;
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("SLUICE_TELEMETRY__METRICS_INTERVAL_MS", "500")];
    let (c, _dir) = cluster_with(3, &env).await;
    let admin = client(&c).await;
    admin.create_topic("traced", 1, 3, HashMap::new()).await.unwrap();
    let cli_env = [("SLUICE_GATEWAY", c.gateway()), ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    cli(&cli_env, &["produce", "traced", "--acks", "all"], "hello\n").await;
    let out = cli(
        &cli_env,
        &["consume", "traced", "--group", "traced-g", "--max-messages", "1", "--idle-timeout-ms", "5000"],
        "",
    )
    .await;
    assert_eq!(out.trim(), "hello");

    // The consumer's processing span, and everything in its trace.
    let (trace, spans) = eventually("the consumer's span and the whole trace", Duration::from_secs(30), || {
        let spans = receiver.spans.lock().unwrap().clone();
        async move {
            let (_, process) = spans.iter().find(|(svc, s)| svc == "sluice-cli" && s.name == "process")?;
            let trace = process.trace_id.clone();
            let in_trace: Vec<(String, Span)> = spans.into_iter().filter(|(_, s)| s.trace_id == trace).collect();
            let has = |svc: &str, name: &str| in_trace.iter().any(|(v, s)| v == svc && s.name == name);
            (has("sluice-cli", "send")
                && has("sluice-gateway", "produce")
                && has("sluice-partition-node", "append")
                && has("sluice-partition-node", "replicate"))
            .then_some((trace, in_trace))
        }
    })
    .await;
    let names: Vec<String> = spans.iter().map(|(svc, s)| format!("{svc}/{}", s.name)).collect();
    eprintln!("trace {}: {names:?}", hex(&trace));
    let find = |svc: &str, name: &str| spans.iter().find(|(v, s)| v == svc && s.name == name).map(|(_, s)| s).unwrap();
    let (send, produce, append, process) = (
        find("sluice-cli", "send"),
        find("sluice-gateway", "produce"),
        find("sluice-partition-node", "append"),
        find("sluice-cli", "process"),
    );
    assert_eq!(attr(&append.attributes, "topic").as_deref(), Some("traced"));
    assert_eq!(attr(&append.attributes, "partition").as_deref(), Some("0"));
    assert_eq!(attr(&produce.attributes, "topic").as_deref(), Some("traced"));
    assert_eq!(attr(&process.attributes, "messaging.destination.name").as_deref(), Some("traced"));
    assert_eq!(attr(&process.attributes, "messaging.destination.partition.id").as_deref(), Some("0"));
    assert_eq!(process.parent_span_id, send.span_id, "the consumer continues the producer's span");
    assert!(process.links.iter().any(|l| l.span_id == send.span_id), "and links to it");
    let span_ids: Vec<&Vec<u8>> = spans.iter().map(|(_, s)| &s.span_id).collect();
    assert!(span_ids.contains(&&append.parent_span_id), "the append's parent is in the trace");
    let followers = spans.iter().filter(|(v, s)| v == "sluice-partition-node" && s.name == "replicate").count();
    assert!(followers >= 1, "a follower's copy is in the trace");

    // Metrics, with the values this run implies.
    let metrics = eventually("the metrics", Duration::from_secs(30), || {
        let m = receiver.metrics.lock().unwrap().clone();
        async move {
            let ok = |name: &str, min: f64| last_value(&m, name).is_some_and(|(v, _)| v >= min);
            (ok("sluice.produce.records", 1.0)
                && ok("sluice.produce.requests", 1.0)
                && ok("sluice.produce.bytes", 60.0)
                && ok("sluice.produce.duration", 1.0)
                && ok("sluice.fetch.bytes", 60.0)
                && ok("sluice.fetch.records", 1.0)
                && ok("sluice.fetch.requests", 1.0)
                && ok("sluice.partition.high_watermark", 1.0)
                && ok("sluice.partition.log_end_offset", 1.0)
                && ok("sluice.partition.isr_size", 3.0)
                && ok("sluice.partition.storage_bytes", 60.0)
                && last_value(&m, "sluice.node.under_replicated_partitions").is_some()
                && last_value(&m, "sluice.group.members").is_some()
                && group_lag(&m).is_some()
                && last_value(&m, "sluice.gateway.active_streams").is_some())
            .then_some(m)
        }
    })
    .await;
    let (records, attrs) = last_value(&metrics, "sluice.produce.records").unwrap();
    assert_eq!(records, 1.0, "one record produced");
    assert_eq!(attr(&attrs, "topic").as_deref(), Some("traced"));
    let (hw, attrs) = last_value(&metrics, "sluice.partition.high_watermark").unwrap();
    assert_eq!((hw, attr(&attrs, "partition").as_deref()), (1.0, Some("0")));
    assert_eq!(last_value(&metrics, "sluice.node.under_replicated_partitions").unwrap().0, 0.0);
    // The group committed the one record it consumed: no lag.
    assert_eq!(group_lag(&metrics), Some(0.0));
}

/// The consumer group's lag on `traced` partition 0, from the latest export that has it.
fn group_lag(metrics: &[(String, Metric)]) -> Option<f64> {
    metrics.iter().rev().filter(|(_, m)| m.name == "sluice.group.lag").find_map(|(_, m)| match &m.data {
        Some(Data::Gauge(g)) => g
            .data_points
            .iter()
            .find(|p| {
                attr(&p.attributes, "group").as_deref() == Some("traced-g")
                    && attr(&p.attributes, "topic").as_deref() == Some("traced")
            })
            .map(|p| number(&p.value)),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connector_tasks_export_their_records_and_errors() {
    let (receiver, endpoint) = start_receiver().await;
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("SLUICE_TELEMETRY__METRICS_INTERVAL_MS", "500")];
    let (c, dir) = sluice_tests::cluster_built(|b| b.nodes(1).runners(1), &env).await;
    let admin = client(&c).await;
    admin.create_topic("lines", 1, 1, HashMap::new()).await.unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a\nb\nc\n").unwrap();
    let config = HashMap::from([
        ("name".to_string(), "metered".to_string()),
        ("connector.class".to_string(), "file-source".to_string()),
        ("file".to_string(), input.display().to_string()),
        ("topic".to_string(), "lines".to_string()),
        ("value.converter".to_string(), "string".to_string()),
    ]);
    admin.create_connector(config, false).await.unwrap();
    let metrics = eventually("the connector's metrics", Duration::from_secs(60), || {
        let m = receiver.metrics.lock().unwrap().clone();
        async move {
            let out = last_value(&m, "sluice.connect.records").filter(|(v, _)| *v >= 3.0)?;
            last_value(&m, "sluice.connect.tasks")?;
            Some((out, m))
        }
    })
    .await;
    let ((records, attrs), all) = metrics;
    assert_eq!(records, 3.0, "three lines in, three records out");
    assert_eq!(attr(&attrs, "connector").as_deref(), Some("metered"));
    assert_eq!(last_value(&all, "sluice.connect.tasks").map(|(v, _)| v), Some(1.0), "one task running");
}
