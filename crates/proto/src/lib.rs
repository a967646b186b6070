//! Generated code for the Sluice v1 gRPC API. The `.proto` files in `proto/` are
//! the contract; this crate only compiles them.
#![allow(clippy::all, missing_docs)]

/// The `sluice.v1` package.
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}

/// Encoded file descriptors, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sluice_descriptor");
