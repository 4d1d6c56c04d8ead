//! A CloudWatch Logs-compatible subset on the daemon's address (`POST /`,
//! `X-Amz-Target: Logs_20140328.<Operation>`, JSON 1.1, signed for the
//! `logs` service), so boto3's `logs` client and `aws logs` work with an
//! endpoint override: DescribeLogGroups, DescribeLogStreams, GetLogEvents,
//! FilterLogEvents, PutRetentionPolicy and DeleteRetentionPolicy. Plus the
//! usage extension `GET /2015-03-31/functions/{name}/usage`.
//!
//! Who reads what: an admin key reads every event; a tenant key only its
//! own tenants' events, whatever it asks for: the tenant directories it
//! may not read are never opened ([`crate::logs::query::Scope`]), so no
//! stream name, token or filter pattern reaches them.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::error::ApiError;
use super::{function_name, read_authed};
use crate::logs::pattern::Pattern;
use crate::logs::query::{self, Cursor, EventQuery, Scope};
use crate::Daemon;

/// The target prefix of CloudWatch Logs operations.
const TARGET: &str = "Logs_20140328.";
/// Largest request body of a logs operation.
const MAX_REQUEST: usize = 1 << 20;
/// Most events one answer holds (as CloudWatch).
const MAX_EVENTS: usize = 10_000;
/// Most message bytes one answer holds (as CloudWatch, 1 MB).
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// `RetentionInDays` values CloudWatch accepts.
const RETENTION_DAYS: [u32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// The service a request must be signed for: `logs` for a CloudWatch Logs
/// operation, `lambda` for everything else.
pub(super) fn signing_service(parts: &Parts) -> &'static str {
    let logs = parts.uri.path() == "/"
        && parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with(TARGET));
    if logs {
        "logs"
    } else {
        "lambda"
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        kind: "InvalidParameterException",
        message: message.into(),
        reason: None,
    }
}

fn no_group() -> ApiError {
    ApiError::not_found("The specified log group does not exist.")
}

fn scope_of(p: &Principal) -> Scope {
    match p {
        Principal::Admin { .. } => Scope::All,
        Principal::Tenants { tenants, .. } => Scope::Tenants(tenants.clone()),
    }
}

/// The function of a log group name (or ARN).
fn group_function(name: Option<&str>) -> Result<String, ApiError> {
    let name = name.ok_or_else(|| invalid("logGroupName is required"))?;
    let name = match name.find(":log-group:") {
        Some(i) => name[i + ":log-group:".len()..].trim_end_matches(":*"),
        None => name,
    };
    name.strip_prefix("/aws/lambda/")
        .filter(|f| crate::logs::store::valid_function(f))
        .map(str::to_string)
        .ok_or_else(no_group)
}

/// The function of the log group `name` names, if it has a log group
/// (the function exists, or its logs outlive it).
fn existing_group(d: &Daemon, name: Option<&str>) -> Result<String, ApiError> {
    let f = group_function(name)?;
    if d.get(&f).is_none() && !d.logs.root().join(&f).is_dir() {
        return Err(no_group());
    }
    Ok(f)
}

/// A `nextToken` as a cursor (none: from the start).
fn cursor_of(token: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    token
        .map(|t| Cursor::parse(t).ok_or_else(|| invalid("nextToken is not valid")))
        .transpose()
}

/// Runs `f` (a read of the log store) off the async threads.
async fn read_store<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::service(format!("reading the log store: {e}")))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Input {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    log_group_name_prefix: Option<String>,
    log_stream_name: Option<String>,
    log_stream_names: Option<Vec<String>>,
    log_stream_name_prefix: Option<String>,
    start_time: Option<u64>,
    end_time: Option<u64>,
    filter_pattern: Option<String>,
    next_token: Option<String>,
    limit: Option<usize>,
    start_from_head: Option<bool>,
    order_by: Option<String>,
    descending: Option<bool>,
    retention_in_days: Option<u32>,
}

impl Input {
    /// The log group named (by name or identifier).
    fn group(&self) -> Option<&str> {
        self.log_group_name
            .as_deref()
            .or(self.log_group_identifier.as_deref())
    }

    /// Events per answer asked for, within CloudWatch's bounds.
    fn event_limit(&self) -> usize {
        self.limit.unwrap_or(MAX_EVENTS).clamp(1, MAX_EVENTS)
    }
}

fn amz_json(v: Value) -> Response {
    let mut r = (StatusCode::OK, v.to_string()).into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    r
}

/// `POST /` with a `Logs_20140328.*` target. Errors in the JSON 1.1
/// protocol's shape (`{"__type", "message"}` beside `x-amzn-ErrorType`),
/// which the SDKs' logs clients read.
pub async fn dispatch(State(d): State<Arc<Daemon>>, req: Request) -> Response {
    match operation(d, req).await {
        Ok(r) => r,
        Err(e) => {
            let body = json!({ "__type": e.kind, "message": e.message });
            let mut r = (e.status, body.to_string()).into_response();
            let h = r.headers_mut();
            h.insert(
                "content-type",
                HeaderValue::from_static("application/x-amz-json-1.1"),
            );
            h.insert("x-amzn-ErrorType", HeaderValue::from_static(e.kind));
            r
        }
    }
}

async fn operation(d: Arc<Daemon>, req: Request) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, MAX_REQUEST, "CloudWatch Logs").await?;
    let op = a
        .parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET))
        .ok_or_else(|| ApiError::unknown_operation("POST", "/"))?
        .to_string();
    let input: Input = if a.body.is_empty() {
        Input::default()
    } else {
        serde_json::from_slice(&a.body).map_err(|e| {
            ApiError::invalid_content(format!("Could not parse request body into json: {e}"))
        })?
    };
    let scope = scope_of(&a.principal);
    let root = d.logs.root().to_path_buf();
    let region = d.config.region.clone();
    let account = d.config.account_id.clone();
    match op.as_str() {
        "PutRetentionPolicy" | "DeleteRetentionPolicy" => {
            a.principal.require_admin(&op)?;
            let f = existing_group(&d, input.log_group_name.as_deref())?;
            let days = if op == "PutRetentionPolicy" {
                let days = input
                    .retention_in_days
                    .ok_or_else(|| invalid("retentionInDays is required"))?;
                if !RETENTION_DAYS.contains(&days) {
                    return Err(invalid(format!(
                        "retentionInDays {days} is not valid: one of {RETENTION_DAYS:?}"
                    )));
                }
                Some(days)
            } else {
                None
            };
            crate::logs::store::set_retention_days(&root, &f, days)
                .map_err(|e| ApiError::service(format!("saving the retention: {e}")))?;
            Ok(amz_json(json!({})))
        }
        "DescribeLogGroups" => {
            let prefix = input.log_group_name_prefix.unwrap_or_default();
            let limit = input.limit.unwrap_or(50).clamp(1, 50);
            let after = input.next_token.unwrap_or_default();
            let groups = read_store(move || query::groups(&root, &scope)).await?;
            let mut out = Vec::new();
            let mut next = None;
            for g in groups {
                let name = format!("/aws/lambda/{}", g.function);
                if !name.starts_with(&prefix) || (!after.is_empty() && name <= after) {
                    continue;
                }
                if out.len() == limit {
                    next = out
                        .last()
                        .and_then(|v: &Value| v["logGroupName"].as_str().map(str::to_string));
                    break;
                }
                let arn = format!("arn:aws:logs:{region}:{account}:log-group:{name}");
                let mut v = json!({
                    "logGroupName": name,
                    "creationTime": g.created_ms,
                    "metricFilterCount": 0,
                    "arn": format!("{arn}:*"),
                    "logGroupArn": arn,
                    "storedBytes": g.stored_bytes,
                    "logGroupClass": "STANDARD",
                });
                if let Some(r) = g.retention_days {
                    v["retentionInDays"] = r.into();
                }
                out.push(v);
            }
            let mut v = json!({ "logGroups": out });
            if let Some(n) = next {
                v["nextToken"] = n.into();
            }
            Ok(amz_json(v))
        }
        "DescribeLogStreams" => {
            let f = existing_group(&d, input.group())?;
            let prefix = input.log_stream_name_prefix.clone().unwrap_or_default();
            let ff = f.clone();
            let mut streams =
                read_store(move || query::streams(&root, &ff, &scope, &prefix)).await?;
            if input.order_by.as_deref() == Some("LastEventTime") {
                streams.sort_by_key(|s| s.last_ms);
            }
            if input.descending == Some(true) {
                streams.reverse();
            }
            let skip: usize = input
                .next_token
                .as_deref()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let limit = input.limit.unwrap_or(50).clamp(1, 50);
            let total = streams.len();
            let page: Vec<Value> = streams
                .into_iter()
                .skip(skip)
                .take(limit)
                .map(|s| {
                    json!({
                        "logStreamName": s.name,
                        "creationTime": s.first_ms,
                        "firstEventTimestamp": s.first_ms,
                        "lastEventTimestamp": s.last_ms,
                        "lastIngestionTime": s.last_ingest_ms,
                        "storedBytes": s.bytes,
                        "arn": format!("arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{f}:log-stream:{}", s.name),
                    })
                })
                .collect();
            let mut v = json!({ "logStreams": page });
            if skip + limit < total {
                v["nextToken"] = (skip + limit).to_string().into();
            }
            Ok(amz_json(v))
        }
        "GetLogEvents" => get_log_events(&d, input, scope).await,
        "FilterLogEvents" => filter_log_events(&d, input, scope).await,
        other => Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "UnknownOperationException",
            message: format!("CloudWatch Logs operation {other:?} is not served by silo"),
            reason: None,
        }),
    }
}

/// Keeps the leading events whose messages fit in one answer.
fn fit_answer(found: &mut Vec<query::Found>) -> bool {
    let mut bytes = 0;
    let keep = found
        .iter()
        .take_while(|f| {
            bytes += f.event.m.len() + 26;
            bytes <= MAX_ANSWER_BYTES
        })
        .count()
        .max(1);
    let cut = found.len() > keep;
    found.truncate(keep);
    cut
}

async fn get_log_events(d: &Daemon, input: Input, scope: Scope) -> Result<Response, ApiError> {
    let f = existing_group(d, input.group())?;
    let stream = input
        .log_stream_name
        .clone()
        .ok_or_else(|| invalid("logStreamName is required"))?;
    let root = d.logs.root().to_path_buf();
    let limit = input.event_limit();
    let token = input.next_token.clone();
    let forward = match token.as_deref() {
        Some(t) if t.starts_with("b/") => false,
        Some(_) => true,
        None => input.start_from_head == Some(true),
    };
    let cursor = cursor_of(token.as_deref())?;
    let (start, end) = (input.start_time, input.end_time);
    let c = cursor.clone();
    let mut found = read_store(move || {
        let streams = [stream];
        if forward {
            query::events(
                &root,
                &EventQuery {
                    function: &f,
                    scope: &scope,
                    streams: &streams,
                    stream_prefix: "",
                    start_ms: start,
                    end_ms: end,
                    pattern: &Pattern::All,
                    limit,
                    after: c.as_ref(),
                },
            )
            .0
        } else {
            query::last_events(&root, &f, &scope, &streams[0], limit, c.as_ref())
                .into_iter()
                .filter(|e| {
                    start.is_none_or(|s| e.event.t >= s) && end.is_none_or(|x| e.event.t < x)
                })
                .collect()
        }
    })
    .await?;
    if forward {
        fit_answer(&mut found);
    } else {
        found.reverse();
        fit_answer(&mut found);
        found.reverse();
    }
    let origin = Cursor {
        t: 0,
        key: String::new(),
        seq: 0,
        off: 0,
    };
    let first = found.first().map(|e| e.cursor.clone());
    let last = found.last().map(|e| e.cursor.clone());
    // At the end, the forward token stays what it was (clients stop when
    // it repeats).
    let fwd = last
        .or_else(|| if forward { cursor.clone() } else { None })
        .unwrap_or_else(|| origin.clone());
    let back = first.or(cursor).unwrap_or(origin);
    let events: Vec<Value> = found
        .into_iter()
        .map(|e| json!({"timestamp": e.event.t, "message": e.event.m, "ingestionTime": e.event.i}))
        .collect();
    Ok(amz_json(json!({
        "events": events,
        "nextForwardToken": format!("f/{}", fwd.token()),
        "nextBackwardToken": format!("b/{}", back.token()),
    })))
}

async fn filter_log_events(d: &Daemon, input: Input, scope: Scope) -> Result<Response, ApiError> {
    let f = existing_group(d, input.group())?;
    let root = d.logs.root().to_path_buf();
    let pattern = Pattern::parse(input.filter_pattern.as_deref().unwrap_or(""))
        .map_err(|e| invalid(e.to_string()))?;
    let after = cursor_of(input.next_token.as_deref())?;
    let limit = input.event_limit();
    let streams = input.log_stream_names.clone().unwrap_or_default();
    let prefix = input.log_stream_name_prefix.clone().unwrap_or_default();
    let (start, end) = (input.start_time, input.end_time);
    let (mut found, mut more) = read_store(move || {
        query::events(
            &root,
            &EventQuery {
                function: &f,
                scope: &scope,
                streams: &streams,
                stream_prefix: &prefix,
                start_ms: start,
                end_ms: end,
                pattern: &pattern,
                limit,
                after: after.as_ref(),
            },
        )
    })
    .await?;
    more |= fit_answer(&mut found);
    let next = more
        .then(|| found.last().map(|e| e.cursor.token()))
        .flatten();
    let events: Vec<Value> = found
        .into_iter()
        .map(|e| {
            json!({
                "logStreamName": e.event.s,
                "timestamp": e.event.t,
                "message": e.event.m,
                "ingestionTime": e.event.i,
                "eventId": e.cursor.token(),
            })
        })
        .collect();
    let mut v = json!({ "events": events, "searchedLogStreams": [] });
    if let Some(n) = next {
        v["nextToken"] = n.into();
    }
    Ok(amz_json(v))
}

/// A time of the usage query: ms since the epoch, or a `YYYY-MM-DD` day.
fn parse_time(s: &str) -> Option<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Some(ms);
    }
    let stamp = format!("{}T000000Z", s.replace('-', ""));
    silo_aws::date::parse_amz_date(&stamp).map(|secs| secs.max(0) as u64 * 1000)
}

/// `GET /2015-03-31/functions/{name}/usage?tenant=&from=&to=`: usage per
/// tenant of a function (admin keys: any tenant; tenant keys: their own).
pub async fn usage(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "GetFunctionUsage").await?;
    let name = function_name(&raw)?;
    let (mut tenant, mut from, mut to) = (None, 0u64, u64::MAX);
    for pair in a.parts.uri.query().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "tenant" => tenant = Some(v),
            "from" => {
                from = parse_time(&v).ok_or_else(|| invalid(format!("from {v:?} is not a time")))?
            }
            "to" => {
                to = parse_time(&v).ok_or_else(|| invalid(format!("to {v:?} is not a time")))?
            }
            _ => {}
        }
    }
    if d.get(&name).is_none() {
        return Err(ApiError::not_found(format!(
            "Function not found: {}",
            d.arn(&name)
        )));
    }
    let scope = scope_of(&a.principal).narrowed(tenant.as_deref());
    let allowed = |t: &str| match &scope {
        Scope::All => true,
        Scope::Tenants(ts) => ts.contains(t),
    };
    let sums = d.logs.usage().query(Some(&name), &allowed, from, to);
    let tenants: Vec<Value> = sums
        .into_iter()
        .map(|((_, t), u)| {
            json!({
                "TenantId": if t.is_empty() { Value::Null } else { t.into() },
                "EnvironmentsCreated": u.environments,
                "Invocations": u.invocations,
                "GBSeconds": u.gb_seconds,
                "Errors": u.errors,
                "Throttles": u.throttles,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "FunctionName": name, "Tenants": tenants })).into_response())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
