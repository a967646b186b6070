//! `sluice.v1.Connect`: connector configs checked here and kept in `__connect_configs`
//! (see `sluice_connect::store`); states read from `__connect_status`, where the connect
//! runners report them. Gateways hold nothing: every call reads the topics it needs (they
//! are small and compacted).

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_connect::config::{self, ConnectorConfig};
use sluice_connect::plugins::{self, Plugin};
use sluice_connect::store::{self, ConnectorRecord, Connectors, TargetState, TaskStatus};
use sluice_core::SluiceError;
use sluice_proto::v1::connect_server::{Connect, ConnectServer};
use sluice_proto::v1::*;
use sluice_router::Router;
use sluice_router::internal::InternalTopic;
use tonic::{Request, Response, Status};

/// Replication factor of Connect's topics when a gateway creates them (lowered to the live
/// nodes).
const REPLICATION: u32 = 3;

#[derive(Clone)]
pub struct ConnectService {
    router: Arc<Router>,
}

impl ConnectService {
    pub fn new(router: Arc<Router>) -> Self {
        Self { router }
    }

    pub fn into_server(self) -> ConnectServer<Self> {
        ConnectServer::new(self)
    }

    /// Connect's topic `name`, created when `create` and missing (None when missing).
    async fn topic(
        &self,
        name: &'static str,
        partitions: u32,
        create: bool,
    ) -> Result<Option<InternalTopic>, SluiceError> {
        InternalTopic::open_with(self.router.clone(), name, partitions, REPLICATION, Arc::new(|| true), create).await
    }

    async fn connectors(&self) -> Result<Connectors, SluiceError> {
        let mut c = Connectors::default();
        if let Some(t) = self.topic(store::CONNECT_CONFIGS_TOPIC, store::CONFIGS_PARTITIONS, false).await? {
            t.load(|r| c.apply(r.key.as_deref(), r.value.as_deref())).await?;
        }
        Ok(c)
    }

    async fn connector(&self, name: &str) -> Result<ConnectorRecord, SluiceError> {
        self.connectors().await?.0.remove(name).ok_or_else(|| SluiceError::UnknownConnector(name.to_string()))
    }

    async fn write(&self, name: &str, record: Option<&ConnectorRecord>) -> Result<(), SluiceError> {
        let topic = self
            .topic(store::CONNECT_CONFIGS_TOPIC, store::CONFIGS_PARTITIONS, true)
            .await?
            .ok_or_else(|| SluiceError::Internal("the Connect configs topic was not created".into()))?;
        topic.put(name, std::iter::once((store::connector_key(name), record.map(store::encode)))).await
    }

    /// Changes a connector's record with `f` and writes it back.
    async fn update(
        &self,
        name: &str,
        f: impl FnOnce(&mut ConnectorRecord),
    ) -> Result<Response<ConnectorInfo>, Status> {
        let mut record = self.connector(name).await?;
        f(&mut record);
        self.write(name, Some(&record)).await?;
        Ok(Response::new(info(name, &record)))
    }
}

/// The connector as the API shows it.
fn info(name: &str, r: &ConnectorRecord) -> ConnectorInfo {
    let plugin = r.config.get("connector.class").and_then(|c| plugins::find(c));
    ConnectorInfo {
        name: name.to_string(),
        config: r.config.clone().into_iter().collect(),
        r#type: plugin.map_or("unknown", |p| p.kind.name()).to_string(),
        target_state: r.target_state.name().to_string(),
        // What runs: tasks.max as capped by the class (a table per task, say).
        tasks_max: config::validate(&r.config).map_or(1, |c| c.tasks_max),
    }
}

/// Checks a config; the error lists every problem with its key.
fn validated(config: &BTreeMap<String, String>) -> Result<ConnectorConfig, SluiceError> {
    config::validate(config).map_err(|errors| {
        SluiceError::InvalidConnectorConfig(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    })
}

fn plugin(p: &Plugin) -> ConnectPlugin {
    ConnectPlugin {
        class: p.class.to_string(),
        aliases: p.aliases.iter().map(|a| a.to_string()).collect(),
        r#type: p.kind.name().to_string(),
        doc: p.doc.to_string(),
        keys: config::documented(p)
            .map(|k| ConnectConfigKey {
                name: k.name.to_string(),
                r#type: k.ty.name().to_string(),
                required: k.required,
                default_value: k.default.unwrap_or_default().to_string(),
                doc: k.doc.to_string(),
            })
            .collect(),
    }
}

/// Converters, transforms and predicates, listed by class.
fn described(kind: &str, list: &[(&str, &str)]) -> impl Iterator<Item = ConnectPlugin> {
    list.iter().map(move |(class, doc)| ConnectPlugin {
        class: class.to_string(),
        r#type: kind.to_string(),
        doc: doc.to_string(),
        ..Default::default()
    })
}

#[tonic::async_trait]
impl Connect for ConnectService {
    #[tracing::instrument(skip_all, fields(connector))]
    async fn create_connector(&self, r: Request<CreateConnectorRequest>) -> Result<Response<ConnectorInfo>, Status> {
        let r = r.into_inner();
        let config: BTreeMap<String, String> = r.config.into_iter().collect();
        let cfg = validated(&config)?;
        tracing::Span::current().record("connector", cfg.name.as_str());
        let mut existing = self.connectors().await?;
        let record = match existing.0.remove(&cfg.name) {
            Some(_) if !r.replace => return Err(SluiceError::ConnectorExists(cfg.name).into()),
            // A changed config keeps the target state; its tasks restart with it.
            Some(old) => ConnectorRecord { config, restarts: old.restarts + 1, ..old },
            None => ConnectorRecord { config, ..Default::default() },
        };
        self.write(&cfg.name, Some(&record)).await?;
        tracing::info!(class = cfg.plugin.class, "connector written");
        Ok(Response::new(info(&cfg.name, &record)))
    }

    async fn validate_connector_config(
        &self,
        r: Request<ValidateConnectorConfigRequest>,
    ) -> Result<Response<ValidateConnectorConfigResponse>, Status> {
        let config: BTreeMap<String, String> = r.into_inner().config.into_iter().collect();
        let issues = match config::validate(&config) {
            Ok(_) => vec![],
            Err(errors) => errors
                .into_iter()
                .map(|e| match e {
                    sluice_connect::ConnectError::Config { key, reason } => ConfigIssue { key, message: reason },
                    sluice_connect::ConnectError::Data(m) => ConfigIssue { key: String::new(), message: m },
                })
                .collect(),
        };
        Ok(Response::new(ValidateConnectorConfigResponse { issues }))
    }

    async fn list_connectors(
        &self,
        _r: Request<ListConnectorsRequest>,
    ) -> Result<Response<ListConnectorsResponse>, Status> {
        let connectors = self.connectors().await?.0.iter().map(|(n, r)| info(n, r)).collect();
        Ok(Response::new(ListConnectorsResponse { connectors }))
    }

    async fn get_connector(&self, r: Request<ConnectorRequest>) -> Result<Response<ConnectorInfo>, Status> {
        let name = r.into_inner().name;
        Ok(Response::new(info(&name, &self.connector(&name).await?)))
    }

    async fn connector_status(
        &self,
        r: Request<ConnectorRequest>,
    ) -> Result<Response<ConnectorStatusResponse>, Status> {
        let name = r.into_inner().name;
        let record = self.connector(&name).await?;
        let i = info(&name, &record);
        let mut states: BTreeMap<i32, TaskStatus> = BTreeMap::new();
        if let Some(t) = self.topic(store::CONNECT_STATUS_TOPIC, store::STATUS_PARTITIONS, false).await? {
            t.load(|rec| {
                let Some((n, task)) = rec.key.as_deref().and_then(store::status_of) else { return };
                if n != name {
                    return;
                }
                match rec.value.as_deref().map(serde_json::from_slice::<TaskStatus>) {
                    Some(Ok(s)) => {
                        states.insert(task, s);
                    }
                    None => {
                        states.remove(&task);
                    }
                    Some(Err(_)) => {}
                }
            })
            .await?;
        }
        let state = |task: i32| match states.get(&task) {
            Some(s) => ConnectTaskState {
                task,
                state: s.state.clone(),
                runner: s.runner.clone(),
                error: s.error.clone(),
                updated_ms: s.updated_ms,
            },
            None => ConnectTaskState { task, state: "UNASSIGNED".into(), ..Default::default() },
        };
        Ok(Response::new(ConnectorStatusResponse {
            name,
            r#type: i.r#type,
            connector: Some(state(-1)),
            tasks: (0..i.tasks_max as i32).map(state).collect(),
        }))
    }

    async fn pause_connector(&self, r: Request<ConnectorRequest>) -> Result<Response<ConnectorInfo>, Status> {
        self.update(&r.into_inner().name, |c| c.target_state = TargetState::Paused).await
    }

    async fn resume_connector(&self, r: Request<ConnectorRequest>) -> Result<Response<ConnectorInfo>, Status> {
        self.update(&r.into_inner().name, |c| c.target_state = TargetState::Running).await
    }

    async fn restart_connector(&self, r: Request<RestartConnectorRequest>) -> Result<Response<ConnectorInfo>, Status> {
        let r = r.into_inner();
        if let Some(task) = r.task {
            let record = self.connector(&r.name).await?;
            let tasks = info(&r.name, &record).tasks_max;
            if task >= tasks {
                return Err(SluiceError::InvalidRequest(format!(
                    "connector '{}' has tasks 0 to {}; there is no task {task}",
                    r.name,
                    tasks.saturating_sub(1)
                ))
                .into());
            }
        }
        self.update(&r.name, |c| match r.task {
            Some(t) => *c.task_restarts.entry(t).or_default() += 1,
            None => c.restarts += 1,
        })
        .await
    }

    async fn delete_connector(
        &self,
        r: Request<ConnectorRequest>,
    ) -> Result<Response<DeleteConnectorResponse>, Status> {
        let name = r.into_inner().name;
        self.connector(&name).await?;
        self.write(&name, None).await?;
        tracing::info!(connector = %name, "connector deleted");
        Ok(Response::new(DeleteConnectorResponse {}))
    }

    async fn list_connect_plugins(
        &self,
        _r: Request<ListConnectPluginsRequest>,
    ) -> Result<Response<ListConnectPluginsResponse>, Status> {
        let plugins = plugins::PLUGINS
            .iter()
            .map(|p| plugin(p))
            .chain(described("converter", sluice_connect::convert::CONVERTERS))
            .chain(described("transform", sluice_connect::transform::TRANSFORMS))
            .chain(described("predicate", sluice_connect::transform::PREDICATES))
            .collect();
        Ok(Response::new(ListConnectPluginsResponse { plugins }))
    }
}
