//! Embedded Kubernetes-compatible API server.
//!
//! `vmetal up` runs the whole system on one machine with no cluster: this crate serves
//! discovery, OpenAPI, CRUD, watch, CRDs, the status subresource, finalizers, patches and
//! tables over HTTPS from a durable redb store, so kube-rs controllers and kubectl talk to it
//! as to a real kube-apiserver.

pub mod access;
pub mod discovery;
pub mod error;
pub mod http;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod registry;
pub mod server;
pub mod store;
pub mod table;
pub mod validation;
pub mod watch;

pub use registry::{Registry, ResourceInfo};
pub use server::{ApiServerConfig, RunningApiServer, start};
