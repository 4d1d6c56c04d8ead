//! The gateway's JWKS over real TLS on loopback, without guests: a CA and
//! server certificates made per run with the openssl command, the JWKS
//! served by `openssl s_server -WWW`. A token verifies through the https
//! JWKS when the authorizer trusts the CA (`jwks_ca_file`); the same
//! server without the CA file (unknown issuer) and a certificate for
//! another name are refused, and the gateway fails closed (401). A plain
//! `http://` JWKS URL without `allow_http_jwks` is refused at config load.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{config, free_port, scratch, TestDaemon};
use common::jwt::{self, claims, Signer, AUDIENCE, ISSUER};
use serde_json::json;
use silo_client::LambdaClient;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (Debian: openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and, per call of [`Pki::leaf`], a server certificate
/// signed by it, all P-256 keys made in `dir`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=silo test JWKS CA",
            ],
        );
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// `name.pem` and `name.key`: a server certificate whose only
    /// subjectAltName is `san` (`IP:127.0.0.1`, `DNS:wrong.example`).
    fn leaf(&self, name: &str, san: &str) -> (String, String) {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=jwks server",
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
        (pem, key)
    }
}

/// `openssl s_server -WWW` serving `dir`'s files over TLS on 127.0.0.1
/// with a certificate; killed when dropped.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start(dir: &Path, cert: &str, key: &str) -> Self {
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-WWW", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-cert", cert, "-key", key])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let until = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "openssl s_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/jwks.json", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn authorizer(name: &str, url: &str, ca: Option<&Path>) -> String {
    let ca = ca
        .map(|p| format!("jwks_ca_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        "[gateway.authorizers.{name}]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\n\
         jwks_url = \"{url}\"\n{ca}tenant_claim = \"tenant_id\"\nleeway_s = 5\n\n"
    )
}

#[test]
fn an_https_jwks_is_trusted_only_through_a_verified_certificate() {
    let dir = scratch("gateway-https");
    let signer = Signer::ec("tls-key");
    std::fs::write(dir.join("jwks.json"), jwt::jwks(&[&signer])).unwrap();
    let pki = Pki::new(&dir);
    let (good_cert, good_key) = pki.leaf("loopback", "IP:127.0.0.1");
    let (wrong_cert, wrong_key) = pki.leaf("wrong", "DNS:wrong.example");
    let good = TlsServer::start(&dir, &good_cert, &good_key);
    let wrong = TlsServer::start(&dir, &wrong_cert, &wrong_key);
    let ca = dir.join("ca.pem");

    let gw_port = free_port();
    let cfg = config(&format!(
        "[gateway]\nlisten = \"127.0.0.1:{gw_port}\"\ntenant_rps = 1000\ntenant_burst = 1000\n\
         jwks_refresh_interval_s = 60\n\n{}{}{}",
        authorizer("private_ca", &good.url(), Some(&ca)),
        authorizer("web_roots", &good.url(), None),
        authorizer("wrong_name", &wrong.url(), Some(&ca)),
    ));
    let mut d = TestDaemon::on_host(&cfg, &scratch("gateway-https-data"), &[]);
    let admin = d.admin();
    let zip = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, b"#!/bin/sh\nexit 0\n")]);
    let r = admin
        .create_function("orders", &zip, true, json!({}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    // Reserved concurrency 0: an accepted token's invoke answers 503
    // without a VM.
    let r = admin
        .request(
            "PUT",
            "/2017-10-31/functions/orders/concurrency",
            &[],
            br#"{"ReservedConcurrentExecutions": 0}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    for a in ["private_ca", "web_roots", "wrong_name"] {
        let route = json!({
            "RouteKey": format!("ANY /{a}/{{proxy+}}"),
            "FunctionName": "orders",
            "Authorizer": a,
        });
        let r = admin
            .request(
                "PUT",
                &format!("/2015-03-31/gateway/routes/{a}"),
                &[],
                route.to_string().as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 200, "{a}: {}", r.text());
    }

    let gw = LambdaClient::new(&format!("http://127.0.0.1:{gw_port}"), None);
    let bearer = format!("Bearer {}", signer.token(&claims("tenant-A")));
    let call = |a: &str| {
        gw.request(
            "GET",
            &format!("/{a}/x"),
            &[("authorization", &bearer)],
            b"",
        )
        .unwrap()
    };
    let r = call("private_ca");
    assert_eq!(r.status, 503, "the CA-verified JWKS: {}", r.text());
    assert_eq!(r.json(), json!({"message": "Service Unavailable"}));
    for a in ["web_roots", "wrong_name"] {
        let r = call(a);
        assert_eq!(r.status, 401, "{a}: {}", r.text());
        assert_eq!(r.json(), json!({"message": "Unauthorized"}), "{a}");
    }

    let log = d.stop();
    let refused = |a: &str| {
        log.lines()
            .filter(|l| l.contains("TLS refused") && l.contains(&format!("authorizer={a}")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(refused("private_ca").is_empty(), "{log}");
    let unknown = refused("web_roots");
    assert!(unknown.contains("UnknownIssuer"), "{log}");
    let wrong_name = refused("wrong_name");
    assert!(
        wrong_name.contains("not valid for name") || wrong_name.contains("NotValidForName"),
        "{log}"
    );
}

#[test]
fn a_plain_http_jwks_url_needs_the_opt_in_at_config_load() {
    let dir = scratch("gateway-http-optin");
    let cfg = config(&format!(
        "[gateway]\nlisten = \"127.0.0.1:{}\"\n\n{}",
        free_port(),
        authorizer("main", "http://127.0.0.1:9/jwks.json", None)
    ));
    std::fs::write(dir.join("silo.toml"), cfg).unwrap();
    let (kernel, agent) = common::daemon::images();
    let mut child = Command::new(env!("CARGO_BIN_EXE_silo"))
        .arg("serve")
        .arg("--config")
        .arg(dir.join("silo.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--kernel")
        .arg(&kernel)
        .arg("--agent")
        .arg(&agent)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn silo serve");
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("silo serve started with a plain http jwks_url and no allow_http_jwks");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("gateway.authorizers.main") && stderr.contains("allow_http_jwks"),
        "{stderr}"
    );
}
