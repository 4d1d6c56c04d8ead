//! The id callers see for an execution environment (`X-Silo-Environment-Id`):
//! opaque per (function, tenant), never the scheduler's host-wide number.

/// The opaque id of environment `env_id` of `function` serving `tenant`,
/// under `key` (random per daemon start): the same for every invoke the
/// environment serves, different for every other environment, and a keyed
/// hash (16 hex digits) rather than the scheduler's number, which counts
/// every tenant's cold starts host-wide and which no tenant may learn.
pub fn environment_token(key: &str, function: &str, tenant: Option<&str>, env_id: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        key.as_bytes(),
        function.as_bytes(),
        tenant.unwrap_or("").as_bytes(),
        &env_id.to_le_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use silo_aws::id::random_uuid;

    /// Issue 19, finding 7: what a tenant sees of an environment's id is
    /// opaque: not the scheduler's host-wide number (which would count the
    /// other tenants' cold starts between two of its own), stable for one
    /// environment, distinct across environments, tenants and daemons.
    #[test]
    fn environment_ids_shown_to_callers_are_opaque() {
        let key = format!("{}{}", random_uuid(), random_uuid());
        let mut seen = std::collections::HashSet::new();
        for id in 1..=2_000u64 {
            let t = environment_token(&key, "counter", Some("tenant-A"), id);
            assert_eq!(t.len(), 16, "{t}");
            assert!(t.bytes().all(|b| b.is_ascii_hexdigit()), "{t}");
            assert_ne!(t, id.to_string(), "environment {id} shows as its number");
            assert_eq!(t, environment_token(&key, "counter", Some("tenant-A"), id));
            assert!(seen.insert(t), "two environments share an id");
        }
        let a = environment_token(&key, "counter", Some("tenant-A"), 7);
        assert_ne!(a, environment_token(&key, "counter", Some("tenant-B"), 7));
        assert_ne!(a, environment_token(&key, "other", Some("tenant-A"), 7));
        let restarted = format!("{}{}", random_uuid(), random_uuid());
        assert_ne!(
            a,
            environment_token(&restarted, "counter", Some("tenant-A"), 7)
        );
    }
}
