//! Session-policy templates: `${tenant_id}` and `${function_name}` are
//! substituted inside the JSON strings of a parsed template, never into its
//! text, so whatever a tenant id holds the result is valid JSON with the id
//! as one string's content (quoted and escaped by the serializer).

use serde_json::Value;

/// STS's limit on a session policy's plaintext (characters).
pub const MAX_POLICY_CHARS: usize = 2048;
/// The longest tenant id Lambda accepts (and the API checks).
pub const MAX_TENANT_CHARS: usize = 256;
/// The placeholder for the VM's tenant.
pub const TENANT_PLACEHOLDER: &str = "${tenant_id}";
/// The placeholder for the function's name.
pub const FUNCTION_PLACEHOLDER: &str = "${function_name}";

/// Why a template is refused (the API's 400 says this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template is not a JSON object.
    #[error("SessionPolicy is not a JSON object: {0}")]
    NotJson(String),
    /// No string of the template names `${tenant_id}`: every tenant would
    /// get the same access.
    #[error(
        "SessionPolicy never uses ${{tenant_id}} inside a JSON string: every tenant would get the \
         same access; scope it, e.g. \"arn:aws:s3:::bucket/${{tenant_id}}/*\""
    )]
    NoTenant,
    /// Rendered for the longest tenant id, the policy is over STS's limit.
    #[error(
        "SessionPolicy renders to {chars} characters (compact JSON) for a {MAX_TENANT_CHARS}-character tenant id; \
         STS accepts at most {MAX_POLICY_CHARS}: shorten it by {over} characters"
    )]
    TooLong {
        /// The rendered length.
        chars: usize,
        /// How many characters too many.
        over: usize,
    },
}

/// A checked session-policy template.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyTemplate {
    parsed: Value,
}

impl PolicyTemplate {
    /// Parses and checks `text` for function `function`: a JSON object
    /// using `${tenant_id}` in a string, whose rendering for the longest
    /// tenant id Lambda allows fits STS's limit.
    pub fn parse(text: &str, function: &str) -> Result<Self, TemplateError> {
        let parsed: Value =
            serde_json::from_str(text).map_err(|e| TemplateError::NotJson(e.to_string()))?;
        if !parsed.is_object() {
            return Err(TemplateError::NotJson(
                "the top level is not an object".into(),
            ));
        }
        let t = Self { parsed };
        if !t.uses_tenant(&t.parsed) {
            return Err(TemplateError::NoTenant);
        }
        let chars = t.render(&longest_tenant_id(), function).chars().count();
        if chars > MAX_POLICY_CHARS {
            return Err(TemplateError::TooLong {
                chars,
                over: chars - MAX_POLICY_CHARS,
            });
        }
        Ok(t)
    }

    fn uses_tenant(&self, v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains(TENANT_PLACEHOLDER),
            Value::Array(a) => a.iter().any(|x| self.uses_tenant(x)),
            Value::Object(o) => o
                .iter()
                .any(|(k, x)| k.contains(TENANT_PLACEHOLDER) || self.uses_tenant(x)),
            _ => false,
        }
    }

    /// The policy for `tenant` of `function`: compact JSON.
    pub fn render(&self, tenant: &str, function: &str) -> String {
        // One pass: a substituted value is never scanned again.
        let sub = |s: &str| {
            let mut out = String::with_capacity(s.len());
            let mut rest = s;
            while let Some(i) = rest.find("${") {
                out.push_str(&rest[..i]);
                let at = &rest[i..];
                if let Some(r) = at.strip_prefix(TENANT_PLACEHOLDER) {
                    out.push_str(tenant);
                    rest = r;
                } else if let Some(r) = at.strip_prefix(FUNCTION_PLACEHOLDER) {
                    out.push_str(function);
                    rest = r;
                } else {
                    out.push_str("${");
                    rest = &at[2..];
                }
            }
            out.push_str(rest);
            out
        };
        fn walk(v: &Value, sub: &dyn Fn(&str) -> String) -> Value {
            match v {
                Value::String(s) => Value::String(sub(s)),
                Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, sub)).collect()),
                Value::Object(o) => {
                    Value::Object(o.iter().map(|(k, x)| (sub(k), walk(x, sub))).collect())
                }
                other => other.clone(),
            }
        }
        walk(&self.parsed, &sub).to_string()
    }
}

/// The characters Lambda allows in a tenant id (`[a-zA-Z0-9._:/=+\-@ ]`).
pub fn tenant_char_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._:/=+-@ ".contains(c)
}

/// A tenant id of the longest rendering: [`MAX_TENANT_CHARS`] of the
/// allowed character whose JSON form is longest.
fn longest_tenant_id() -> String {
    let widest = (0u8..128)
        .map(char::from)
        .filter(|c| tenant_char_allowed(*c))
        .max_by_key(|c| Value::String(c.to_string()).to_string().len())
        .unwrap_or('a');
    std::iter::repeat_n(widest, MAX_TENANT_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S3: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject","s3:PutObject"],"Resource":"arn:aws:s3:::bucket/${tenant_id}/*"},{"Effect":"Allow","Action":"s3:ListBucket","Resource":"arn:aws:s3:::bucket","Condition":{"StringLike":{"s3:prefix":["${tenant_id}/*"]}}}]}"#;

    #[test]
    fn a_template_renders_with_the_tenant_and_function_in_place() {
        let t = PolicyTemplate::parse(
            r#"{"Statement":[{"Resource":"arn:aws:s3:::b/${function_name}/${tenant_id}/*","Condition":{"StringEquals":{"aws:PrincipalTag/x":"${aws:PrincipalTag/tenant_id}"}}}]}"#,
            "reports",
        )
        .unwrap();
        let v: Value = serde_json::from_str(&t.render("tenant A", "reports")).unwrap();
        assert_eq!(
            v["Statement"][0]["Resource"],
            "arn:aws:s3:::b/reports/tenant A/*"
        );
        // IAM's own policy variables are left for IAM.
        assert_eq!(
            v["Statement"][0]["Condition"]["StringEquals"]["aws:PrincipalTag/x"],
            "${aws:PrincipalTag/tenant_id}"
        );
    }

    #[test]
    fn templates_that_cannot_work_are_refused_saying_why() {
        let e = PolicyTemplate::parse("{\"Statement\": [", "f").unwrap_err();
        assert!(matches!(e, TemplateError::NotJson(_)), "{e}");
        let e = PolicyTemplate::parse("[\"${tenant_id}\"]", "f").unwrap_err();
        assert!(matches!(e, TemplateError::NotJson(_)), "{e}");
        // Outside a string the placeholder is not JSON at all.
        let e = PolicyTemplate::parse("{\"a\": ${tenant_id}}", "f").unwrap_err();
        assert!(matches!(e, TemplateError::NotJson(_)), "{e}");
        let e = PolicyTemplate::parse(r#"{"Statement":[{"Resource":"*"}]}"#, "f").unwrap_err();
        assert_eq!(e, TemplateError::NoTenant);
        assert!(e.to_string().contains("${tenant_id}"), "{e}");
    }

    /// The limit counts the rendering for a 256-character tenant id, in
    /// compact JSON (the template's own whitespace does not count).
    #[test]
    fn the_length_limit_holds_for_the_longest_tenant_id() {
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(S3).unwrap()).unwrap();
        let t = PolicyTemplate::parse(&pretty, "f").unwrap();
        let long = t.render(&"x".repeat(256), "f");
        assert!(long.len() <= MAX_POLICY_CHARS, "{}", long.len());
        // Eight uses of ${tenant_id}: 8 x 256 > 2048.
        let many = format!(
            r#"{{"Statement":[{{"Resource":[{}]}}]}}"#,
            ["\"${tenant_id}\""; 8].join(",")
        );
        match PolicyTemplate::parse(&many, "f").unwrap_err() {
            TemplateError::TooLong { chars, over } => {
                assert!(chars > 2048 && over == chars - 2048, "{chars} {over}")
            }
            e => panic!("{e}"),
        }
        // Exactly at the limit passes; one more character fails.
        let base = r#"{"R":"${tenant_id}","P":""}"#;
        let fixed = PolicyTemplate::parse(base, "f")
            .unwrap()
            .render(&"a".repeat(256), "f");
        let pad = MAX_POLICY_CHARS - fixed.len();
        let at = format!(r#"{{"R":"${{tenant_id}}","P":"{}"}}"#, "p".repeat(pad));
        assert!(PolicyTemplate::parse(&at, "f").is_ok());
        let over = format!(r#"{{"R":"${{tenant_id}}","P":"{}"}}"#, "p".repeat(pad + 1));
        assert!(matches!(
            PolicyTemplate::parse(&over, "f"),
            Err(TemplateError::TooLong { over: 1, .. })
        ));
    }

    proptest! {
        /// Any tenant id Lambda allows renders to valid JSON in which the
        /// id appears exactly, as a string's content, and within the limit.
        #[test]
        fn every_allowed_tenant_id_renders_to_valid_json(
            tenant in "[a-zA-Z0-9._:/=+\\-@ ]{1,256}",
        ) {
            let t = PolicyTemplate::parse(S3, "fn-1").unwrap();
            let out = t.render(&tenant, "fn-1");
            prop_assert!(out.chars().count() <= MAX_POLICY_CHARS);
            let v: Value = serde_json::from_str(&out).unwrap();
            prop_assert_eq!(
                v["Statement"][0]["Resource"].as_str().unwrap(),
                format!("arn:aws:s3:::bucket/{tenant}/*")
            );
        }

        /// Even characters Lambda refuses (quotes, backslashes, control
        /// characters) cannot break out of their string.
        #[test]
        fn no_tenant_id_breaks_out_of_its_string(tenant in "\\PC{0,64}") {
            let t = PolicyTemplate::parse(S3, "f").unwrap();
            let v: Value = serde_json::from_str(&t.render(&tenant, "f")).unwrap();
            prop_assert_eq!(v["Statement"].as_array().unwrap().len(), 2);
            prop_assert_eq!(
                v["Statement"][1]["Condition"]["StringLike"]["s3:prefix"][0].as_str().unwrap(),
                format!("{tenant}/*")
            );
        }
    }
}
