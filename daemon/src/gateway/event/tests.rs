use super::*;

fn headers(list: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in list {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn the_event_is_payload_format_2_0_without_tenant_headers() {
    let h = headers(&[
        ("host", "api.example.com"),
        ("user-agent", "curl/8"),
        ("X-Amz-Tenant-Id", "tenant-B"),
        ("x-amzn-tenant-id", "tenant-B"),
        ("Lambda-Runtime-Aws-Tenant-Id", "tenant-B"),
        ("x-tenant", "tenant-B"),
        ("accept", "a"),
        ("accept", "b"),
        ("cookie", "s=1; t=2"),
        ("content-type", "application/json"),
    ]);
    let mut claims = Map::new();
    claims.insert("sub".into(), json!("u1"));
    claims.insert("tenant_id".into(), json!("tenant-A"));
    claims.insert("exp".into(), json!(1_900_000_000));
    let scopes = vec!["orders:read".to_string()];
    let params = BTreeMap::from([("proxy".to_string(), "1/items".to_string())]);
    let e = request_event(&RequestParts {
        route_key: "ANY /orders/{proxy+}",
        method: "POST",
        raw_path: "/orders/1/items",
        raw_query: "a=1&a=2&b=x%20y",
        headers: &h,
        path_parameters: &params,
        source_ip: "192.0.2.1".into(),
        jwt: Some((&claims, &scopes)),
        request_id: "rid",
        account_id: "000000000000",
        now_ms: 1_583_348_638_390,
        body: b"{\"n\":1}",
    });
    assert_eq!(e["version"], "2.0");
    assert_eq!(e["routeKey"], "ANY /orders/{proxy+}");
    assert_eq!(e["rawPath"], "/orders/1/items");
    assert_eq!(e["rawQueryString"], "a=1&a=2&b=x%20y");
    assert_eq!(e["cookies"], json!(["s=1", "t=2"]));
    assert_eq!(e["queryStringParameters"], json!({"a": "1,2", "b": "x y"}));
    assert_eq!(e["pathParameters"], json!({"proxy": "1/items"}));
    assert_eq!(e["headers"]["accept"], "a,b");
    assert_eq!(e["headers"]["x-forwarded-for"], "192.0.2.1");
    let names: Vec<&String> = e["headers"].as_object().unwrap().keys().collect();
    assert!(
        names
            .iter()
            .all(|n| !n.contains("tenant") && !n.starts_with("x-amz")),
        "{names:?}"
    );
    assert!(e["headers"].get("cookie").is_none());
    let c = &e["requestContext"];
    assert_eq!(c["http"]["method"], "POST");
    assert_eq!(c["http"]["sourceIp"], "192.0.2.1");
    assert_eq!(c["http"]["userAgent"], "curl/8");
    assert_eq!(c["time"], "04/Mar/2020:19:03:58 +0000");
    assert_eq!(c["timeEpoch"], 1_583_348_638_390u64);
    assert_eq!(c["requestId"], "rid");
    assert_eq!(c["stage"], "$default");
    assert_eq!(c["domainPrefix"], "api");
    assert_eq!(c["authorizer"]["jwt"]["claims"]["tenant_id"], "tenant-A");
    assert_eq!(c["authorizer"]["jwt"]["claims"]["exp"], "1900000000");
    assert_eq!(c["authorizer"]["jwt"]["scopes"], json!(["orders:read"]));
    assert_eq!(e["body"], "{\"n\":1}");
    assert_eq!(e["isBase64Encoded"], false);
}

#[test]
fn binary_bodies_are_base64_and_empty_parts_are_left_out() {
    let h = headers(&[("content-type", "application/octet-stream")]);
    let e = request_event(&RequestParts {
        route_key: "$default",
        method: "PUT",
        raw_path: "/",
        raw_query: "",
        headers: &h,
        path_parameters: &BTreeMap::new(),
        source_ip: "127.0.0.1".into(),
        jwt: None,
        request_id: "r",
        account_id: "0",
        now_ms: 0,
        body: &[0, 159, 146, 150],
    });
    assert_eq!(e["isBase64Encoded"], true);
    assert_eq!(e["body"], "AJ+Slg==");
    for absent in ["cookies", "queryStringParameters", "pathParameters"] {
        assert!(e.get(absent).is_none(), "{absent}");
    }
    assert!(e["requestContext"].get("authorizer").is_none());
}

#[test]
fn responses_map_as_api_gateway_maps_them() {
    // Full form: status, headers, cookies, base64 body.
    let (s, h, b) = map_response(
        br#"{"statusCode":201,"headers":{"x-a":"1","content-length":"999"},"cookies":["a=1; Path=/","b=2"],"body":"aGk=","isBase64Encoded":true}"#,
    )
    .unwrap();
    assert_eq!(s.as_u16(), 201);
    assert_eq!(h["x-a"], "1");
    assert!(h.get("content-length").is_none());
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2"]);
    assert_eq!(b, b"hi");
    // A plain string: 200, JSON content type, the string itself.
    let (s, h, b) = map_response(br#""Hello from Lambda!""#).unwrap();
    assert_eq!((s.as_u16(), &b[..]), (200, &b"Hello from Lambda!"[..]));
    assert_eq!(h["content-type"], "application/json");
    // An object without statusCode: its JSON text.
    let (s, _, b) = map_response(br#"{"message":"hi"}"#).unwrap();
    assert_eq!((s.as_u16(), &b[..]), (200, &br#"{"message":"hi"}"#[..]));
    // Malformed: API Gateway's 500.
    for bad in [
        &br#"{"statusCode":"200"}"#[..],
        br#"{"statusCode":99}"#,
        br#"{"statusCode":200,"body":{"a":1}}"#,
        br#"{"statusCode":200,"body":"!!","isBase64Encoded":true}"#,
        br#"{"statusCode":200,"headers":{"x":"a\nb"}}"#,
        b"not json",
    ] {
        assert!(
            map_response(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn no_spelling_of_a_tenant_header_reaches_the_function() {
    // Deterministic pseudo-random case and spellings over 2,000 requests.
    let bases = [
        "x-amz-tenant-id",
        "x-amzn-tenant-id",
        "lambda-runtime-aws-tenant-id",
        "x-tenant-id",
        "tenant",
        "x-silo-tenant",
        "x-amz-tenantid",
        "tenant-id",
        "x-forwarded-tenant",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let mut h = headers(&[("host", "h")]);
        for _ in 0..(next() % 4 + 1) {
            let base = bases[(next() % bases.len() as u64) as usize];
            let name: String = base
                .chars()
                .map(|c| {
                    if next() % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("tenant-B"),
            );
        }
        let e = request_event(&RequestParts {
            route_key: "$default",
            method: "GET",
            raw_path: "/",
            raw_query: "",
            headers: &h,
            path_parameters: &BTreeMap::new(),
            source_ip: "127.0.0.1".into(),
            jwt: None,
            request_id: "r",
            account_id: "0",
            now_ms: 0,
            body: b"",
        });
        let text = e["headers"].to_string();
        assert!(!text.contains("tenant"), "{text}");
    }
}
