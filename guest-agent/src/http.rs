//! A minimal HTTP/1.1 server side, enough for the Lambda Runtime API: request
//! line, headers, `Content-Length` or chunked bodies, keep-alive. Every limit
//! is enforced before allocating; malformed requests are errors, not panics.

use std::io::{BufRead, Read, Write};

/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 64 * 1024;

/// One parsed request.
#[derive(Debug)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Headers with lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The client wants the connection closed after the response.
    pub close: bool,
}

impl Request {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection between requests.
    Closed,
    /// The body is over the limit (respond 413).
    TooLarge,
    /// Malformed request (respond 400).
    Malformed(String),
    /// The connection failed.
    Io(#[allow(dead_code)] std::io::Error),
}

fn read_line<R: BufRead>(r: &mut R, budget: &mut usize) -> Result<String, ReadError> {
    let mut line = Vec::new();
    let n = r
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(ReadError::Io)?;
    if n > *budget {
        return Err(ReadError::Malformed("request head too large".into()));
    }
    *budget -= n;
    if n == 0 {
        return Err(ReadError::Closed);
    }
    if !line.ends_with(b"\n") {
        return Err(ReadError::Malformed("truncated line".into()));
    }
    let s = String::from_utf8(line).map_err(|_| ReadError::Malformed("non-UTF-8 head".into()))?;
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads one request, with a body of at most `max_body` bytes.
pub fn read_request<R: BufRead>(r: &mut R, max_body: usize) -> Result<Request, ReadError> {
    let mut budget = MAX_HEAD;
    let line = read_line(r, &mut budget)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed(format!("bad request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Malformed(format!(
            "unsupported version {version}"
        )));
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let h = match read_line(r, &mut budget) {
            Err(ReadError::Closed) => return Err(ReadError::Malformed("truncated headers".into())),
            other => other?,
        };
        if h.is_empty() {
            break;
        }
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| ReadError::Malformed(format!("bad header {h:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let close =
        get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) || version == "HTTP/1.0";
    let body =
        if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            read_chunked(r, max_body)?
        } else if let Some(len) = get("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| ReadError::Malformed(format!("bad Content-Length {len:?}")))?;
            if len > max_body {
                // Drain what we can so the connection stays usable for the 413.
                let _ = std::io::copy(&mut r.take(len as u64), &mut std::io::sink());
                return Err(ReadError::TooLarge);
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).map_err(ReadError::Io)?;
            body
        } else {
            Vec::new()
        };
    Ok(Request {
        method: method.to_string(),
        path,
        headers,
        body,
        close,
    })
}

fn read_chunked<R: BufRead>(r: &mut R, max_body: usize) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let mut budget = 1024;
        let line = read_line(r, &mut budget)?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| ReadError::Malformed(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers until the empty line.
            loop {
                let mut b = MAX_HEAD;
                if read_line(r, &mut b)?.is_empty() {
                    return Ok(body);
                }
            }
        }
        // `body.len() <= max_body` holds here, so this cannot overflow (a
        // crafted size such as ffffffffffffffff made `len + size` wrap).
        if size > max_body - body.len() {
            return Err(ReadError::TooLarge);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).map_err(ReadError::Io)?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).map_err(ReadError::Io)?;
        if &crlf != b"\r\n" {
            return Err(ReadError::Malformed("chunk not followed by CRLF".into()));
        }
    }
}

/// Writes a response with a body.
pub fn write_response<W: Write>(
    w: &mut W,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(n);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, ReadError> {
        read_request(&mut std::io::BufReader::new(raw), 1024)
    }

    #[test]
    fn parses_content_length_and_chunked_bodies() {
        let r =
            parse(b"POST /a/b?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), &r.body[..]),
            ("POST", "/a/b", &b"hello"[..])
        );
        assert_eq!(r.header("host"), Some("h"));
        let r = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(&r.body[..], b"abcde");
    }

    #[test]
    fn malformed_and_oversized_requests_are_errors() {
        assert!(matches!(parse(b""), Err(ReadError::Closed)));
        assert!(matches!(
            parse(b"GARBAGE\r\n\r\n"),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 4096\r\n\r\n"),
            Err(ReadError::TooLarge)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x"),
            Err(ReadError::Malformed(_))
        ));
    }

    #[test]
    fn crafted_chunk_sizes_are_refused_not_overflowed() {
        // The runtime is untrusted code: a chunk size near usize::MAX once
        // made `body.len() + size` overflow (a panic in debug builds, a
        // wrapped length and a slice panic in release builds).
        for size in ["ffffffffffffffff", "fffffffffffffffe", "7fffffffffffffff"] {
            let raw = format!(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n{size}\r\nxx\r\n"
            );
            assert!(
                matches!(parse(raw.as_bytes()), Err(ReadError::TooLarge)),
                "{size}"
            );
        }
        // Too many hex digits for a usize is malformed.
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n";
        assert!(matches!(parse(raw), Err(ReadError::Malformed(_))));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap, deterministic stand-in for the cargo-fuzz target
        // (`fuzz/fuzz_targets/agent_http.rs`): mutations of valid requests.
        let seeds: [&[u8]; 3] = [
            b"POST /2018-06-01/runtime/invocation/x/response HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..20_000 {
            let mut input = seeds[i % seeds.len()].to_vec();
            for _ in 0..(next() % 8) {
                let pos = (next() as usize) % (input.len() + 1);
                match next() % 4 {
                    0 if pos < input.len() => input[pos] = next() as u8,
                    1 => input.insert(pos, b"0123456789abcdefF\r\n;: "[(next() % 21) as usize]),
                    2 if pos < input.len() => {
                        input.remove(pos);
                    }
                    _ => input
                        .splice(pos..pos, b"ffffffffffffffff".iter().copied())
                        .for_each(drop),
                }
            }
            let mut reader = std::io::BufReader::new(&input[..]);
            while read_request(&mut reader, 1024).is_ok() {}
        }
    }
}
