//! The tenant-role API (`PUT/GET/DELETE .../tenant-role`, admin keys only)
//! over real HTTP against `silo serve` on this host: templates that cannot
//! work get a 400 saying why; a stored role is read back and survives a
//! restart; tenant keys are refused.

mod common;

use common::daemon::{config, create_counter, scratch, TestDaemon, ADMIN, TENANT_A};
use serde_json::{json, Value};

const PATH: &str = "/2015-03-31/functions/counter/tenant-role";

fn role(policy: &str) -> Value {
    json!({
        "RoleArn": "arn:aws:iam::123456789012:role/silo-tenant",
        "StsEndpoint": "http://127.0.0.1:1",
        "DurationSeconds": 900,
        "SessionPolicy": policy,
    })
}

#[test]
fn tenant_roles_are_checked_stored_and_admin_only() {
    let data = scratch("tenant-role-data");
    let d = TestDaemon::on_host(&config(""), &data, &[]);
    let admin = d.client(ADMIN);
    create_counter(&admin);
    let put = |body: &Value| {
        admin
            .request("PUT", PATH, &[], body.to_string().as_bytes())
            .unwrap()
    };
    // Eight uses of ${tenant_id}: over 2,048 characters for a 256-character id.
    let long = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Action":"s3:GetObject","Resource":[{}]}}]}}"#,
        ["\"arn:aws:s3:::b/${tenant_id}/*\""; 8].join(",")
    );
    let r = put(&role(&long));
    assert_eq!(r.status, 400, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("2048") && text.contains("256-character tenant id"),
        "{text}"
    );
    let r = put(&role(r#"{"Statement":[{"Resource":"arn:aws:s3:::b/*"}]}"#));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("${tenant_id}"), "{}", r.text());
    let r = put(&role("{\"Statement\": \"${tenant_id}\""));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not a JSON object"), "{}", r.text());
    let mut bad_arn = role(r#"{"S":"${tenant_id}"}"#);
    bad_arn["RoleArn"] = json!("arn:aws:s3:::bucket");
    let r = put(&bad_arn);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("RoleArn"), "{}", r.text());

    let good = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"arn:aws:s3:::b/${tenant_id}/*"}]}"#;
    let r = put(&role(good));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["Source"], "api");
    assert_eq!(v["TenantRole"]["SessionPolicy"], good);
    assert_eq!(v["TenantRole"]["StsRegion"], "us-east-1");

    let tenant = d.client(TENANT_A);
    for method in ["GET", "PUT", "DELETE"] {
        let r = tenant
            .request(
                method,
                PATH,
                &[],
                if method == "PUT" { br#"{}"# } else { b"" },
            )
            .unwrap();
        assert_eq!(r.status, 403, "{method}: {}", r.text());
    }
    drop(d);
    // Stored with the function: read back after a restart.
    let d = TestDaemon::on_host(&config(""), &data, &[]);
    let admin = d.client(ADMIN);
    let r = admin.request("GET", PATH, &[], b"").unwrap();
    assert_eq!(
        r.json()["TenantRole"]["SessionPolicy"],
        good,
        "{}",
        r.text()
    );
    let r = admin.request("DELETE", PATH, &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["Source"], "none");
    drop(d);
    let _ = std::fs::remove_dir_all(&data);
}
