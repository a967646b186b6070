//! Topic administration.

pub mod create;
pub mod delete;
pub mod describe;
pub mod list;
pub mod partitions;
