//! Kubernetes controllers: the `BareMetalHost` state machine and `Machine` claims.
//!
//! Reconcilers are plain async functions over a shared context; the decisions they make are pure
//! functions of the object, unit-tested without an API server. Claims are resourceVersion-checked
//! updates of `spec.consumerRef`, never "read cache, then patch".
