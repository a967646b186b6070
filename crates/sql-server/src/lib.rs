//! Streaming SQL on a cluster: the command topic every instance replays into the same
//! catalog ([`commands`]), and `sluice.v1.Sql` ([`api`]), which the gateways serve. The
//! persistent queries run in the stream-processor service.

pub mod api;
pub mod commands;
