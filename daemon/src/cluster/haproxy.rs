//! The HAProxy configuration in front of a cluster's nodes
//! (`silo cluster haproxy-config`), for Debian's HAProxy 2.6 and later.
//!
//! Requests are hashed on (function, tenant): the function name from the
//! Invoke path (`/2015-03-31/functions/<name>/...`) and the
//! `X-Amz-Tenant-Id` header when present, so one tenant's repeat invokes
//! reach the node holding its warm environment. `hash-type consistent`
//! moves only a lost node's keys when membership changes. Bounded load
//! (`hash-balance-factor`) is off by default: HAProxy counts requests in
//! flight, so at low concurrency one long request (a cold start) puts a
//! node over any factor below 100 x the node count and its tenants' next
//! invokes move (and cold-start) elsewhere; a hot node is bounded by its
//! own admission limits instead (429). `--balance-factor` turns it on for
//! clusters that prefer spreading hot keys (docs/DAEMON.md). Nodes are health-checked on
//! `/readyz`. HAProxy adds and changes no header, so SigV4 signatures
//! (which cover `Host` and the signed headers) verify on the node.
//!
//! Routing is an affinity hint, not the isolation boundary: every node
//! keeps its environments bound to one tenant for life.

use std::fmt::Write;

/// Seconds a health check's answer may take (`timeout check`).
pub const CHECK_TIMEOUT_S: u32 = 5;

/// What the configuration is made from.
#[derive(Debug, Clone)]
pub struct HaproxyOptions {
    /// The nodes' API addresses (`host:port`).
    pub nodes: Vec<String>,
    /// Where HAProxy listens (`address:port`).
    pub listen: String,
    /// The bounded-load factor in percent (`hash-balance-factor`; 0, the
    /// default: unbounded, see the module's documentation).
    pub balance_factor: u32,
    /// Health check interval in milliseconds.
    pub check_interval_ms: u32,
    /// The longest invocation to wait for, in seconds (Lambda's limit is
    /// 900).
    pub max_invoke_s: u32,
}

impl Default for HaproxyOptions {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            listen: "0.0.0.0:9000".into(),
            balance_factor: 0,
            check_interval_ms: 1000,
            max_invoke_s: 900,
        }
    }
}

/// Why a configuration cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    /// No node was given.
    #[error("give at least one node (--node host:port)")]
    NoNodes,
    /// A node is not `host:port`.
    #[error("node {0:?} is not host:port")]
    BadNode(String),
    /// The balance factor is out of HAProxy's range.
    #[error("the balance factor must be 0 or between 101 and 65535 (HAProxy's hash-balance-factor), not {0}")]
    BadFactor(u32),
}

/// Whether `node` is `host:port` with characters HAProxy takes as one word.
fn valid_node(node: &str) -> bool {
    let Some((host, port)) = node.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && port.parse::<u16>().is_ok_and(|p| p > 0)
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_[]:".contains(c))
}

/// The configuration text.
pub fn config(o: &HaproxyOptions) -> Result<String, HaproxyError> {
    if o.nodes.is_empty() {
        return Err(HaproxyError::NoNodes);
    }
    if let Some(bad) = o.nodes.iter().find(|n| !valid_node(n)) {
        return Err(HaproxyError::BadNode(bad.clone()));
    }
    if !valid_node(&o.listen) {
        return Err(HaproxyError::BadNode(o.listen.clone()));
    }
    if o.balance_factor != 0 && !(101..=65535).contains(&o.balance_factor) {
        return Err(HaproxyError::BadFactor(o.balance_factor));
    }
    let mut s = String::new();
    let _ = write!(
        s,
        "# silo cluster: HAProxy in front of {n} silo serve node(s).
# Made by `silo cluster haproxy-config`; see docs/ARCHITECTURE.md (cluster).
global
    log stdout format raw local0
    # Two descriptors per connection: within a default hard limit of 20000.
    maxconn 8000

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client {t}s
    timeout server {t}s
    timeout http-request 30s
    timeout http-keep-alive 60s
    # A node that refuses the connection: the request goes to another
    # (it never reached a node, so it cannot run twice). Only then: an
    # invoke a node received and lost (killed mid-invoke: an empty
    # response, a reset) may have run, so it is never re-sent; the caller
    # gets a 502 and retries if the function is idempotent.
    retries 2
    retry-on conn-failure
    option redispatch 1

frontend silo_api
    bind {listen}
    default_backend silo_nodes

backend silo_nodes
    # The hash key: the function's name (from /2015-03-31/functions/<name>/...)
    # and, when given, the tenant (X-Amz-Tenant-Id).
    http-request set-var(txn.silo_key) path,field(4,/)
    http-request set-var(txn.silo_key) req.hdr(x-amz-tenant-id),concat(@,txn.silo_key) if {{ req.hdr(x-amz-tenant-id) -m found }}
    balance hash var(txn.silo_key)
    hash-type consistent
{bound}    # /readyz is 503 while a node starts, stops or cannot boot VMs.
    # A check's answer may take this long: a node busy booting VMs answers
    # late, and a check timing out at `inter` (HAProxy's default) marks it
    # down, moving its tenants (one cold start each) for nothing. A dead
    # node refuses the connection and fails its checks at once.
    timeout check {check_timeout}s
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    # A node whose name does not resolve yet starts down, not fatally.
    default-server check inter {inter}ms fall 2 rise 2 init-addr libc,none
",
        n = o.nodes.len(),
        t = o.max_invoke_s + 10,
        listen = o.listen,
        bound = if o.balance_factor == 0 {
            "    # No hash-balance-factor: at low concurrency one cold start on a node
    # would exceed any bound and move its other tenants (each cold-starting
    # elsewhere); each node bounds its own load (429 past its limits).
"
            .to_string()
        } else {
            format!("    hash-balance-factor {}\n", o.balance_factor)
        },
        inter = o.check_interval_ms,
        check_timeout = CHECK_TIMEOUT_S,
    );
    for (i, node) in o.nodes.iter().enumerate() {
        let _ = writeln!(s, "    server node{} {node}", i + 1);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_refused() {
        let o = |nodes: &[&str], f: u32| HaproxyOptions {
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            balance_factor: f,
            ..HaproxyOptions::default()
        };
        assert!(matches!(config(&o(&[], 150)), Err(HaproxyError::NoNodes)));
        assert!(matches!(
            config(&o(&["a b:1"], 150)),
            Err(HaproxyError::BadNode(_))
        ));
        assert!(matches!(
            config(&o(&["host"], 150)),
            Err(HaproxyError::BadNode(_))
        ));
        assert!(matches!(
            config(&o(&["h:1"], 100)),
            Err(HaproxyError::BadFactor(100))
        ));
        let c = config(&o(&["10.0.0.1:9000", "node-2.local:9000"], 0)).unwrap();
        assert!(c.contains("server node2 node-2.local:9000\n"), "{c}");
        // Re-sent elsewhere only when it never reached a node.
        assert!(c.contains("    retry-on conn-failure\n"), "{c}");
        assert!(!c.contains("    hash-balance-factor"), "{c}");
        let c = config(&o(&["10.0.0.1:9000"], 150)).unwrap();
        assert!(c.contains("    hash-balance-factor 150\n"), "{c}");
    }
}
