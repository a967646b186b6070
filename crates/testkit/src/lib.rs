//! Test-only support: real clusters on loopback for the end-to-end tests, started by the same
//! launcher as `sluice cluster up` (`sluice-launcher`, product code), so what the tests run is
//! what users run. Product crates never depend on this crate.

pub use sluice_launcher::LauncherError as TestkitError;
pub use sluice_launcher::*;
