//! Streaming SQL on a cluster: the command topic every instance replays into the same
//! catalog ([`commands`]), and `sluice.v1.Sql` ([`api`]), which the gateways serve. The
//! persistent queries run in the stream-processor service, which reports how they run
//! ([`status`]).

pub mod api;
pub mod commands;
pub mod status;
