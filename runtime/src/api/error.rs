//! One error type for every route, rendered as JSON.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use vpp_domain::hierarchy_file::FileError;
use vpp_store::StoreError;

use crate::node::NodeError;

/// A located problem (hierarchy uploads).
#[derive(Debug, Serialize)]
pub struct Problem {
    /// 1-based line in the uploaded text, when known.
    pub line: Option<usize>,
    /// The node concerned, when known.
    pub id: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// An error answer: status, a stable code, a message for people, and for
/// hierarchy uploads the list of problems.
#[derive(Debug)]
pub struct AppError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`bad_request`, `not_found`, …).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// Located problems, if any.
    pub problems: Vec<Problem>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[Problem]>::is_empty")]
    problems: &'a [Problem],
}

impl AppError {
    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 with a message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// Any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), message = %self.message, "request failed");
        }
        let body = Body {
            error: Inner {
                status: self.status.as_u16(),
                code: self.code,
                message: &self.message,
                problems: &self.problems,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<FileError> for AppError {
    fn from(e: FileError) -> Self {
        let mut a = AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_hierarchy",
            e.to_string(),
        );
        a.problems = e
            .problems
            .iter()
            .map(|p| Problem {
                line: p.line,
                id: p.id.as_ref().map(|i| i.to_string()),
                message: p.message.clone(),
            })
            .collect();
        a
    }
}

impl From<crate::programs::ProgramError> for AppError {
    fn from(e: crate::programs::ProgramError) -> Self {
        use crate::programs::ProgramError as P;
        let msg = e.to_string();
        match e {
            P::Unauthorized(_) => AppError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg),
            P::Forbidden(_) => AppError::new(StatusCode::FORBIDDEN, "forbidden", msg),
            P::NotFound(_) => AppError::not_found(msg),
            P::Conflict(_) => AppError::new(StatusCode::CONFLICT, "conflict", msg),
            P::Invalid(problems) => {
                let mut a = AppError::bad_request(msg);
                if problems.len() > 1 {
                    a.problems = problems
                        .into_iter()
                        .map(|message| Problem {
                            line: None,
                            id: None,
                            message,
                        })
                        .collect();
                }
                a
            }
            P::Node(n) => n.into(),
            P::Store(s) => NodeError::Store(s).into(),
        }
    }
}

impl From<NodeError> for AppError {
    fn from(e: NodeError) -> Self {
        let msg = e.to_string();
        match e {
            NodeError::NoHierarchy => AppError::new(StatusCode::CONFLICT, "no_hierarchy", msg),
            NodeError::UnknownNode(_) | NodeError::UnknownDispatch(_) => AppError::not_found(msg),
            NodeError::Invalid(_) => AppError::bad_request(msg),
            NodeError::Conflict(_) => AppError::new(StatusCode::CONFLICT, "conflict", msg),
            NodeError::InvalidHierarchy(errs) => {
                let mut a =
                    AppError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_hierarchy", msg);
                a.problems = errs
                    .iter()
                    .map(|p| Problem {
                        line: None,
                        id: p.id().map(|i| i.to_string()),
                        message: p.to_string(),
                    })
                    .collect();
                a
            }
            NodeError::Fleet(f) => match f {
                vpp_actors::FleetError::UnknownNode(_) => AppError::not_found(msg),
                vpp_actors::FleetError::NotAnAggregate(..)
                | vpp_actors::FleetError::NotADer(..)
                | vpp_actors::FleetError::Rejected(_) => AppError::bad_request(msg),
                vpp_actors::FleetError::Unavailable(..) => {
                    AppError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
                }
                _ => AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg),
            },
            NodeError::Unavailable(_) => {
                AppError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
            }
            NodeError::Store(s) => match s {
                StoreError::Corrupt { .. } => {
                    AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_corrupt", msg)
                }
                _ => AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", msg),
            },
        }
    }
}
