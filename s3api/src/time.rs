//! Time formats S3 uses: ISO 8601 with milliseconds in XML, RFC 1123 in HTTP headers, and the
//! compact `yyyyMMddTHHmmssZ` of SigV4.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parts(t: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (
        y,
        m,
        d,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis(),
    )
}

/// `2009-10-12T17:50:30.123Z`. Milliseconds are kept: `aws s3 sync` compares a listing's
/// LastModified with local files' times, and one cut to the second would look older than a
/// file written in the same second as its upload (and upload it again).
pub fn iso8601(t: SystemTime) -> String {
    let (y, m, d, h, mi, s, ms) = parts(t);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// `20091012T175030Z`.
pub fn amz_date(t: SystemTime) -> String {
    let (y, m, d, h, mi, s, _) = parts(t);
    format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `Mon, 12 Oct 2009 17:50:30 GMT`.
pub fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// Parses an HTTP date in any of the forms HTTP allows.
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(text.trim()).ok()
}

/// Parses `yyyyMMddTHHmmssZ`.
pub fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    // Digits only (`parse` would take a sign: `T+10000Z`).
    let n = |r: std::ops::Range<usize>| {
        let field = text.get(r)?;
        field
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| field.parse::<u32>().ok())
            .flatten()
    };
    let (y, mo, d, h, mi, s) = (
        n(0..4)?,
        n(4..6)?,
        n(6..8)?,
        n(9..11)?,
        n(11..13)?,
        n(13..15)?,
    );
    if !(1..=12).contains(&mo)
        || !(1..=days_in_month(y, mo)).contains(&d)
        || h > 23
        || mi > 59
        || s > 59
    {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + s);
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// The days of month `month` (1-12) of year `year` in the Gregorian calendar.
fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Milliseconds since the epoch to a time.
pub fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A time to milliseconds since the epoch (0 before it).
pub fn to_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Truncates to whole seconds (HTTP dates have no finer precision).
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_amz_date_is_digits_and_a_real_day() {
        assert!(parse_amz_date("20240229T120000Z").is_some(), "a leap day");
        // A 60th second would be the next day's first: a request dated so is signed with the
        // next day's key while its scope names this day.
        assert!(parse_amz_date("20250101T235960Z").is_none());
        for bad in [
            "20230229T120000Z",
            "20240231T120000Z",
            "20240431T120000Z",
            "2024+131T120000Z",
            "20240101T+10000Z",
            "19000229T120000Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
        assert!(
            parse_amz_date("20000229T000000Z").is_some(),
            "2000 is a leap year"
        );
    }

    #[test]
    fn formats_agree() {
        let t = UNIX_EPOCH + Duration::from_millis(1_255_369_830_123);
        assert_eq!(iso8601(t), "2009-10-12T17:50:30.123Z");
        assert_eq!(amz_date(t), "20091012T175030Z");
        assert_eq!(http_date(t), "Mon, 12 Oct 2009 17:50:30 GMT");
        assert_eq!(parse_amz_date("20091012T175030Z"), Some(whole_seconds(t)));
        assert_eq!(
            parse_http_date("Mon, 12 Oct 2009 17:50:30 GMT"),
            Some(whole_seconds(t))
        );
        assert_eq!(parse_amz_date("2009-10-12"), None);
    }

    #[test]
    fn leap_years_and_the_far_side_of_february() {
        let t = parse_amz_date("20240229T000000Z").unwrap();
        assert_eq!(iso8601(t), "2024-02-29T00:00:00.000Z");
        assert_eq!(
            iso8601(parse_amz_date("20000301T120000Z").unwrap()),
            "2000-03-01T12:00:00.000Z"
        );
    }
}
