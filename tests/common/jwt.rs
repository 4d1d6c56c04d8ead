//! JWT test material for the gateway's tests: keys generated per test run
//! with the openssl command (never committed), their JWKS, tokens signed
//! with them (jsonwebtoken), hand-made hostile tokens, and a JWKS served
//! over loopback HTTP that counts its fetches.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The issuer and audience of the tests' authorizer.
pub const ISSUER: &str = "https://issuer.silo.test/";
/// The audience the tests' authorizer accepts.
pub const AUDIENCE: &str = "orders-api";

/// A private key made with `openssl genpkey` (`RSA` 2048 or `EC` P-256),
/// PEM (PKCS#8), and its public key PEM.
pub fn openssl_key(kind: &str) -> (Vec<u8>, Vec<u8>) {
    let mut cmd = Command::new("openssl");
    cmd.args(["genpkey", "-algorithm", kind]);
    match kind {
        "RSA" => cmd.args(["-pkeyopt", "rsa_keygen_bits:2048"]),
        _ => cmd.args(["-pkeyopt", "ec_paramgen_curve:P-256"]),
    };
    let out = cmd.output().expect("the openssl command (Debian: openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let private = out.stdout;
    let mut p = Command::new("openssl")
        .args(["pkey", "-pubout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(&private).unwrap();
    let public = p.wait_with_output().unwrap().stdout;
    (private, public)
}

/// A signing key with its `kid`.
pub struct Signer {
    /// The key id in tokens' headers and in the JWKS.
    pub kid: String,
    /// RS256 or ES256.
    pub alg: Algorithm,
    key: EncodingKey,
    /// The public key, PEM.
    pub public_pem: Vec<u8>,
}

impl Signer {
    /// A new RSA key (RS256).
    pub fn rsa(kid: &str) -> Self {
        let (private, public_pem) = openssl_key("RSA");
        Self {
            kid: kid.into(),
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(&private).unwrap(),
            public_pem,
        }
    }

    /// A new P-256 key (ES256).
    pub fn ec(kid: &str) -> Self {
        let (private, public_pem) = openssl_key("EC");
        Self {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(&private).unwrap(),
            public_pem,
        }
    }

    /// This key's public JWK.
    pub fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).unwrap()
    }

    /// A token with `claims`, signed with this key, its `kid` in the header.
    pub fn token(&self, claims: &Value) -> String {
        self.token_as(&self.kid, claims)
    }

    /// A token signed with this key but naming `kid` (a forgery when `kid`
    /// is another key's).
    pub fn token_as(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }

    /// The alg-confusion attack: an HS256 token whose HMAC secret is this
    /// key's public key PEM, naming this key's `kid`.
    pub fn hs256_with_public_key(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &h,
            claims,
            &EncodingKey::from_secret(&self.public_pem).unwrap(),
        )
        .unwrap()
    }
}

/// A JWKS of `signers`' public keys.
pub fn jwks(signers: &[&Signer]) -> String {
    json!({ "keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>() }).to_string()
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Valid claims for `tenant` (expiring in an hour).
pub fn claims(tenant: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": format!("user-of-{tenant}"),
        "tenant_id": tenant,
        "scope": "orders",
        "iat": now(),
        "exp": now() + 3600,
    })
}

/// An unsigned token (`alg` as given, empty signature).
pub fn unsigned(alg: &str, kid: &str, claims: &Value) -> String {
    let b = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b(&json!({"alg": alg, "typ": "JWT", "kid": kid})),
        b(claims)
    )
}

/// A JWKS served over loopback HTTP; counts its fetches.
pub struct JwksServer {
    /// `http://127.0.0.1:<port>/jwks.json`.
    pub url: String,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    /// Serves `body` until the test ends.
    pub fn start(body: String) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", l.local_addr().unwrap());
        let body = Arc::new(Mutex::new(body));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (b, f) = (body.clone(), fetches.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                f.fetch_add(1, Ordering::SeqCst);
                let text = b.lock().unwrap().clone();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        Self { url, body, fetches }
    }

    /// Serves `body` from now on (key rotation).
    pub fn set(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    /// Fetches so far.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// The `[gateway]` section of a test daemon: listening on `listen`, one
/// authorizer `main` reading `jwks` (`jwks_url = "..."` or
/// `jwks_file = "..."`), per-tenant limits and the JWKS refresh interval.
pub fn gateway_config(listen: &str, jwks: &str, rps: u32, burst: u32, refresh_s: u64) -> String {
    format!(
        "[gateway]\nlisten = \"{listen}\"\ntenant_rps = {rps}\ntenant_burst = {burst}\njwks_refresh_interval_s = {refresh_s}\n\n\
         [gateway.authorizers.main]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\n{jwks}\ntenant_claim = \"tenant_id\"\nleeway_s = 5\n"
    )
}
