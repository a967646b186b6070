//! Topic administration.

pub mod config;
pub mod create;
pub mod delete;
pub mod describe;
pub mod list;
pub mod partitions;
