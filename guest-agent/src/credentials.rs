//! The container-credentials endpoint the agent serves to the function
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, beside the Runtime API on its
//! address): every AWS SDK reads it unchanged. The host sends the VM's
//! tenant's credentials ([`silo_proto::Message::Credentials`]) before each
//! invoke; the agent never asks and the guest never names a tenant.
//!
//! Until the first credentials arrive (a pre-booted VM's init runs bound to
//! no tenant) the endpoint answers credentials that authorize nothing and
//! expired long ago: an SDK client made at module level loads them without
//! failing, and fetches again on its first use, after binding.
//!
//! Requests must carry `Authorization: <token>`, a random token drawn at
//! the agent's start and given to the runtime only
//! (`AWS_CONTAINER_AUTHORIZATION_TOKEN`): a request forged through the
//! function (say, a URL it fetches for a caller) cannot set it.

use std::io::Read;
use std::sync::{Mutex, OnceLock};

use silo_proto::TenantCredentials;

/// The endpoint's path on the Runtime API's address.
pub const PATH: &str = "/2018-06-01/silo/credentials";

/// What is served before any tenant is bound.
pub const UNBOUND_KEY_ID: &str = "ASIASILOUNBOUNDVM000";
/// Already expired: SDKs fetch again before their next signed call.
pub const UNBOUND_EXPIRATION: &str = "2000-01-01T00:00:00Z";

static TOKEN: OnceLock<String> = OnceLock::new();
static CURRENT: Mutex<Option<TenantCredentials>> = Mutex::new(None);

/// This VM's authorization token (32 random bytes, hex).
pub fn token() -> &'static str {
    TOKEN.get_or_init(|| {
        let mut b = [0u8; 32];
        let ok = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .is_ok();
        if !ok {
            // No randomness, no endpoint: nothing can match this.
            return String::new();
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    })
}

/// The environment a runtime gets when its function has a tenant role.
pub fn runtime_env(api_addr: &str) -> [(&'static str, String); 2] {
    [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://{api_addr}{PATH}"),
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", token().to_string()),
    ]
}

/// Keeps the credentials the host sent (the VM's tenant's).
pub fn set(creds: TenantCredentials) {
    *CURRENT.lock().expect("credentials lock") = Some(creds);
}

/// The answer to a request with `authorization`: status and JSON body.
pub fn answer(authorization: Option<&str>) -> (u16, String) {
    let t = token();
    // Compared in full whatever the first differing byte (no early exit).
    let given = authorization.unwrap_or("").as_bytes();
    let same = !t.is_empty()
        && given.len() == t.len()
        && given
            .iter()
            .zip(t.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return (
            403,
            r#"{"Code":"AccessDenied","Message":"missing or wrong Authorization token"}"#.into(),
        );
    }
    let body = match CURRENT.lock().expect("credentials lock").as_ref() {
        Some(c) => serde_json::json!({
            "AccessKeyId": c.access_key_id,
            "SecretAccessKey": c.secret_access_key,
            "Token": c.token,
            "Expiration": c.expiration,
        }),
        None => serde_json::json!({
            "AccessKeyId": UNBOUND_KEY_ID,
            "SecretAccessKey": "silo-no-tenant-bound-yet",
            "Token": "silo-no-tenant-bound-yet",
            "Expiration": UNBOUND_EXPIRATION,
        }),
    };
    (200, body.to_string())
}
