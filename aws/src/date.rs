//! AWS date formats: `X-Amz-Date` (`yyyymmddThhmmssZ`, SigV4) and Lambda's
//! `LastModified` (`yyyy-mm-ddThh:mm:ss.sss+0000`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch of a `yyyymmddThhmmssZ` timestamp.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    parse_amz_date_bytes(s.as_bytes())
}

/// [`parse_amz_date`] of raw bytes (a header value as received): anything
/// but ASCII digits where digits belong is `None`, never a panic.
pub fn parse_amz_date_bytes(b: &[u8]) -> Option<i64> {
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let n = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (n(0, 4)?, n(4, 6)?, n(6, 8)?);
    let (h, mi, se) = (n(9, 11)?, n(11, 13)?, n(13, 15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `yyyymmddThhmmssZ` of a Unix time.
pub fn format_amz_date(unix: i64) -> String {
    let days = unix.div_euclid(86400);
    let secs = unix.rem_euclid(86400);
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Lambda's `LastModified` format of now.
pub fn now_iso8601() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let d = format_amz_date(now.as_secs() as i64);
    format!(
        "{}-{}-{}T{}:{}:{}.{:03}+0000",
        &d[0..4],
        &d[4..6],
        &d[6..8],
        &d[9..11],
        &d[11..13],
        &d[13..15],
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for s in [
            "19700101T000000Z",
            "20150830T123600Z",
            "20261124T235959Z",
            "20000229T120000Z",
        ] {
            assert_eq!(format_amz_date(parse_amz_date(s).unwrap()), s);
        }
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("2015-08-30"), None);
    }

    #[test]
    fn non_ascii_or_signed_numbers_are_not_dates() {
        // 16 bytes, the 9th inside a character: refused, not a panic.
        assert_eq!(parse_amz_date("2015083é123600Z"), None);
        assert_eq!(parse_amz_date_bytes(b"2015083\xff123600Z"), None);
        assert_eq!(parse_amz_date("+0150830T123600Z"), None);
        assert_eq!(parse_amz_date("20150830T+23600Z"), None);
    }

    #[test]
    fn last_modified_has_lambdas_shape() {
        let s = now_iso8601();
        assert_eq!(s.len(), "2026-11-24T14:30:00.000+0000".len(), "{s}");
        assert!(s.ends_with("+0000"), "{s}");
        assert_eq!(&s[4..5], "-");
        assert_eq!(&s[10..11], "T");
    }
}
