//! `sluice connect create|validate|list|status|pause|resume|restart|delete|plugins`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::GatewayArg;

#[derive(clap::Subcommand)]
pub enum ConnectCmd {
    /// Create a connector from a config file (JSON or TOML, Kafka Connect's keys), or change
    /// an existing one's config with --replace.
    Create {
        /// Its name; the file's `name` key when omitted.
        name: Option<String>,
        #[arg(long = "config", value_name = "FILE")]
        file: PathBuf,
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Check a config file without creating anything: every problem, with its key.
    Validate {
        #[arg(long = "config", value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// List connectors with their class, type and target state.
    List {
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// The connector's and each task's state, runner and last error.
    Status {
        name: String,
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Stop processing (tasks keep their place) until resumed.
    Pause {
        name: String,
        #[command(flatten)]
        gw: GatewayArg,
    },
    Resume {
        name: String,
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Restart the connector's tasks, or one of them.
    Restart {
        name: String,
        #[arg(long)]
        task: Option<u32>,
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Stop a connector and forget its config.
    Delete {
        name: String,
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Every connector class, converter and transform, with the keys of each connector.
    Plugins {
        #[command(flatten)]
        gw: GatewayArg,
    },
}

/// A config file: a flat object of keys (values of any scalar type are taken as text), or
/// Kafka Connect's REST shape `{"name": ..., "config": {...}}`.
fn read_config(path: &Path, name: Option<String>) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the config file {}: {e}", path.display()))?;
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let value: serde_json::Value = if is_toml {
        let t: toml::Table =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not valid TOML: {e}", path.display()))?;
        serde_json::to_value(t)?
    } else {
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not valid JSON: {e}", path.display()))?
    };
    let serde_json::Value::Object(mut top) = value else {
        anyhow::bail!("{} must hold an object of config keys", path.display());
    };
    let rest_name = top.get("name").and_then(|n| n.as_str()).map(String::from);
    let object = match top.remove("config") {
        Some(serde_json::Value::Object(c)) => c,
        Some(_) => anyhow::bail!("{}: \"config\" must be an object of config keys", path.display()),
        None => top,
    };
    let mut config = HashMap::new();
    for (k, v) in object {
        let text = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            other => {
                anyhow::bail!("{}: the value of '{k}' must be a string, number or boolean, not {other}", path.display())
            }
        };
        config.insert(k, text);
    }
    if let Some(n) = name.or(rest_name) {
        if config.get("name").is_some_and(|given| given != &n) {
            anyhow::bail!("the config names the connector '{}', not '{n}'", config["name"]);
        }
        config.insert("name".into(), n);
    }
    Ok(config)
}

pub async fn run(c: ConnectCmd) -> anyhow::Result<ExitCode> {
    match c {
        ConnectCmd::Create { name, file, replace, gw } => {
            let config = read_config(&file, name)?;
            let i = gw.connect().await?.create_connector(config, replace).await?;
            let verb = if replace { "updated" } else { "created" };
            println!("{verb} {} connector '{}' ({} task(s) at most)", i.r#type, i.name, i.tasks_max);
        }
        ConnectCmd::Validate { file, gw } => {
            let issues = gw.connect().await?.validate_connector(read_config(&file, None)?).await?;
            if issues.is_empty() {
                println!("the config is valid");
            } else {
                for i in &issues {
                    eprintln!("{}: {}", i.key, i.message);
                }
                return Ok(ExitCode::FAILURE);
            }
        }
        ConnectCmd::List { gw } => {
            for i in gw.connect().await?.list_connectors().await? {
                let class = i.config.get("connector.class").cloned().unwrap_or_default();
                println!("{}\t{}\t{class}\t{}", i.name, i.r#type, i.target_state);
            }
        }
        ConnectCmd::Status { name, gw } => {
            let s = gw.connect().await?.connector_status(&name).await?;
            println!("Connector: {}\tType: {}", s.name, s.r#type);
            for t in s.connector.iter().chain(&s.tasks) {
                let which = if t.task < 0 { "connector".to_string() } else { format!("task {}", t.task) };
                let runner = if t.runner.is_empty() { "-" } else { &t.runner };
                print!("\t{which}\t{}\trunner: {runner}", t.state);
                if t.error.is_empty() { println!() } else { println!("\terror: {}", t.error) }
            }
        }
        ConnectCmd::Pause { name, gw } => {
            gw.connect().await?.pause_connector(&name, true).await?;
            println!("connector '{name}' paused");
        }
        ConnectCmd::Resume { name, gw } => {
            gw.connect().await?.pause_connector(&name, false).await?;
            println!("connector '{name}' resumed");
        }
        ConnectCmd::Restart { name, task, gw } => {
            gw.connect().await?.restart_connector(&name, task).await?;
            match task {
                Some(t) => println!("task {t} of connector '{name}' restarting"),
                None => println!("connector '{name}' restarting"),
            }
        }
        ConnectCmd::Delete { name, gw } => {
            gw.connect().await?.delete_connector(&name).await?;
            println!("deleted connector '{name}'");
        }
        ConnectCmd::Plugins { gw } => {
            for p in gw.connect().await?.connect_plugins().await? {
                println!("{}\t{}\t{}", p.r#type, p.class, p.aliases.join(","));
                println!("\t{}", p.doc);
                for k in &p.keys {
                    let need =
                        if k.required { "required".to_string() } else { format!("default: {}", k.default_value) };
                    println!("\t{} ({}, {need}): {}", k.name, k.r#type, k.doc);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
