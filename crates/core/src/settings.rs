//! Loading service configuration: defaults in code, then an optional TOML file, then
//! `SLUICE_<SECTION>__<KEY>` environment variables; command-line flags are applied last by
//! each binary.

use std::path::Path;

use serde::{Serialize, de::DeserializeOwned};

/// `SLUICE_*` variables read by the CLI and the test harness rather than by the services.
pub const NOT_SETTINGS: &[&str] = &["SLUICE_GATEWAY", "SLUICE_BIN_DIR", "SLUICE_TEST_SEED", "SLUICE_KEEP_TEST_DIRS"];

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct SettingsError(String);

/// Builds `T` from its defaults, `file` when given, and the environment.
pub fn load<T: Serialize + DeserializeOwned + Default>(file: Option<&Path>) -> Result<T, SettingsError> {
    let env = std::env::vars().filter(|(k, _)| k.starts_with("SLUICE_") && !NOT_SETTINGS.contains(&k.as_str()));
    load_with_env(file, env)
}

/// [`load`] with `SLUICE_*` overrides from `env` instead of the process environment (services
/// sharing one process, each with its own settings).
pub fn load_with_env<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, SettingsError> {
    let defaults = config::Config::try_from(&T::default()).map_err(|e| SettingsError(e.to_string()))?;
    let mut b = config::Config::builder().add_source(defaults);
    if let Some(f) = file {
        if !f.exists() {
            return Err(SettingsError(format!("config file {} does not exist", f.display())));
        }
        b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
    }
    // Variables that belong to the CLI and the tests, not to service settings.
    let env: config::Map<String, String> = env.into_iter().collect();
    b = b.add_source(
        config::Environment::with_prefix("SLUICE")
            .prefix_separator("_")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("etcd.endpoints")
            .try_parsing(true)
            .source(Some(env)),
    );
    b.build().and_then(|c| c.try_deserialize()).map_err(|e| SettingsError(e.to_string()))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
    #[serde(default)]
    struct Sample {
        listen: String,
        storage: Storage,
    }
    #[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
    #[serde(default)]
    struct Storage {
        flush_ms: u64,
    }
    impl Default for Sample {
        fn default() -> Self {
            Self { listen: "127.0.0.1:1".into(), storage: Storage::default() }
        }
    }
    impl Default for Storage {
        fn default() -> Self {
            Self { flush_ms: 5 }
        }
    }

    #[test]
    fn file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("sluice-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "listen = \"0.0.0.0:9\"\n[storage]\nflush_ms = 7\n").unwrap();
        let s: Sample = load(Some(&f)).unwrap();
        assert_eq!(s, Sample { listen: "0.0.0.0:9".into(), storage: Storage { flush_ms: 7 } });
        assert!(load::<Sample>(Some(&dir.join("missing.toml"))).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
