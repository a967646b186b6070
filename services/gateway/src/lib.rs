//! The gateway: the stateless entry point of a Sluice cluster.
//!
//! A thin tonic layer over the data path in `sluice_router`: it serves `sluice.v1.Admin` and
//! `sluice.v1.Broker` from a [`Router`], and forwards `sluice.v1.Groups` and
//! `sluice.v1.Transactions` to the active group coordinator. Any number of gateways can run
//! side by side.
//!
//! - [`handlers`]: the gRPC services; [`handlers::groups`] and [`handlers::transactions`]: the
//!   coordinator proxies.

pub mod handlers;

pub use sluice_router::Router;
