//! The example configuration files are the reference: each must load, and each must say
//! what the defaults are (so the examples cannot drift from the code).

use std::path::PathBuf;

use sluice_runtime::Settings;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config").join(name)
}

#[test]
fn every_example_loads() {
    for f in ["partition-node", "gateway", "group-coordinator", "connect-runner", "dev"] {
        let s: Result<Settings, _> = sluice_core::settings::load(Some(&example(&format!("{f}.example.toml"))));
        assert!(s.is_ok(), "{f}: {:?}", s.err());
    }
}

#[test]
fn the_partition_node_example_states_the_defaults() {
    let s: Settings = sluice_core::settings::load(Some(&example("partition-node.example.toml"))).unwrap();
    let d = Settings::default();
    assert_eq!(format!("{s:?}"), format!("{d:?}"));
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let e = sluice_core::settings::load::<Settings>(Some(&example("nope.toml"))).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn the_group_coordinator_example_states_the_group_defaults() {
    let s: Settings = sluice_core::settings::load(Some(&example("group-coordinator.example.toml"))).unwrap();
    assert_eq!(format!("{:?}", s.groups), format!("{:?}", Settings::default().groups));
}
