//! Errors in the shape of Lambda's API: a status, an `x-amzn-ErrorType`
//! header naming the exception, and a JSON body `{"Type", "message"}` that
//! the AWS SDKs read.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The exception name (`x-amzn-ErrorType`).
    pub kind: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// Extra JSON fields (e.g. `Reason` on throttles).
    pub reason: Option<&'static str>,
}

/// The message Lambda gives a PER_TENANT function invoked without a tenant.
pub const MISSING_TENANT: &str = "Add a valid tenant ID in your request and try again.";

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            reason: None,
        }
    }

    /// 400 InvalidParameterValueException.
    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            message,
        )
    }

    /// 400 InvalidRequestContentException (unreadable JSON).
    pub fn invalid_content(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            message,
        )
    }

    /// 404 ResourceNotFoundException.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
    }

    /// 409 ResourceConflictException.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "ResourceConflictException", message)
    }

    /// 413 RequestTooLargeException.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            message,
        )
    }

    /// 408 RequestTimeoutException: the request did not arrive in time.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeoutException",
            message,
        )
    }

    /// 429 TooManyRequestsException with Lambda's reason code.
    pub fn throttled(message: impl Into<String>, reason: &'static str) -> Self {
        Self {
            reason: Some(reason),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                message,
            )
        }
    }

    /// 403 with the exception the SDKs expect for auth failures.
    pub fn forbidden(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, kind, message)
    }

    /// 500 ServiceException (ours, not the caller's).
    pub fn service(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            message,
        )
    }

    /// 502 TenantCredentialsException: the function's tenant role could
    /// not be assumed for the invoke's tenant (STS down or refusing).
    pub fn tenant_credentials(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "TenantCredentialsException",
            message,
        )
    }

    /// 404 for paths that are not part of the API.
    pub fn unknown_operation(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            format!("{method} {path} is not an operation of this API"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "Type": "User", "message": self.message });
        if self.status.is_server_error() {
            body["Type"] = "Service".into();
        }
        if let Some(r) = self.reason {
            body["Reason"] = r.into();
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(self.kind));
        resp
    }
}
