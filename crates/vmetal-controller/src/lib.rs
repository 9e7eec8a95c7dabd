//! Kubernetes controllers: the `BareMetalHost` state machine (and, later, `Machine` claims).
//!
//! Reconcilers are plain async functions over a shared [`Context`]; every step is idempotent
//! and safe to repeat after a crash, because the Kubernetes objects (the host, its credentials
//! Secret and its agent-cycle Secret) are the only state.

pub mod backoff;
pub mod bmc_pool;
pub mod context;
pub mod error;
pub mod events;
pub mod host;
pub mod leader;
pub mod machine;
pub mod metrics;

pub use context::{Context, ControllerConfig};
pub use error::ControllerError;
