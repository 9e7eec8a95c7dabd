//! API errors and the Kubernetes `Status` bodies they become, with the HTTP codes and reasons
//! kubectl and kube-rs expect (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};

use crate::store::StoreError;

/// Identifies the object an error is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// API group (`""` for core).
    pub group: String,
    /// Resource plural (`baremetalhosts`), as the real server reports it in `details.kind`.
    pub resource: String,
    /// Object name.
    pub name: String,
}

impl Subject {
    /// `baremetalhosts.metal3.io "h1"` — how kube-apiserver names objects in messages.
    pub fn describe(&self) -> String {
        if self.group.is_empty() {
            format!("{} \"{}\"", self.resource, self.name)
        } else {
            format!("{}.{} \"{}\"", self.resource, self.group, self.name)
        }
    }
}

/// Details of a 422 Invalid answer.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidObject {
    /// The object.
    pub subject: Subject,
    /// Kind, for the message.
    pub kind: String,
    /// Full message.
    pub message: String,
    /// `{reason, message, field}` causes.
    pub causes: Vec<Value>,
}

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// 404.
    #[error("{} not found", .0.describe())]
    NotFound(Subject),
    /// 404 for a path nothing serves.
    #[error("the server could not find the requested resource ({0})")]
    NoRoute(String),
    /// 409: create of an existing name.
    #[error("{} already exists", .0.describe())]
    AlreadyExists(Subject),
    /// 409: stale resourceVersion or failed precondition.
    #[error("Operation cannot be fulfilled on {}: {message}", .subject.describe())]
    Conflict {
        /// The object.
        subject: Subject,
        /// Why.
        message: String,
    },
    /// 422 with per-field causes.
    #[error("{}", .0.message)]
    Invalid(Box<InvalidObject>),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 405.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 410: the requested resourceVersion is older than the history.
    #[error("too old resource version: {requested} ({oldest})")]
    Gone {
        /// Asked for.
        requested: u64,
        /// Oldest still available.
        oldest: u64,
    },
    /// 413.
    #[error("the request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// 415.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    /// 401.
    #[error("Unauthorized")]
    Unauthorized,
    /// 500.
    #[error("Internal error occurred: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl ApiError {
    /// HTTP status and `reason`.
    pub fn code_and_reason(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NotFound(_) | Self::NoRoute(_) => (StatusCode::NOT_FOUND, "NotFound"),
            Self::AlreadyExists(_) => (StatusCode::CONFLICT, "AlreadyExists"),
            Self::Conflict { .. } => (StatusCode::CONFLICT, "Conflict"),
            Self::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            Self::Gone { .. } => (StatusCode::GONE, "Expired"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }

    /// The `Status` body.
    pub fn status(&self) -> Value {
        let (code, reason) = self.code_and_reason();
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code.as_u16(),
        });
        let subject = match self {
            Self::NotFound(s) | Self::AlreadyExists(s) | Self::Conflict { subject: s, .. } => {
                Some(s)
            }
            Self::Invalid(inv) => Some(&inv.subject),
            _ => None,
        };
        if let Some(s) = subject {
            status["details"] = json!({ "name": s.name, "group": s.group, "kind": s.resource });
            if let Self::Invalid(inv) = self {
                status["details"]["kind"] = json!(inv.kind);
                status["details"]["causes"] = json!(inv.causes);
            }
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, _) = self.code_and_reason();
        (code, Json(self.status())).into_response()
    }
}
