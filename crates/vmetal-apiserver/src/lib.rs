//! Embedded Kubernetes-compatible API server.
//!
//! `vmetal up` runs the whole system on one machine with no cluster: this crate serves
//! discovery, CRUD, watch, CRDs, status and finalizers over HTTP from an embedded durable
//! store, so kube-rs controllers and kubectl talk to it as to a real kube-apiserver.
//! (Built by the embedded API server issue; today it only reserves its place in the workspace.)
