//! Function management: CreateFunction, GetFunction, GetFunctionConfiguration,
//! ListFunctions, DeleteFunction, UpdateFunctionCode,
//! UpdateFunctionConfiguration (the concurrency and pool settings are in
//! [`super::function_settings`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::auth::Principal;
use super::error::ApiError;
use super::{function_name, read_authed, MAX_CODE_REQUEST};
use crate::store::FunctionRecord;
use crate::vm_backend::VmBackend;
use crate::Daemon;
use silo_aws::date::now_iso8601;
use silo_aws::id::random_uuid;

/// Runtimes silo runs: Lambda's OS-only (custom) runtimes, whose `bootstrap`
/// comes in the zip, and the managed runtimes of
/// [`silo_images::runtime::MANAGED_RUNTIMES`] (`python3.11`, `nodejs22.x`),
/// run from the runtime's own image with `Handler` as `module.function`
/// (`file.function` for Node.js).
pub const RUNTIMES: [&str; 5] = [
    "provided.al2023",
    "provided.al2",
    "provided",
    "python3.11",
    "nodejs22.x",
];

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct CodeInput {
    zip_file: Option<String>,
    s3_bucket: Option<String>,
    image_uri: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct EnvironmentInput {
    variables: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct TenancyInput {
    tenant_isolation_mode: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ConfigInput {
    function_name: Option<String>,
    runtime: Option<String>,
    role: Option<String>,
    handler: Option<String>,
    description: Option<String>,
    timeout: Option<u32>,
    memory_size: Option<u32>,
    environment: Option<EnvironmentInput>,
    tenancy_config: Option<TenancyInput>,
    logging_config: Option<crate::logs::format::LoggingInput>,
    package_type: Option<String>,
    architectures: Option<Vec<String>>,
    code: Option<CodeInput>,
    zip_file: Option<String>,
}

pub(super) fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_content(format!("Could not parse request body into json: {e}"))
    })
}

/// Decodes and checks a base64 zip package for `runtime`; returns it with
/// its SHA-256.
fn decode_package(b64: &str, runtime: &str) -> Result<(Vec<u8>, String), ApiError> {
    let zip = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| ApiError::invalid_parameter(format!("ZipFile is not valid base64: {e}")))?;
    check_package(&zip, runtime)?;
    let sha = hex::encode(Sha256::digest(&zip));
    Ok((zip, sha))
}

/// Checks a zip package for `runtime` without keeping the inflated files
/// (memory stays small): a custom runtime's needs a `bootstrap`, a managed
/// runtime's does not.
fn check_package(zip: &[u8], runtime: &str) -> Result<(), ApiError> {
    let checked = if VmBackend::is_managed(runtime) {
        silo_initramfs::package::check_code(zip)
    } else {
        silo_initramfs::package::check(zip)
    };
    checked.map_err(|e| {
        ApiError::invalid_parameter(format!(
            "Could not unzip uploaded file. Please check your file, then try to upload again. ({e})"
        ))
    })
}

/// Refuses a runtime this daemon does not offer, listing those it does.
fn check_runtime(r: &str) -> Result<(), ApiError> {
    if RUNTIMES.contains(&r) {
        return Ok(());
    }
    Err(ApiError::invalid_parameter(if r.is_empty() {
        format!(
            "Runtime is required for a Zip package: one of {}",
            RUNTIMES.join(", ")
        )
    } else {
        format!(
            "Runtime {r:?} is not supported by this daemon: it offers {}",
            RUNTIMES.join(", ")
        )
    }))
}

fn check_config(input: &ConfigInput, rec: &mut FunctionRecord) -> Result<(), ApiError> {
    if let Some(r) = &input.runtime {
        check_runtime(r)?;
        rec.runtime = r.clone();
    }
    if let Some(role) = &input.role {
        rec.role = role.clone();
    }
    if let Some(h) = &input.handler {
        if h.is_empty() || h.len() > 128 {
            return Err(ApiError::invalid_parameter(
                "Handler must be 1 to 128 characters",
            ));
        }
        rec.handler = h.clone();
    }
    if let Some(d) = &input.description {
        if d.len() > 256 {
            return Err(ApiError::invalid_parameter(
                "Description must be at most 256 characters",
            ));
        }
        rec.description = d.clone();
    }
    if let Some(t) = input.timeout {
        if !(1..=900).contains(&t) {
            return Err(ApiError::invalid_parameter(format!(
                "Timeout {t} is out of range: 1 to 900 seconds"
            )));
        }
        rec.timeout_s = t;
    }
    if let Some(m) = input.memory_size {
        if !(128..=10240).contains(&m) {
            return Err(ApiError::invalid_parameter(format!(
                "MemorySize {m} is out of range: 128 to 10240 MB"
            )));
        }
        rec.memory_mib = m;
    }
    if let Some(env) = &input.environment {
        let vars = env.variables.clone().unwrap_or_default();
        for k in vars.keys() {
            let ok = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(ApiError::invalid_parameter(format!(
                    "Environment variable name {k:?} is invalid: letters, digits and _, starting with a letter"
                )));
            }
            if k.starts_with("AWS_") || k.starts_with("_") || k == "LAMBDA_TASK_ROOT" {
                return Err(ApiError::invalid_parameter(format!(
                    "Environment variable {k} is reserved"
                )));
            }
        }
        let size: usize = vars.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > 4096 {
            return Err(ApiError::invalid_parameter(format!(
                "Environment variables take {size} bytes; the limit is 4 KB"
            )));
        }
        rec.environment = vars;
    }
    if let Some(l) = &input.logging_config {
        rec.logging
            .apply(l, &rec.name)
            .map_err(ApiError::invalid_parameter)?;
    }
    if let Some(p) = &input.package_type {
        if p != "Zip" {
            return Err(ApiError::invalid_parameter(format!(
                "PackageType {p:?} is not supported: only Zip"
            )));
        }
    }
    if let Some(a) = &input.architectures {
        if a.iter().any(|a| a != "x86_64") {
            return Err(ApiError::invalid_parameter(format!(
                "Architectures {a:?} are not supported: only x86_64"
            )));
        }
    }
    Ok(())
}

/// The `FunctionConfiguration` shape.
pub fn configuration(d: &Daemon, r: &FunctionRecord) -> Value {
    let sha_b64 = hex::decode(&r.code_sha256)
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
        .unwrap_or_default();
    let mut v = json!({
        "FunctionName": r.name,
        "FunctionArn": d.arn(&r.name),
        "Runtime": r.runtime,
        "Role": r.role,
        "Handler": r.handler,
        "CodeSize": r.code_size,
        "Description": r.description,
        "Timeout": r.timeout_s,
        "MemorySize": r.memory_mib,
        "LastModified": r.last_modified,
        "CodeSha256": sha_b64,
        "Version": "$LATEST",
        "Environment": { "Variables": r.environment },
        "TracingConfig": { "Mode": "PassThrough" },
        "RevisionId": r.revision_id,
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "EphemeralStorage": { "Size": 512 },
        "LoggingConfig": r.logging.api_shape(&r.name),
    });
    if r.per_tenant {
        v["TenancyConfig"] = json!({ "TenantIsolationMode": "PER_TENANT" });
    }
    v
}

/// The `FunctionConfiguration` shape as `principal` may see it: without
/// `Environment.Variables` for tenant keys (variables often hold secrets).
fn configuration_for(d: &Daemon, r: &FunctionRecord, principal: &Principal) -> Value {
    let mut v = configuration(d, r);
    if !principal.may_read_secrets() {
        if let Some(env) = v.get_mut("Environment").and_then(Value::as_object_mut) {
            env.remove("Variables");
        }
    }
    v
}

pub(super) fn lookup(d: &Daemon, raw: &str) -> Result<FunctionRecord, ApiError> {
    let name = function_name(raw)?;
    d.get(&name)
        .ok_or_else(|| ApiError::not_found(format!("Function not found: {}", d.arn(&name))))
}

/// `POST /2015-03-31/functions`
pub async fn create(State(d): State<Arc<Daemon>>, req: Request) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, MAX_CODE_REQUEST, "CreateFunction").await?;
    a.principal.require_admin("CreateFunction")?;
    let input: ConfigInput = parse_json(&a.body)?;
    let name = function_name(input.function_name.as_deref().unwrap_or(""))?;
    if input.role.as_deref().unwrap_or("").is_empty() {
        return Err(ApiError::invalid_parameter("Role is required"));
    }
    let per_tenant = match input
        .tenancy_config
        .as_ref()
        .and_then(|t| t.tenant_isolation_mode.as_deref())
    {
        None => false,
        Some("PER_TENANT") => true,
        Some(other) => {
            return Err(ApiError::invalid_parameter(format!(
                "TenantIsolationMode {other:?} is not valid: the only mode is PER_TENANT"
            )))
        }
    };
    let code = input.code.as_ref();
    if code.is_some_and(|c| c.s3_bucket.is_some() || c.image_uri.is_some()) {
        return Err(ApiError::invalid_parameter(
            "Code.S3Bucket and Code.ImageUri are not supported: upload the package as Code.ZipFile",
        ));
    }
    let b64 = code
        .and_then(|c| c.zip_file.as_deref())
        .ok_or_else(|| ApiError::invalid_parameter("Code.ZipFile is required"))?;
    let runtime = input.runtime.clone().unwrap_or_default();
    // The runtime first: what the package must hold depends on it.
    check_runtime(&runtime)?;
    let (zip, sha) = decode_package(b64, &runtime)?;
    let mut rec = FunctionRecord {
        name: name.clone(),
        runtime: String::new(),
        role: String::new(),
        handler: "bootstrap".into(),
        description: String::new(),
        memory_mib: 128,
        timeout_s: 3,
        environment: BTreeMap::new(),
        per_tenant,
        code_sha256: sha,
        code_size: zip.len() as u64,
        revision_id: random_uuid(),
        last_modified: now_iso8601(),
        reserved_concurrency: None,
        pool_size: None,
        network: None,
        event_invoke_config: None,
        logging: Default::default(),
        tenant_role: None,
    };
    if input.runtime.is_none() {
        return Err(ApiError::invalid_parameter(format!(
            "Runtime is required for a Zip package: one of {}",
            RUNTIMES.join(", ")
        )));
    }
    let managed = input
        .runtime
        .as_deref()
        .is_some_and(crate::vm_backend::VmBackend::is_managed);
    if managed && input.handler.is_none() {
        let example = match input.runtime.as_deref() {
            Some(r) if r.starts_with("nodejs") => "file.function, e.g. index.handler",
            _ => "module.function, e.g. lambda_function.lambda_handler",
        };
        return Err(ApiError::invalid_parameter(format!(
            "Handler is required for a managed runtime: {example}"
        )));
    }
    check_config(&input, &mut rec)?;
    match d.create(rec.clone(), &zip) {
        Ok(true) => Ok((StatusCode::CREATED, Json(configuration(&d, &rec))).into_response()),
        Ok(false) => Err(ApiError::conflict(format!(
            "Function already exist: {name}"
        ))),
        Err(e) => Err(change_error(format!("storing function {name}"), e)),
    }
}

/// A function change the daemon could not make: the caller's to fix when
/// its memory cannot hold the runtime (400), else the daemon's (500).
pub(super) fn change_error(what: String, e: crate::state::FunctionError) -> ApiError {
    use crate::state::FunctionError;
    use crate::vm_backend::RegisterError;
    match e {
        FunctionError::Image(e @ RegisterError::MemoryTooSmall { .. }) => {
            ApiError::invalid_parameter(e.to_string())
        }
        e => ApiError::service(format!("{what}: {e}")),
    }
}

/// `GET /2015-03-31/functions/{name}`
pub async fn get(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "GetFunction").await?;
    let r = lookup(&d, &raw)?;
    let mut v = json!({
        "Configuration": configuration_for(&d, &r, &a.principal),
        "Code": { "RepositoryType": "silo", "Location": format!("silo://code/{}", r.code_sha256) },
    });
    if let Some(n) = r.reserved_concurrency {
        v["Concurrency"] = json!({ "ReservedConcurrentExecutions": n });
        // In a cluster: the part of it this node enforces, and among how
        // many live nodes (see `cluster::shares`).
        if let Some((share, Some(p))) = d.reserved_here(&r) {
            v["Concurrency"]["SiloNodeShare"] = json!(share);
            v["Concurrency"]["SiloLiveNodes"] = json!(p.live);
        }
    }
    let pool = d.pool_size(&r);
    if pool > 0 {
        v["SiloPool"] = json!({ "PoolSize": pool });
    }
    Ok(Json(v).into_response())
}

/// `GET /2015-03-31/functions/{name}/configuration`
pub async fn get_configuration(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "GetFunctionConfiguration").await?;
    let r = lookup(&d, &raw)?;
    Ok(Json(configuration_for(&d, &r, &a.principal)).into_response())
}

/// `GET /2015-03-31/functions` with `Marker` and `MaxItems`.
pub async fn list(State(d): State<Arc<Daemon>>, req: Request) -> Result<Response, ApiError> {
    let query = req.uri().query().unwrap_or("").to_string();
    let a = read_authed(&d, req, 0, "ListFunctions").await?;
    let mut marker = None;
    let mut max = 50usize;
    for (k, v) in query.split('&').filter_map(|p| p.split_once('=')) {
        match k {
            "Marker" => marker = Some(v.to_string()),
            "MaxItems" => {
                max = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid_parameter(format!(
                            "MaxItems {v:?} is not a number from 1 to 10000"
                        ))
                    })?
            }
            _ => {}
        }
    }
    let all = d.list();
    let page: Vec<&FunctionRecord> = all
        .iter()
        .filter(|r| marker.as_ref().is_none_or(|m| r.name.as_str() > m.as_str()))
        .take(max + 1)
        .collect();
    let more = page.len() > max;
    let page = &page[..page.len().min(max)];
    let mut v = json!({
        "Functions": page.iter().map(|r| configuration_for(&d, r, &a.principal)).collect::<Vec<_>>(),
    });
    if more {
        v["NextMarker"] = json!(page.last().map(|r| r.name.clone()));
    }
    Ok(Json(v).into_response())
}

/// `DELETE /2015-03-31/functions/{name}`
pub async fn delete(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 0, "DeleteFunction").await?;
    a.principal.require_admin("DeleteFunction")?;
    let r = lookup(&d, &raw)?;
    match d.delete(&r.name).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiError::not_found(format!(
            "Function not found: {}",
            d.arn(&r.name)
        ))),
        Err(e) => Err(ApiError::service(format!("deleting {}: {e}", r.name))),
    }
}

fn refuse_tenancy_change(input: &ConfigInput) -> Result<(), ApiError> {
    if input.tenancy_config.is_some() {
        return Err(ApiError::invalid_parameter(
            "TenancyConfig cannot be changed after the function is created",
        ));
    }
    Ok(())
}

/// `PUT /2015-03-31/functions/{name}/code`: new environments run the new
/// code; environments of the old code finish their invocation and go.
pub async fn update_code(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, MAX_CODE_REQUEST, "UpdateFunctionCode").await?;
    a.principal.require_admin("UpdateFunctionCode")?;
    let input: ConfigInput = parse_json(&a.body)?;
    refuse_tenancy_change(&input)?;
    let _changing = d.changing(&function_name(&raw)?).await;
    let mut rec = lookup(&d, &raw)?;
    let b64 = input
        .zip_file
        .as_deref()
        .ok_or_else(|| ApiError::invalid_parameter("ZipFile is required"))?;
    let (zip, sha) = decode_package(b64, &rec.runtime)?;
    rec.code_sha256 = sha;
    rec.code_size = zip.len() as u64;
    rec.revision_id = random_uuid();
    rec.last_modified = now_iso8601();
    let rec = d
        .update(rec.clone(), &zip)
        .await
        .map_err(|e| change_error(format!("updating {}", rec.name), e))?;
    Ok(Json(configuration(&d, &rec)).into_response())
}

/// `PUT /2015-03-31/functions/{name}/configuration`
pub async fn update_configuration(
    State(d): State<Arc<Daemon>>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = read_authed(&d, req, 1 << 20, "UpdateFunctionConfiguration").await?;
    a.principal.require_admin("UpdateFunctionConfiguration")?;
    let input: ConfigInput = parse_json(&a.body)?;
    refuse_tenancy_change(&input)?;
    let _changing = d.changing(&function_name(&raw)?).await;
    let mut rec = lookup(&d, &raw)?;
    check_config(&input, &mut rec)?;
    rec.revision_id = random_uuid();
    rec.last_modified = now_iso8601();
    let code = d
        .code(&rec.code_sha256)
        .map_err(|e| ApiError::service(format!("reading the code of {}: {e}", rec.name)))?;
    // A new runtime must be able to run the code it has (a custom runtime
    // needs a `bootstrap` in it).
    check_package(&code, &rec.runtime)?;
    let rec = d
        .update(rec.clone(), &code)
        .await
        .map_err(|e| change_error(format!("updating {}", rec.name), e))?;
    Ok(Json(configuration(&d, &rec)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every managed runtime the images crate can build is offered, and
    /// nothing else beyond the custom runtimes.
    #[test]
    fn offered_runtimes_are_the_custom_and_the_managed_ones() {
        for r in silo_images::runtime::MANAGED_RUNTIMES {
            assert!(RUNTIMES.contains(&r), "{r} is not offered");
        }
        let custom = RUNTIMES.iter().filter(|r| !VmBackend::is_managed(r));
        assert!(custom.eq(["provided.al2023", "provided.al2", "provided"].iter()));
    }

    #[test]
    fn an_unknown_runtime_is_refused_listing_the_offered_ones() {
        for bad in ["nodejs18.x", "python3.12", ""] {
            let e = check_runtime(bad).unwrap_err();
            let text = format!("{e:?}");
            for r in RUNTIMES {
                assert!(text.contains(r), "{text} does not list {r}");
            }
        }
        assert!(check_runtime("python3.11").is_ok());
        assert!(check_runtime("nodejs22.x").is_ok());
    }

    /// A managed runtime's package needs no `bootstrap`; a custom one's does.
    #[test]
    fn only_custom_runtime_packages_need_a_bootstrap() {
        let py = silo_initramfs::package::make_zip(&[("lambda_function.py", 0o644, b"x=1")]);
        assert!(check_package(&py, "python3.11").is_ok());
        let js = silo_initramfs::package::make_zip(&[("index.js", 0o644, b"exports.handler=1")]);
        assert!(check_package(&js, "nodejs22.x").is_ok());
        let e = check_package(&py, "provided.al2023").unwrap_err();
        assert!(format!("{e:?}").contains("bootstrap"), "{e:?}");
    }
}
