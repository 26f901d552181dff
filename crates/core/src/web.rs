//! The HTTP error contract shared by both listeners: every 4xx/5xx is
//! `{"error": {"code": "...", "message": "..."}}`, and extractor failures
//! (malformed JSON, unknown fields, bad ids, oversize bodies) become clear 4xx.

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Serialize;

/// Largest JSON body either API accepts.
pub const MAX_JSON_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 and retryable 503.
    pub retry_after: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// A bearer token that does not sign anyone in (RFC 6750): 401 with
    /// `WWW-Authenticate: Bearer error="invalid_token"`.
    pub fn invalid_token(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// 429 with `Retry-After`.
    pub fn too_many_requests(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message) }
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message) }
    }
    /// An unexpected failure: the cause is logged here, once; the client gets a
    /// generic message.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        match crate::db::sqlstate(&e).as_deref() {
            // query_canceled: the tenant's statement timeout fired.
            Some(crate::db::QUERY_CANCELED) => ApiError::unavailable(
                "statement_timeout",
                "the request's query ran longer than the tenant's statement timeout",
                1,
            ),
            _ => ApiError::internal(&e),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        if self.code == "invalid_token" {
            resp.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\"")));
        }
        resp.json(ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message.clone() } })
    }
}

fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {MAX_JSON_BODY} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ),
        JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::unprocessable("invalid_body", e.to_string()),
        JsonPayloadError::Deserialize(e) => ApiError::bad_request("malformed_json", e.to_string()),
        other => ApiError::bad_request("invalid_body", other.to_string()),
    };
    api.into()
}

fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request("invalid_path", format!("invalid path parameter: {err}")).into()
}

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request("invalid_query", format!("invalid query string: {err}")).into()
}

/// Registers the JSON, path and query extractor configuration on an app.
pub fn configure_extractors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(MAX_JSON_BODY).error_handler(json_error))
        .app_data(web::PathConfig::default().error_handler(path_error))
        .app_data(web::QueryConfig::default().error_handler(query_error));
}

/// Fallback for unknown routes and methods.
pub async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(StatusCode::NOT_FOUND, "no_route", format!("no route for {} {}", req.method(), req.path())))
}

/// `Authorization: Bearer <token>`, if present and well-formed.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers().get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// `GET /healthz`.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: 200 `{"status": "ready"}`, or 503 `not_ready` saying why
/// (a load balancer or Kubernetes then sends no traffic here).
pub fn readiness(state: Result<(), String>) -> HttpResponse {
    match state {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Err(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why).error_response(),
    }
}

/// Middleware: every response carries its request's id (the one in the request's
/// tracing span and so in every log line of it) as `X-Request-Id`. Register it
/// before `TracingLogger`, which then wraps it.
pub async fn request_id_header(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use actix_web::HttpMessage;
    let id = req.extensions().get::<tracing_actix_web::RequestId>().map(|id| id.to_string());
    let mut res = next.call(req).await?;
    if let Some(value) = id.and_then(|i| HeaderValue::from_str(&i).ok()) {
        res.headers_mut().insert(header::HeaderName::from_static("x-request-id"), value);
    }
    Ok(res)
}

/// Middleware: PostgreSQL stores no NUL character in text or jsonb, so a
/// request carrying one (`%00` in its path or query, `\u0000` in a JSON body,
/// `%00` in a form body) is refused with 422 before any handler runs, on every
/// endpoint of both listeners. Register it innermost (first `wrap`).
/// Every JSON media type actix's JSON extractor may accept: `*/json` and
/// `*/*+json` (`application/json`, `text/json`, `application/merge-patch+json`),
/// parameters aside.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.split_once('/').is_some_and(|(_, sub)| sub == "json" || sub.ends_with("+json"))
}

pub async fn refuse_nul(
    mut req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let nul = |place: &str| {
        ApiError::unprocessable("nul_character", format!("{place} contains a NUL character, which cannot be stored"))
    };
    let uri = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
    if has_percent_nul(uri.as_bytes()) {
        return Err(nul("the URL").into());
    }
    let kind = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let json = is_json(&kind);
    let form = kind.starts_with("application/x-www-form-urlencoded");
    if json || form {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body is larger than {MAX_JSON_BODY} bytes"),
            )
        };
        if declared.is_some_and(|n| n > MAX_JSON_BODY) {
            return Err(too_large().into());
        }
        let body = req.extract::<web::Bytes>().await.map_err(|_| too_large())?;
        if body.len() > MAX_JSON_BODY {
            return Err(too_large().into());
        }
        let found = if json { has_json_nul(&body) } else { has_percent_nul(&body) };
        if found {
            return Err(nul("the request body").into());
        }
        req.set_payload(actix_web::dev::Payload::from(body));
    }
    next.call(req).await
}

/// `%00` (or a raw NUL byte) in URL-encoded text.
fn has_percent_nul(s: &[u8]) -> bool {
    s.contains(&0) || s.windows(3).any(|w| w == b"%00")
}

/// `\u0000` as a JSON escape (not an escaped backslash followed by `u0000`),
/// or a raw NUL byte.
fn has_json_nul(body: &[u8]) -> bool {
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            0 => return true,
            b'\\' if body[i + 1..].starts_with(b"u0000") => return true,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    false
}

/// The error statuses every operation of a listener can answer, added to its
/// OpenAPI document so the contract lists them: 400 (malformed JSON, path or
/// query), 401 (no or a bad credential), 404 (for paths with a parameter),
/// 413 and 415 (for bodies), 422 (a value that does not validate, a NUL
/// character anywhere), 429 (the tenant's rate limit, app only), 502 (a
/// backend's or the cloud API's failure, admin only) and 503 (a backend, the
/// registry or the tenant's placement unavailable; retry).
/// Statuses an operation already documents keep their own description.
pub struct ErrorStatuses {
    /// The listener rate-limits (429).
    pub rate_limited: bool,
    /// The listener relays a backend's or a cloud API's failure (502).
    pub relays_backends: bool,
}

impl utoipa::Modify for ErrorStatuses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        for (path, item) in doc.paths.paths.iter_mut() {
            let has_param = path.contains('{');
            let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
            for op in ops.into_iter().flatten() {
                let body = op.request_body.is_some();
                let statuses = [
                    (true, "400", "Malformed request: JSON, a path or a query parameter that does not parse"),
                    (true, "401", "No credential, or one that is not valid"),
                    (has_param, "404", "Not found"),
                    (body, "413", "Request body too large"),
                    (body, "415", "Request body is not application/json"),
                    (true, "422", "A value that does not validate, or a NUL character anywhere in the request"),
                    (self.rate_limited, "429", "Over the tenant's rate or concurrency limit; see Retry-After"),
                    (
                        self.relays_backends,
                        "502",
                        "A backend database or the cloud API failed (provisioning_failed, backend_unavailable)",
                    ),
                    (
                        true,
                        "503",
                        "Unavailable for now (backend, registry, or the tenant's placement); see Retry-After",
                    ),
                ];
                for (applies, status, description) in statuses {
                    if applies && !op.responses.responses.contains_key(status) {
                        let response = ResponseBuilder::new()
                            .description(description)
                            .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))))
                            .build();
                        op.responses.responses.insert(status.to_string(), response.into());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod json_kind_tests {
    #[test]
    fn every_json_media_type_is_checked_for_nul() {
        for json in [
            "application/json",
            "text/json",
            "application/merge-patch+json",
            "application/json; charset=utf-8",
            "text/json ;x=1",
        ] {
            assert!(super::is_json(json), "{json}");
        }
        for other in ["text/plain", "application/jsonx", "application/x-www-form-urlencoded", ""] {
            assert!(!super::is_json(other), "{other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_escape_is_found_and_an_escaped_backslash_is_not() {
        assert!(has_json_nul(br#"{"name": "a\u0000b"}"#));
        assert!(has_json_nul(br#"{"a\u0000": 1}"#));
        assert!(has_json_nul(br#"{"name": "\\\u0000"}"#));
        assert!(!has_json_nul(br#"{"name": "\\u0000"}"#));
        assert!(!has_json_nul(br#"{"name": "a\u0001\"\\"}"#));
        assert!(has_percent_nul(b"/v1/tenants/a%00b"));
        assert!(!has_percent_nul(b"/v1/tenants/a%2500b"));
    }
}
