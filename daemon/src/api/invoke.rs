//! `Invoke`: `POST /2015-03-31/functions/{name}/invocations`.
//!
//! Checks, in order: signature, function, qualifier, tenant id (required for
//! `PER_TENANT` functions, refused on others, validated), the caller's right
//! to act for that tenant, payload size and JSON, invocation type. Then
//! RequestResponse runs through the scheduler and answers with the result;
//! Event is queued (202); DryRun answers 204.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use silo_proto::{ErrorInfo, Outcome};
use silo_scheduler::{ScheduleError, TenantId, ThrottleReason};
use tracing::Instrument;

use super::error::{ApiError, MISSING_TENANT};
use super::{function_name, read_authed};
use crate::vm_env::{EnvError, InvokeResult, LOG_TAIL};
use crate::Daemon;
use silo_aws::id::random_uuid;

/// Largest synchronous payload, as Lambda (6 MB).
pub const MAX_SYNC_PAYLOAD: usize = silo_proto::MAX_PAYLOAD;
/// Largest asynchronous (Event) payload, as Lambda (1 MB).
pub const MAX_EVENT_PAYLOAD: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

/// Handles one Invoke.
pub async fn invoke(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    // Event payloads are held in the queue: their smaller limit applies
    // before the body is read.
    let (limit, what) = match header(req.headers(), "x-amz-invocation-type") {
        Some("Event") => (MAX_EVENT_PAYLOAD, "asynchronous (Event) Invoke"),
        _ => (MAX_SYNC_PAYLOAD, "Invoke"),
    };
    let a = read_authed(&d, req, limit, what).await?;
    let name = function_name(&raw)?;
    let rec = d
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("Function not found: {}", d.arn(&name))))?;
    if let Some(q) = a
        .parts
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("Qualifier=")))
    {
        if q != "$LATEST" && q != "%24LATEST" {
            return Err(ApiError::not_found(format!(
                "Function not found: {}:{q} (silo serves $LATEST only)",
                d.arn(&name)
            )));
        }
    }
    let tenant = match (header(&a.parts.headers, "x-amz-tenant-id"), rec.per_tenant) {
        (None, true) => return Err(ApiError::invalid_parameter(MISSING_TENANT)),
        (Some(_), false) => {
            return Err(ApiError::invalid_parameter(format!(
                "The function {name} does not use tenant isolation (TenancyConfig PER_TENANT); \
                 remove the tenant ID (X-Amz-Tenant-Id) from the request"
            )))
        }
        (None, false) => None,
        (Some(t), true) => Some(TenantId::parse(t).map_err(|e| {
            ApiError::invalid_parameter(format!("Invalid tenant ID (X-Amz-Tenant-Id): {e}"))
        })?),
    };
    a.principal
        .require_tenant(tenant.as_ref().map(|t| t.as_str()))?;
    let kind = match header(&a.parts.headers, "x-amz-invocation-type") {
        None | Some("RequestResponse") => InvocationType::RequestResponse,
        Some("Event") => InvocationType::Event,
        Some("DryRun") => InvocationType::DryRun,
        Some(other) => {
            return Err(ApiError::invalid_parameter(format!(
                "X-Amz-Invocation-Type {other:?} is not valid: RequestResponse, Event or DryRun"
            )))
        }
    };
    let tail = match header(&a.parts.headers, "x-amz-log-type") {
        None | Some("None") => false,
        Some("Tail") => true,
        Some(other) => {
            return Err(ApiError::invalid_parameter(format!(
                "X-Amz-Log-Type {other:?} is not valid: None or Tail"
            )))
        }
    };
    let payload = if a.body.is_empty() {
        b"{}".to_vec()
    } else {
        serde_json::from_slice::<serde::de::IgnoredAny>(&a.body).map_err(|e| {
            ApiError::invalid_content(format!("Could not parse request body into json: {e}"))
        })?;
        a.body.to_vec()
    };
    let request_id = random_uuid();
    let tenant_id = tenant.as_ref().map(|t| t.as_str().to_string());
    let span = tracing::info_span!("invoke", function = %name, tenant_id = ?tenant_id.as_deref().unwrap_or("-"), request_id = %request_id);
    match kind {
        InvocationType::DryRun => Ok(with_request_id(
            StatusCode::NO_CONTENT.into_response(),
            &request_id,
        )),
        InvocationType::Event => {
            if payload.len() > MAX_EVENT_PAYLOAD {
                return Err(ApiError::too_large(format!(
                    "Request must be smaller than {MAX_EVENT_PAYLOAD} bytes for an asynchronous (Event) invocation"
                )));
            }
            match d.enqueue(&name, tenant, payload, request_id.clone()).await {
                Ok(()) => {}
                Err(crate::event_worker::EnqueueError::Full(full)) => {
                    return Err(ApiError::throttled(full.to_string(), full.reason()))
                }
                Err(e @ crate::event_worker::EnqueueError::Store(_)) => {
                    span.in_scope(|| tracing::error!(error = %e, "event invocation refused"));
                    return Err(ApiError::service(e.to_string()));
                }
            }
            span.in_scope(|| tracing::info!("event invocation queued"));
            Ok(with_request_id(
                StatusCode::ACCEPTED.into_response(),
                &request_id,
            ))
        }
        InvocationType::RequestResponse => {
            async move {
                let result = d.invoke(&rec, tenant, payload, &request_id).await;
                let env = result
                    .as_ref()
                    .ok()
                    .map(|r| d.environment_token(&rec.name, tenant_id.as_deref(), r.env_id));
                let resp = respond(
                    result,
                    &request_id,
                    tail,
                    rec.memory_mib,
                    stack_trace_key(&rec.runtime),
                )
                .map(|r| with_environment_token(r, env.as_deref()));
                match &resp {
                    Ok(r) => tracing::info!(status = r.status().as_u16(), "invocation answered"),
                    Err(e) => tracing::info!(
                        status = e.status.as_u16(),
                        error = e.kind,
                        reason = e.reason.unwrap_or("-"),
                        "invocation refused"
                    ),
                }
                resp.map(|r| with_request_id(r, &request_id))
            }
            .instrument(span)
            .await
        }
    }
}

/// Replaces the scheduler's environment number in `X-Silo-Environment-Id`
/// (a host-wide count of every tenant's cold starts) with `token`, the
/// environment's opaque id for this (function, tenant).
fn with_environment_token(mut r: Response, token: Option<&str>) -> Response {
    let h = r.headers_mut();
    if let (true, Some(v)) = (
        h.contains_key("x-silo-environment-id"),
        token.and_then(|t| HeaderValue::from_str(t).ok()),
    ) {
        h.insert("x-silo-environment-id", v);
    }
    r
}

fn with_request_id(mut r: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut().insert("x-amzn-RequestId", v);
    }
    r
}

/// Lambda's log tail: START, the function's output, END and REPORT, last 4 KB.
fn log_tail(id: &str, r: &InvokeResult, init: Option<Duration>, memory_mib: u32) -> String {
    let mut text = format!("START RequestId: {id} Version: $LATEST\n");
    text.push_str(&String::from_utf8_lossy(&r.log_tail));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let ms = r.duration.as_secs_f64() * 1000.0;
    text.push_str(&format!(
        "END RequestId: {id}\nREPORT RequestId: {id}\tDuration: {ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {memory_mib} MB",
        ms.ceil() as u64
    ));
    if let Some(init) = init {
        text.push_str(&format!(
            "\tInit Duration: {:.2} ms",
            init.as_secs_f64() * 1000.0
        ));
    }
    text.push('\n');
    let start = text.len().saturating_sub(LOG_TAIL);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

fn function_error(
    info: &ErrorInfo,
    result: Option<&InvokeResult>,
    id: &str,
    tail: bool,
    memory_mib: u32,
    cold: Option<(bool, u64)>,
    trace_key: &'static str,
) -> Response {
    // Lambda's shape: the runtime's stack trace when it reported one.
    let mut body =
        serde_json::json!({ "errorType": info.error_type, "errorMessage": info.error_message });
    if !info.stack_trace.is_empty() {
        body[trace_key] = serde_json::json!(info.stack_trace);
    }
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        "X-Amz-Function-Error",
        HeaderValue::from_static("Unhandled"),
    );
    h.insert(
        "X-Amz-Executed-Version",
        HeaderValue::from_static("$LATEST"),
    );
    if let (true, Some(r)) = (tail, result) {
        let t = base64::engine::general_purpose::STANDARD.encode(log_tail(id, r, None, memory_mib));
        if let Ok(v) = HeaderValue::from_str(&t) {
            h.insert("X-Amz-Log-Result", v);
        }
    }
    if let Some((c, env)) = cold {
        h.insert(
            "X-Silo-Cold-Start",
            HeaderValue::from_static(if c { "true" } else { "false" }),
        );
        h.insert("X-Silo-Environment-Id", HeaderValue::from(env));
    }
    resp
}

/// The key of a function error's stack trace in Lambda's response body:
/// `trace` for Node.js runtimes (its runtime interface client's shape),
/// `stackTrace` for the others.
fn stack_trace_key(runtime: &str) -> &'static str {
    if runtime.starts_with("nodejs") {
        "trace"
    } else {
        "stackTrace"
    }
}

fn respond(
    result: crate::InvokeOutcome,
    id: &str,
    tail: bool,
    memory_mib: u32,
    trace_key: &'static str,
) -> Result<Response, ApiError> {
    match result {
        Ok(report) => {
            let r = &report.response;
            let cold = Some((report.cold_start, report.env_id));
            match &r.outcome {
                Outcome::Ok(body) => {
                    let mut resp = (StatusCode::OK, body.clone()).into_response();
                    let h = resp.headers_mut();
                    h.insert("content-type", HeaderValue::from_static("application/json"));
                    h.insert(
                        "X-Amz-Executed-Version",
                        HeaderValue::from_static("$LATEST"),
                    );
                    h.insert(
                        "X-Silo-Cold-Start",
                        HeaderValue::from_static(if report.cold_start { "true" } else { "false" }),
                    );
                    h.insert("X-Silo-Environment-Id", HeaderValue::from(report.env_id));
                    if report.from_pool {
                        h.insert("X-Silo-Pooled", HeaderValue::from_static("true"));
                    }
                    if tail {
                        let t = base64::engine::general_purpose::STANDARD.encode(log_tail(
                            id,
                            r,
                            report.init_duration,
                            memory_mib,
                        ));
                        if let Ok(v) = HeaderValue::from_str(&t) {
                            h.insert("X-Amz-Log-Result", v);
                        }
                    }
                    Ok(resp)
                }
                Outcome::Err(info) => Ok(function_error(
                    info,
                    Some(r),
                    id,
                    tail,
                    memory_mib,
                    cold,
                    trace_key,
                )),
            }
        }
        Err(ScheduleError::Throttled(reason)) => {
            let (msg, code) = match reason {
                ThrottleReason::FunctionConcurrency => ("Rate Exceeded: the function's reserved concurrency is in use", "ReservedFunctionConcurrentInvocationLimitExceeded"),
                ThrottleReason::HostConcurrency => ("Rate Exceeded: the host's concurrency for functions without reserved concurrency is in use", "ConcurrentInvocationLimitExceeded"),
                ThrottleReason::TenantConcurrency => ("Rate Exceeded: this tenant's concurrency ceiling for this function is reached", "TenantConcurrentInvocationLimitExceeded"),
                ThrottleReason::TenantEnvironments => ("Rate Exceeded: this tenant holds its share of the host's execution environments, all busy", "TenantExecutionEnvironmentLimitExceeded"),
                ThrottleReason::HostMemory => ("Rate Exceeded: the function's memory exceeds what this host may give all its environments", "HostMemoryLimitExceeded"),
                ThrottleReason::EnvironmentCap => ("Rate Exceeded: the function's execution environment cap is reached and none is idle", "FunctionExecutionEnvironmentLimitExceeded"),
                ThrottleReason::ColdStartQueueFull => ("Rate Exceeded: too many new execution environments are waiting to boot on this host; retry later", "ColdStartQueueFull"),
                ThrottleReason::ColdStartDeadline => ("Rate Exceeded: a new execution environment could not be ready within the init timeout while others boot; retry later", "ColdStartDeadlineExceeded"),
            };
            Err(ApiError::throttled(msg, code))
        }
        Err(ScheduleError::Environment(EnvError::FunctionCrashed(r))) => {
            let info = match &r.outcome {
                Outcome::Err(i) => i.clone(),
                Outcome::Ok(_) => ErrorInfo {
                    error_type: "Runtime.ExitError".into(),
                    error_message: "the runtime exited".into(),
                    stack_trace: Vec::new(),
                },
            };
            Ok(function_error(
                &info,
                Some(&r),
                id,
                tail,
                memory_mib,
                None,
                trace_key,
            ))
        }
        Err(ScheduleError::Environment(EnvError::TimedOut)) => Ok(function_error(
            &ErrorInfo {
                error_type: "Sandbox.Timedout".into(),
                error_message: format!("RequestId: {id} Error: Task timed out"),
                stack_trace: Vec::new(),
            },
            None,
            id,
            tail,
            memory_mib,
            None,
            trace_key,
        )),
        Err(ScheduleError::Environment(EnvError::Credentials(e))) => {
            Err(ApiError::tenant_credentials(e.to_string()))
        }
        Err(ScheduleError::Environment(e)) => Ok(function_error(
            &ErrorInfo {
                error_type: "Runtime.ExitError".into(),
                error_message: format!("RequestId: {id} Error: {}", e.caller_message()),
                stack_trace: Vec::new(),
            },
            None,
            id,
            tail,
            memory_mib,
            None,
            trace_key,
        )),
        Err(ScheduleError::Create(e)) => {
            tracing::error!(error = %e, "could not create an execution environment");
            Err(ApiError::service(format!(
                "could not start an execution environment: {}",
                e.caller_message()
            )))
        }
        Err(ScheduleError::Internal(e)) => Err(ApiError::service(e)),
    }
}
