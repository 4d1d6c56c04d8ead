//! A burst of new tenants, the load tenant isolation makes normal: `T` new
//! tenants invoke the counter function `M` times each, `K` invokes in flight
//! at once, through the Lambda HTTP API. Every invoke's outcome is recorded
//! and checked: answered by an environment of its own tenant with a count
//! that environment could give, or refused at once with a 429 and a reason.
//! Used by `silo bench-api --burst` and by the end-to-end burst test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{InvokeOptions, LambdaClient};

/// The shape of one burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstShape {
    /// New tenants.
    pub tenants: usize,
    /// Invokes per tenant.
    pub invokes: usize,
    /// Invokes in flight at once.
    pub in_flight: usize,
}

impl std::str::FromStr for BurstShape {
    type Err = String;
    /// `TxM@K`, e.g. `6x6@12`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("burst {s:?}: expected TENANTSxINVOKES@IN_FLIGHT, e.g. 6x6@12");
        let (tm, k) = s.split_once('@').ok_or_else(bad)?;
        let (t, m) = tm.split_once('x').ok_or_else(bad)?;
        let n = |v: &str| v.trim().parse::<usize>().ok().filter(|n| *n > 0);
        Ok(Self {
            tenants: n(t).ok_or_else(bad)?,
            invokes: n(m).ok_or_else(bad)?,
            in_flight: n(k).ok_or_else(bad)?,
        })
    }
}

impl std::fmt::Display for BurstShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}@{}", self.tenants, self.invokes, self.in_flight)
    }
}

/// How one invoke of a burst ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 200 from the function.
    Answered {
        /// The count the function returned.
        count: u64,
        /// The environment that ran it.
        env: String,
        /// Whether it booted an environment.
        cold: bool,
    },
    /// 429 with Lambda's `Reason`.
    Refused {
        /// The reason code.
        reason: String,
    },
    /// Anything else: an HTTP error, a function error, a transport failure.
    Failed {
        /// What came back.
        what: String,
    },
}

/// One invoke's record.
#[derive(Debug, Clone)]
pub struct InvokeRecord {
    /// Tenant id.
    pub tenant: String,
    /// Which of its tenant's invokes (0 is the tenant's first).
    pub nth: usize,
    /// Seconds since the burst began, when it was sent.
    pub sent_s: f64,
    /// Latency.
    pub latency: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// Everything a burst produced.
#[derive(Debug, Clone)]
pub struct BurstReport {
    /// The shape run.
    pub shape: BurstShape,
    /// Every invoke, in sending order.
    pub records: Vec<InvokeRecord>,
    /// Wall time of the whole burst.
    pub wall: Duration,
}

/// The tenant ids of a burst (`prefix-0` ...).
fn tenant_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i}")
}

/// Runs one burst against `function` (the counter) on the daemon `client`
/// talks to. Invokes are sent round-robin over tenants (every tenant's first
/// invoke before any second one), `in_flight` at a time.
pub fn run(client: &LambdaClient, function: &str, prefix: &str, shape: BurstShape) -> BurstReport {
    let order: Vec<(usize, usize)> = (0..shape.invokes)
        .flat_map(|nth| (0..shape.tenants).map(move |t| (t, nth)))
        .collect();
    let next = Arc::new(AtomicUsize::new(0));
    let records = Arc::new(Mutex::new(Vec::with_capacity(order.len())));
    let order = Arc::new(order);
    let started = Instant::now();
    let workers: Vec<_> = (0..shape.in_flight.min(order.len()))
        .map(|_| {
            let (client, next, records, order) =
                (client.clone(), next.clone(), records.clone(), order.clone());
            let (function, prefix) = (function.to_string(), prefix.to_string());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(t, nth)) = order.get(i) else { break };
                let tenant = tenant_id(&prefix, t);
                let sent = started.elapsed();
                let t0 = Instant::now();
                let outcome = invoke_once(&client, &function, &tenant);
                let rec = InvokeRecord {
                    tenant,
                    nth,
                    sent_s: sent.as_secs_f64(),
                    latency: t0.elapsed(),
                    outcome,
                };
                records
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, rec));
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let wall = started.elapsed();
    let mut records = std::mem::take(&mut *records.lock().unwrap_or_else(|p| p.into_inner()));
    records.sort_by_key(|(i, _)| *i);
    BurstReport {
        shape,
        records: records.into_iter().map(|(_, r)| r).collect(),
        wall,
    }
}

fn invoke_once(client: &LambdaClient, function: &str, tenant: &str) -> Outcome {
    let opts = InvokeOptions {
        tenant: Some(tenant.to_string()),
        ..Default::default()
    };
    let r = match client.invoke(function, b"{}", &opts) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Failed {
                what: e.to_string(),
            }
        }
    };
    let body = r.json();
    match r.status {
        200 if r.header("x-amz-function-error").is_none() && body["tenant_id"] == tenant => {
            match (body["count"].as_u64(), r.header("x-silo-environment-id")) {
                (Some(count), Some(env)) => Outcome::Answered {
                    count,
                    env: env.to_string(),
                    cold: r.header("x-silo-cold-start") == Some("true"),
                },
                _ => Outcome::Failed {
                    what: format!("200 without count or environment: {}", r.text()),
                },
            }
        }
        429 => Outcome::Refused {
            reason: body["Reason"].as_str().unwrap_or("").to_string(),
        },
        status => Outcome::Failed {
            what: format!("HTTP {status}: {}", r.text()),
        },
    }
}

impl BurstReport {
    /// Invokes answered, refused and failed.
    pub fn tally(&self) -> (usize, usize, usize) {
        let mut t = (0, 0, 0);
        for r in &self.records {
            match r.outcome {
                Outcome::Answered { .. } => t.0 += 1,
                Outcome::Refused { .. } => t.1 += 1,
                Outcome::Failed { .. } => t.2 += 1,
            }
        }
        t
    }

    /// What breaks the product's promises in this burst, one line each:
    /// failures (anything but 200 or a 429 with a reason), an environment
    /// that answered two tenants, counts an environment could not give
    /// (each environment's counts must be exactly 1..=n).
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut env_tenant: HashMap<&str, &str> = HashMap::new();
        let mut env_counts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for r in &self.records {
            match &r.outcome {
                Outcome::Failed { what } => {
                    out.push(format!(
                        "{} #{} (sent at {:.2} s, after {:.2} s): {what}",
                        r.tenant,
                        r.nth,
                        r.sent_s,
                        r.latency.as_secs_f64()
                    ));
                }
                Outcome::Refused { reason } if reason.is_empty() => {
                    out.push(format!("{} #{}: a 429 without a Reason", r.tenant, r.nth));
                }
                Outcome::Refused { .. } => {}
                Outcome::Answered { count, env, .. } => {
                    let first = env_tenant.entry(env).or_insert(&r.tenant);
                    if *first != r.tenant {
                        out.push(format!(
                            "environment {env} answered {first} and {}",
                            r.tenant
                        ));
                    }
                    env_counts.entry(env).or_default().push(*count);
                }
            }
        }
        for (env, mut counts) in env_counts {
            counts.sort_unstable();
            let expected: Vec<u64> = (1..=counts.len() as u64).collect();
            if counts != expected {
                out.push(format!(
                    "environment {env} gave counts {counts:?}, not 1..={}",
                    expected.len()
                ));
            }
        }
        out
    }

    /// The JSON summary: outcomes, latencies (first invokes of new tenants
    /// and all answered), environments created per second, refusals by
    /// reason, and every invoke.
    pub fn to_json(&self) -> Value {
        let (answered, refused, failed) = self.tally();
        let total = self.records.len().max(1);
        let answered_ms = |first_only: bool| -> Vec<f64> {
            self.records
                .iter()
                .filter(|r| !first_only || r.nth == 0)
                .filter(|r| matches!(r.outcome, Outcome::Answered { .. }))
                .map(|r| r.latency.as_secs_f64() * 1000.0)
                .collect()
        };
        let envs: BTreeSet<&str> = self
            .records
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Answered {
                    env, cold: true, ..
                } => Some(env.as_str()),
                _ => None,
            })
            .collect();
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &self.records {
            if let Outcome::Refused { reason } = &r.outcome {
                *reasons.entry(reason.as_str()).or_default() += 1;
            }
        }
        let wall = self.wall.as_secs_f64();
        json!({
            "shape": self.shape.to_string(),
            "tenants": self.shape.tenants,
            "invokes_per_tenant": self.shape.invokes,
            "in_flight": self.shape.in_flight,
            "invokes": self.records.len(),
            "answered": answered,
            "refused": refused,
            "failed": failed,
            "share_refused": refused as f64 / total as f64,
            "refusals_by_reason": reasons,
            "first_invoke_ms": latency_summary(answered_ms(true)),
            "answered_ms": latency_summary(answered_ms(false)),
            "environments_created": envs.len(),
            "wall_s": wall,
            "environments_per_second": if wall > 0.0 { envs.len() as f64 / wall } else { 0.0 },
            "violations": self.violations(),
            "records": self.records.iter().map(|r| {
                let (outcome, detail) = match &r.outcome {
                    Outcome::Answered { count, env, cold } => ("answered", json!({"count": count, "env": env, "cold": cold})),
                    Outcome::Refused { reason } => ("refused", json!({"reason": reason})),
                    Outcome::Failed { what } => ("failed", json!({"what": what})),
                };
                json!({"tenant": r.tenant, "nth": r.nth, "sent_s": r.sent_s,
                       "latency_ms": r.latency.as_secs_f64() * 1000.0, "outcome": outcome, "detail": detail})
            }).collect::<Vec<_>>(),
        })
    }
}

/// n, p50, p99, max of latencies in ms (`null`s when there are none).
pub fn latency_summary(mut ms: Vec<f64>) -> Value {
    if ms.is_empty() {
        return json!({"n": 0, "p50": null, "p99": null, "max": null});
    }
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    json!({"n": ms.len(), "p50": q(0.5), "p99": q(0.99), "max": ms[ms.len() - 1]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_print() {
        let s: BurstShape = "6x6@12".parse().unwrap();
        assert_eq!((s.tenants, s.invokes, s.in_flight), (6, 6, 12));
        assert_eq!(s.to_string(), "6x6@12");
        for bad in ["6x6", "6@12", "0x6@12", "ax6@1", "6x6@0"] {
            assert!(bad.parse::<BurstShape>().unwrap_err().contains(bad));
        }
    }

    fn rec(tenant: &str, nth: usize, outcome: Outcome) -> InvokeRecord {
        InvokeRecord {
            tenant: tenant.into(),
            nth,
            sent_s: 0.0,
            latency: Duration::from_millis(10),
            outcome,
        }
    }

    fn answered(count: u64, env: &str) -> Outcome {
        Outcome::Answered {
            count,
            env: env.into(),
            cold: count == 1,
        }
    }

    #[test]
    fn violations_catch_shared_environments_bad_counts_and_failures() {
        let shape = "2x2@2".parse().unwrap();
        let good = BurstReport {
            shape,
            wall: Duration::from_secs(1),
            records: vec![
                rec("t-0", 0, answered(1, "1")),
                rec("t-1", 0, answered(1, "2")),
                rec("t-0", 1, answered(2, "1")),
                rec(
                    "t-1",
                    1,
                    Outcome::Refused {
                        reason: "ColdStartQueueFull".into(),
                    },
                ),
            ],
        };
        assert!(good.violations().is_empty(), "{:?}", good.violations());
        assert_eq!(good.tally(), (3, 1, 0));
        let v = good.to_json();
        assert_eq!(v["environments_created"], 2);
        assert_eq!(v["refusals_by_reason"]["ColdStartQueueFull"], 1);

        let mut bad = good.clone();
        bad.records[1] = rec("t-1", 0, answered(5, "1"));
        bad.records[3] = rec(
            "t-1",
            1,
            Outcome::Failed {
                what: "HTTP 500".into(),
            },
        );
        let v = bad.violations();
        assert!(
            v.iter().any(|l| l.contains("answered t-0 and t-1")),
            "{v:?}"
        );
        assert!(v.iter().any(|l| l.contains("counts [1, 2, 5]")), "{v:?}");
        assert!(v.iter().any(|l| l.contains("HTTP 500")), "{v:?}");
    }
}
