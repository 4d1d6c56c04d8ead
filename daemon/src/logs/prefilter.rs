//! A cheap test on a stored line's raw text, before it is parsed:
//! [`RawFilter::could_match`] is false only for lines a pattern cannot
//! match, so a query parses (twice: the stored record, then the message's
//! JSON) only the lines that may match. It never changes what matches:
//! `tests` below checks it against full parsing over generated lines and
//! patterns.
//!
//! What it looks for in a stored line (a [`super::store::Stored`] as
//! serde_json writes it, the message a JSON string inside it):
//!
//! - a term, as it is (a term holding `"`, `\` or a control character is
//!   escaped in the stored line and is left out);
//! - for a JSON comparison on `$.a.b`: each key as the message writes it
//!   (`\"a\"` in the stored line), since a missing field never matches;
//! - for `$.f = "x*y"`: the longest piece between wildcards, where that
//!   piece can only stand inside one string, `true`/`false`/`null` or
//!   integer token (no `,:{}[]`, and some character no number is
//!   written with), so a value written differently from how the pattern
//!   compares it (`1e2` as `100.0`, an object re-rendered) cannot hide a
//!   match;
//! - a message holding a backslash (an escape: `\u0045` is `E`) may
//!   spell keys and values differently, so for JSON patterns such a line
//!   is always parsed.
//!
//! `$.tenantId` is the daemon's tenant, not the message's: it adds
//! nothing here (the scope and [`super::pattern::Pattern::required_tenant`]
//! choose the tenant directories).

use super::pattern::{Expr, Lit, Op, Pattern};

/// What a line must contain to possibly match.
#[derive(Debug, Clone, PartialEq)]
enum Need {
    /// Nothing.
    Any,
    /// This text, as it is.
    Text(String),
    /// All of these.
    All(Vec<Need>),
    /// One of these.
    Either(Box<Need>, Box<Need>),
}

impl Need {
    fn holds(&self, raw: &str) -> bool {
        match self {
            Need::Any => true,
            Need::Text(t) => raw.contains(t.as_str()),
            Need::All(v) => v.iter().all(|n| n.holds(raw)),
            Need::Either(a, b) => a.holds(raw) || b.holds(raw),
        }
    }

    fn all(v: Vec<Need>) -> Need {
        let v: Vec<Need> = v.into_iter().filter(|n| *n != Need::Any).collect();
        match v.len() {
            0 => Need::Any,
            1 => v.into_iter().next().unwrap_or(Need::Any),
            _ => Need::All(v),
        }
    }
}

/// The raw-line test of one pattern.
#[derive(Debug, Clone)]
pub struct RawFilter {
    need: Need,
    /// A JSON pattern: lines holding an escape are always parsed.
    json: bool,
}

/// Whether `t` is written as it is inside a JSON string.
fn verbatim(t: &str) -> bool {
    !t.is_empty() && !t.chars().any(|c| c == '"' || c == '\\' || c.is_control())
}

/// Whether `piece`, found in a value's text as the pattern compares it,
/// must also be in the message as written: it lies inside one token
/// (no structural character) that is not a number (whose text the
/// comparison may re-render: `1e2` as `100.0`).
fn in_one_plain_token(piece: &str) -> bool {
    verbatim(piece)
        && !piece.contains([',', ':', '{', '}', '[', ']'])
        && piece
            .chars()
            .any(|c| !(c.is_ascii_digit() || "+-.eE".contains(c)))
}

fn of_expr(x: &Expr) -> Need {
    match x {
        Expr::And(a, b) => Need::all(vec![of_expr(a), of_expr(b)]),
        Expr::Or(a, b) => match (of_expr(a), of_expr(b)) {
            (Need::Any, _) | (_, Need::Any) => Need::Any,
            (a, b) => Need::Either(Box::new(a), Box::new(b)),
        },
        Expr::Cmp { path, .. } if path.len() == 1 && path[0] == "tenantId" => Need::Any,
        Expr::Cmp { path, op, value } => {
            // Every key of the path, as the message writes it (escaped
            // once more inside the stored line's string).
            let mut v: Vec<Need> = path
                .iter()
                .filter(|k| verbatim(k))
                .map(|k| Need::Text(format!("\\\"{k}\\\"")))
                .collect();
            if let (Op::Eq, Lit::Str(s)) = (op, value) {
                if let Some(p) = s
                    .split('*')
                    .filter(|p| in_one_plain_token(p))
                    .max_by_key(|p| p.len())
                {
                    v.push(Need::Text(p.to_string()));
                }
            }
            Need::all(v)
        }
    }
}

impl RawFilter {
    /// The test for `pattern`.
    pub fn new(pattern: &Pattern) -> Self {
        match pattern {
            Pattern::All => Self {
                need: Need::Any,
                json: false,
            },
            Pattern::Terms { all, .. } => Self {
                need: Need::all(
                    all.iter()
                        .filter(|t| verbatim(t))
                        .map(|t| Need::Text(t.clone()))
                        .collect(),
                ),
                json: false,
            },
            Pattern::Json(x) => Self {
                need: of_expr(x),
                json: true,
            },
        }
    }

    /// Whether a stored line whose raw text is `raw` may match (false:
    /// it cannot).
    pub fn could_match(&self, raw: &str) -> bool {
        // `\\` in the stored line: the message holds a backslash.
        (self.json && raw.contains("\\\\")) || self.need.holds(raw)
    }

    /// Whether the test lets every line through.
    pub fn is_trivial(&self) -> bool {
        self.need == Need::Any
    }
}

#[cfg(test)]
mod tests {
    use super::super::pattern::Event;
    use super::super::store::Stored;
    use super::*;
    use proptest::prelude::*;

    fn stored(message: &str, tenant: Option<&str>) -> String {
        serde_json::to_string(&Stored {
            t: 1,
            i: 2,
            s: "2026/12/07/[$LATEST]00000000000000000000000000000001".into(),
            n: tenant.map(str::to_string),
            m: message.to_string(),
        })
        .unwrap()
    }

    #[test]
    fn what_each_pattern_looks_for() {
        let f = |p: &str| RawFilter::new(&Pattern::parse(p).unwrap());
        let line = stored(r#"{"level":"INFO","n":5,"a":{"b":"c d"}}"#, Some("t"));
        assert!(f(r#"{ $.level = "INFO" }"#).could_match(&line));
        assert!(!f(r#"{ $.level = "ERROR" }"#).could_match(&line));
        assert!(!f(r#"{ $.latency > 3 }"#).could_match(&line));
        assert!(f(r#"{ $.n > 3 }"#).could_match(&line));
        assert!(f(r#"{ $.a.b = "c*" }"#).could_match(&line));
        assert!(!f(r#"{ $.a.x = "c*" }"#).could_match(&line));
        assert!(!f(r#"{ $.level = "ERROR" || $.level = "FATAL" }"#).could_match(&line));
        assert!(f(r#"{ $.level = "ERROR" || $.n = 5 }"#).could_match(&line));
        assert!(f(r#"{ $.tenantId = "x" }"#).is_trivial());
        // A number's text is not looked for: 1e2 compares as 100.0.
        assert!(f(r#"{ $.n = "100.0" }"#).could_match(&stored(r#"{"n":1e2}"#, None)));
        // An escape may spell what is compared.
        assert!(
            f(r#"{ $.level = "ERROR" }"#).could_match(&stored(r#"{"level":"\u0045RROR"}"#, None))
        );
        assert!(f("ERROR").could_match(&line) == line.contains("ERROR"));
    }

    /// The slow path: every line parsed, the pattern evaluated.
    fn slow(p: &Pattern, message: &str, tenant: Option<&str>) -> bool {
        p.matches_eagerly(&Event { message, tenant })
    }

    /// The fast path, as `query::events` runs it: the raw test, then the
    /// stored record parsed and the pattern evaluated (parsing the
    /// message's JSON only when a field other than tenantId is needed).
    fn fast(p: &Pattern, message: &str, tenant: Option<&str>) -> bool {
        let raw = stored(message, tenant);
        if !RawFilter::new(p).could_match(&raw) {
            return false;
        }
        let s: Stored = serde_json::from_str(&raw).unwrap();
        p.matches(&Event {
            message: &s.m,
            tenant: s.n.as_deref(),
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["level", "a", "b", "n", "tenantId", "le\\u0076el"])
            .prop_map(str::to_string)
    }

    /// Value texts written in the many ways JSON allows.
    fn scalar() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "\"INFO\"",
            "\"ERROR\"",
            "\"\\u0045RROR\"",
            "\"ERR\\/OR\"",
            "\"a,b\"",
            "\"x:y z\"",
            "\"q\\\"uote\"",
            "\"tenant-A\"",
            "\"\"",
            "\"100.0\"",
            "5",
            "-0",
            "1e2",
            "100",
            "100.0",
            "1.50",
            "12345678901234567890123",
            "true",
            "false",
            "null",
        ])
        .prop_map(str::to_string)
    }

    fn value() -> impl Strategy<Value = String> {
        scalar().prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec((key(), inner.clone()), 0..3).prop_map(|kv| {
                    let body: Vec<String> =
                        kv.iter().map(|(k, v)| format!("\"{k}\" : {v}")).collect();
                    format!("{{ {} }}", body.join(", "))
                }),
                prop::collection::vec(inner, 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
            ]
        })
    }

    fn message() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec((key(), value()), 0..4).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
            prop::sample::select(vec![
                "ERROR: plain text",
                "INFO level=ERROR",
                "not {json",
                "",
            ])
            .prop_map(str::to_string),
        ]
    }

    fn pattern() -> impl Strategy<Value = String> {
        let path = prop::sample::select(vec![
            "$.level",
            "$.a",
            "$.b",
            "$.n",
            "$.a.b",
            "$.a.n",
            "$.tenantId",
            "$.le\\u0076el",
        ]);
        let op = prop::sample::select(vec!["=", "!=", "<", ">=", "="]);
        let lit = prop::sample::select(vec![
            "\"INFO\"",
            "\"ERROR\"",
            "\"ERR*\"",
            "\"*RO*\"",
            "ERR/OR",
            "\"a,b\"",
            "\"a*\"",
            "\"x:y z\"",
            "*",
            "\"100.0\"",
            "\"100\"",
            "100",
            "5",
            "\"5\"",
            "-0",
            "\"-0.0\"",
            "\"1.5\"",
            "true",
            "null",
            "\"tenant-A\"",
            "\"*,*\"",
            "\"[*]\"",
            "\"{*}\"",
            "\"1.2345678901234568e22\"",
        ]);
        let cmp = (path, op, lit).prop_map(|(p, o, l)| format!("{p} {o} {l}"));
        cmp.prop_recursive(2, 6, 2, |inner| {
            (inner.clone(), prop::bool::ANY, inner)
                .prop_map(|(a, and, b)| format!("({a}) {} ({b})", if and { "&&" } else { "||" }))
        })
        .prop_map(|e| format!("{{ {e} }}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn the_fast_path_matches_what_full_parsing_matches(
            m in message(),
            p in pattern(),
            tenant in prop::option::of(prop::sample::select(vec!["tenant-A", "tenant-B"])),
        ) {
            let Ok(pat) = Pattern::parse(&p) else { return Ok(()) };
            prop_assert_eq!(fast(&pat, &m, tenant), slow(&pat, &m, tenant), "{} on {}", p, m);
        }

        #[test]
        fn terms_fast_path_matches(
            words in prop::collection::vec(prop::sample::select(vec![
                "ERROR", "INFO", "a,b", "\"a b\"", "-ERROR", "?INFO", "?x:y", "q\"", "\\u0045",
            ]), 0..3),
            m in message(),
        ) {
            let Ok(pat) = Pattern::parse(&words.join(" ")) else { return Ok(()) };
            prop_assert_eq!(fast(&pat, &m, None), slow(&pat, &m, None));
        }
    }
}
