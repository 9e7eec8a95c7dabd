//! Embedded Kubernetes-compatible API server.
//!
//! `vmetal up` runs the whole system on one machine with no cluster: this crate serves
//! discovery, OpenAPI and (as it grows) CRUD, watch, CRDs, status and finalizers over HTTP, so
//! kube-rs controllers and kubectl talk to it as to a real kube-apiserver.

pub mod discovery;
pub mod openapi;
pub mod registry;
pub mod server;

pub use registry::{Registry, ResourceInfo};
