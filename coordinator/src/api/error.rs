//! The HTTP side of [`ApiError`] (the type itself is the contract's): the status and JSON body
//! each kind is answered with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
pub use tessera_protocol::api_error::{ApiError, ErrorBody};

/// The HTTP status `error` is answered with.
pub fn status_code(error: &ApiError) -> StatusCode {
    StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The HTTP answer to `error`: its status and the JSON [`ErrorBody`].
pub fn error_response(error: ApiError) -> Response {
    let field = match &error {
        ApiError::BadRequest { field, .. } => Some(field.clone()),
        _ => None,
    };
    let body = ErrorBody { error: error.to_string(), field };
    let mut response = (status_code(&error), axum::Json(body)).into_response();
    if matches!(error, ApiError::Unauthorized) {
        response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    }
    response
}
