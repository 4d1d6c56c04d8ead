//! CloudWatch Logs filter patterns, the subset silo reads:
//!
//! - terms: `ERROR` (events containing it), `"two words"` (the phrase),
//!   several terms (all of them), `-term` (not it), `?a ?b` (any of them);
//!   case-sensitive, as CloudWatch;
//! - JSON: `{ $.field = "value" }`, `!=`, `<`, `<=`, `>`, `>=` on numbers,
//!   `*` wildcards in string values, `$.a.b` paths, `&&`, `||` and
//!   parentheses. `$.tenantId` is the event's tenant as the daemon knows
//!   it (in either log format), never what the message claims.
//!
//! A pattern only narrows what a caller may see: the tenants an access key
//! may read are chosen before any pattern is applied ([`super::query`]).

use serde_json::Value;

/// Why a pattern does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid filter pattern: {0}")]
pub struct PatternError(String);

/// A parsed filter pattern.
#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    /// Every event.
    All,
    /// Term matching.
    Terms {
        /// Terms that must all be present.
        all: Vec<String>,
        /// Terms of which one must be present (if any).
        any: Vec<String>,
        /// Terms that must be absent.
        none: Vec<String>,
    },
    /// A JSON expression.
    Json(Expr),
}

/// A JSON pattern's expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Both.
    And(Box<Expr>, Box<Expr>),
    /// Either.
    Or(Box<Expr>, Box<Expr>),
    /// `$.path op value`.
    Cmp {
        /// The path after `$.`, split on dots.
        path: Vec<String>,
        /// The operator.
        op: Op,
        /// The value compared with.
        value: Lit,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A literal of a JSON pattern.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// A string (may hold `*` wildcards).
    Str(String),
    /// A number.
    Num(f64),
}

/// What a pattern is matched against.
pub struct Event<'a> {
    /// The event's message.
    pub message: &'a str,
    /// The event's tenant as the daemon knows it.
    pub tenant: Option<&'a str>,
}

impl Pattern {
    /// Parses `text` (CloudWatch's `filterPattern`).
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let t = text.trim();
        if t.is_empty() {
            return Ok(Self::All);
        }
        if let Some(inner) = t.strip_prefix('{') {
            let inner = inner
                .strip_suffix('}')
                .ok_or_else(|| PatternError("a JSON pattern ends with }".into()))?;
            let tokens = lex(inner)?;
            let mut p = Parser { tokens, pos: 0 };
            let e = p.or()?;
            if p.pos != p.tokens.len() {
                return Err(PatternError(format!("unexpected {:?}", p.tokens[p.pos])));
            }
            return Ok(Self::Json(e));
        }
        let (mut all, mut any, mut none) = (Vec::new(), Vec::new(), Vec::new());
        let mut rest = t;
        while !rest.is_empty() {
            let (prefix, r) = match rest.as_bytes()[0] {
                b'?' => (Some('?'), &rest[1..]),
                b'-' if rest.len() > 1 => (Some('-'), &rest[1..]),
                _ => (None, rest),
            };
            let (term, r) = if let Some(q) = r.strip_prefix('"') {
                let end = q
                    .find('"')
                    .ok_or_else(|| PatternError("unterminated quoted term".into()))?;
                (q[..end].to_string(), &q[end + 1..])
            } else {
                let end = r.find(char::is_whitespace).unwrap_or(r.len());
                (r[..end].to_string(), &r[end..])
            };
            if !term.is_empty() {
                match prefix {
                    Some('?') => any.push(term),
                    Some(_) => none.push(term),
                    None => all.push(term),
                }
            }
            rest = r.trim_start();
        }
        Ok(Self::Terms { all, any, none })
    }

    /// The tenant every match must have (`{ $.tenantId = "t" }`, alone or
    /// in an `&&`), if any.
    pub fn required_tenant(&self) -> Option<&str> {
        fn of(x: &Expr) -> Option<&str> {
            match x {
                Expr::And(a, b) => of(a).or_else(|| of(b)),
                Expr::Cmp {
                    path,
                    op: Op::Eq,
                    value: Lit::Str(s),
                } if path.len() == 1 && path[0] == "tenantId" && !s.contains('*') => Some(s),
                _ => None,
            }
        }
        match self {
            Self::Json(x) => of(x),
            _ => None,
        }
    }

    /// Whether `e` matches.
    pub fn matches(&self, e: &Event<'_>) -> bool {
        match self {
            Self::All => true,
            Self::Terms { all, any, none } => {
                all.iter().all(|t| e.message.contains(t.as_str()))
                    && (any.is_empty() || any.iter().any(|t| e.message.contains(t.as_str())))
                    && !none.iter().any(|t| e.message.contains(t.as_str()))
            }
            // The message's JSON is parsed only when a field other than
            // `$.tenantId` is compared.
            Self::Json(x) => eval(x, e, &mut Lazy::new(e.message)),
        }
    }

    /// [`Pattern::matches`] with the message's JSON parsed first, whatever
    /// the pattern needs (the reference the lazy path is tested against).
    #[cfg(test)]
    pub(super) fn matches_eagerly(&self, e: &Event<'_>) -> bool {
        match self {
            Self::Json(x) => {
                let mut lazy = Lazy::new(e.message);
                lazy.get();
                eval(x, e, &mut lazy)
            }
            _ => self.matches(e),
        }
    }
}

/// A message's JSON, parsed on first use.
struct Lazy<'a> {
    text: &'a str,
    parsed: Option<Option<Value>>,
}

impl<'a> Lazy<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, parsed: None }
    }

    fn get(&mut self) -> Option<&Value> {
        let text = self.text;
        self.parsed
            .get_or_insert_with(|| serde_json::from_str(text).ok())
            .as_ref()
    }
}

fn eval(x: &Expr, e: &Event<'_>, json: &mut Lazy<'_>) -> bool {
    match x {
        Expr::And(a, b) => eval(a, e, json) && eval(b, e, json),
        Expr::Or(a, b) => eval(a, e, json) || eval(b, e, json),
        Expr::Cmp { path, op, value } => {
            let tenant;
            let found: Option<&Value> = if path.len() == 1 && path[0] == "tenantId" {
                tenant = e.tenant.map(|t| Value::String(t.to_string()));
                tenant.as_ref()
            } else {
                let mut v = json.get();
                for p in path {
                    v = v.and_then(|v| v.get(p.as_str()));
                }
                v
            };
            let Some(found) = found else { return false };
            match (value, found) {
                (Lit::Num(n), Value::Number(f)) => {
                    let f = f.as_f64().unwrap_or(f64::NAN);
                    match op {
                        Op::Eq => f == *n,
                        Op::Ne => f != *n,
                        Op::Lt => f < *n,
                        Op::Le => f <= *n,
                        Op::Gt => f > *n,
                        Op::Ge => f >= *n,
                    }
                }
                _ => {
                    let text = match found {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let want = match value {
                        Lit::Str(s) => s.clone(),
                        Lit::Num(n) => n.to_string(),
                    };
                    match op {
                        Op::Eq => glob(&want, &text),
                        Op::Ne => !glob(&want, &text),
                        _ => false,
                    }
                }
            }
        }
    }
}

/// Whether `text` matches `pat`, where `*` stands for any run of
/// characters.
fn glob(pat: &str, text: &str) -> bool {
    let parts: Vec<&str> = pat.split('*').collect();
    if parts.len() == 1 {
        return pat == text;
    }
    let mut rest = text;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(p) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else if let Some(at) = rest.find(p) {
            rest = &rest[at + p.len()..];
        } else {
            return false;
        }
    }
    true
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Path(Vec<String>),
    Op(Op),
    Str(String),
    Num(f64),
    Word(String),
    And,
    Or,
    Open,
    Close,
}

fn lex(s: &str) -> Result<Vec<Tok>, PatternError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push(Tok::Open);
                i += 1
            }
            b')' => {
                out.push(Tok::Close);
                i += 1
            }
            b'&' if b.get(i + 1) == Some(&b'&') => {
                out.push(Tok::And);
                i += 2
            }
            b'|' if b.get(i + 1) == Some(&b'|') => {
                out.push(Tok::Or);
                i += 2
            }
            b'=' => {
                out.push(Tok::Op(Op::Eq));
                i += 1
            }
            b'!' if b.get(i + 1) == Some(&b'=') => {
                out.push(Tok::Op(Op::Ne));
                i += 2
            }
            b'<' | b'>' => {
                let eq = b.get(i + 1) == Some(&b'=');
                out.push(Tok::Op(match (c, eq) {
                    (b'<', false) => Op::Lt,
                    (b'<', true) => Op::Le,
                    (_, false) => Op::Gt,
                    _ => Op::Ge,
                }));
                i += if eq { 2 } else { 1 };
            }
            b'"' => {
                let end = s[i + 1..]
                    .find('"')
                    .ok_or_else(|| PatternError("unterminated string".into()))?;
                out.push(Tok::Str(s[i + 1..i + 1 + end].to_string()));
                i += end + 2;
            }
            b'$' => {
                let end = s[i..]
                    .find(|ch: char| ch.is_whitespace() || "=!<>()&|".contains(ch))
                    .map_or(s.len(), |e| i + e);
                let path = s[i..end]
                    .strip_prefix("$.")
                    .ok_or_else(|| PatternError("a selector starts with $.".into()))?;
                if path.is_empty() || path.split('.').any(str::is_empty) {
                    return Err(PatternError(format!("bad selector {:?}", &s[i..end])));
                }
                out.push(Tok::Path(path.split('.').map(str::to_string).collect()));
                i = end;
            }
            _ => {
                let end = s[i..]
                    .find(|ch: char| ch.is_whitespace() || "=!<>()&|\"".contains(ch))
                    .map_or(s.len(), |e| i + e);
                let w = &s[i..end];
                if w.is_empty() {
                    return Err(PatternError(format!("unexpected {:?}", c as char)));
                }
                out.push(match w.parse::<f64>() {
                    Ok(n) => Tok::Num(n),
                    Err(_) => Tok::Word(w.to_string()),
                });
                i = end;
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn or(&mut self) -> Result<Expr, PatternError> {
        let mut e = self.and()?;
        while self.tokens.get(self.pos) == Some(&Tok::Or) {
            self.pos += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, PatternError> {
        let mut e = self.atom()?;
        while self.tokens.get(self.pos) == Some(&Tok::And) {
            self.pos += 1;
            e = Expr::And(Box::new(e), Box::new(self.atom()?));
        }
        Ok(e)
    }

    fn atom(&mut self) -> Result<Expr, PatternError> {
        match self.next() {
            Some(Tok::Open) => {
                let e = self.or()?;
                match self.next() {
                    Some(Tok::Close) => Ok(e),
                    _ => Err(PatternError("missing )".into())),
                }
            }
            Some(Tok::Path(path)) => {
                let op = match self.next() {
                    Some(Tok::Op(op)) => op,
                    other => {
                        return Err(PatternError(format!("expected an operator, got {other:?}")))
                    }
                };
                let value = match self.next() {
                    Some(Tok::Str(s)) | Some(Tok::Word(s)) => Lit::Str(s),
                    Some(Tok::Num(n)) => Lit::Num(n),
                    other => return Err(PatternError(format!("expected a value, got {other:?}"))),
                };
                Ok(Expr::Cmp { path, op, value })
            }
            other => Err(PatternError(format!("expected $.field, got {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, message: &str, tenant: Option<&str>) -> bool {
        Pattern::parse(p)
            .unwrap()
            .matches(&Event { message, tenant })
    }

    #[test]
    fn terms() {
        assert!(m("", "anything", None));
        assert!(m("ERROR", "an ERROR here", None));
        assert!(!m("ERROR", "an error here", None));
        assert!(m("a b", "b then a", None));
        assert!(!m("a b", "only a", None));
        assert!(m("\"two words\"", "say two words", None));
        assert!(!m("\"two words\"", "words two", None));
        assert!(m("?x ?y", "has y", None));
        assert!(!m("?x ?y", "has z", None));
        assert!(!m("ok -bad", "ok but bad", None));
    }

    #[test]
    fn json_patterns() {
        let msg = r#"{"level":"INFO","message":"hi","tenantId":"forged","n":5,"a":{"b":"c"}}"#;
        assert!(m(r#"{ $.tenantId = "tenant-A" }"#, msg, Some("tenant-A")));
        assert!(!m(r#"{ $.tenantId = "forged" }"#, msg, Some("tenant-A")));
        assert!(m(
            r#"{ $.tenantId = "tenant-A" }"#,
            "text line",
            Some("tenant-A")
        ));
        assert!(!m(r#"{ $.tenantId = * }"#, "text line", None));
        assert!(m(r#"{ $.level = "INFO" && $.n > 4 }"#, msg, None));
        assert!(!m(r#"{ $.level = "INFO" && $.n > 5 }"#, msg, None));
        assert!(m(r#"{ ($.n < 1) || $.a.b = c }"#, msg, None));
        assert!(m(r#"{ $.message = "h*" }"#, msg, None));
        assert!(m(r#"{ $.level != "ERROR" }"#, msg, None));
        let p = |s: &str| Pattern::parse(s).unwrap();
        assert_eq!(
            p(r#"{ $.n > 1 && $.tenantId = "a" }"#).required_tenant(),
            Some("a")
        );
        assert_eq!(
            p(r#"{ $.tenantId = "a" || $.n > 1 }"#).required_tenant(),
            None
        );
        assert_eq!(p(r#"{ $.tenantId = "a*" }"#).required_tenant(), None);
        assert!(!m(r#"{ $.missing = "x" }"#, msg, None));
        for bad in [
            "{ $.a = }",
            "{ a = 1 }",
            "{ $.a = \"x }",
            "{ $.a = 1",
            "\"open",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
