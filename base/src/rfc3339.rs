//! RFC 3339 timestamps in UTC from seconds since the Unix epoch, without a date-time crate:
//! the JSON log lines (`time`) and the certificate dump (`validFrom`/`expirationTime`) both
//! write them, and the conversion is one small, well-known algorithm.

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` for `unix_seconds` (times before 1970 clamp to it), with
/// microseconds when `micros` is given.
pub fn format(unix_seconds: i64, micros: Option<u32>) -> String {
    let secs = u64::try_from(unix_seconds).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    match micros {
        Some(us) => format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{us:06}Z"),
        None => format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"),
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_map_to_their_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_424), (2025, 12, 2));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn known_instants_format_with_and_without_micros() {
        assert_eq!(format(0, None), "1970-01-01T00:00:00Z");
        assert_eq!(format(951_782_400, None), "2000-02-29T00:00:00Z");
        assert_eq!(format(1_735_689_599, None), "2024-12-31T23:59:59Z");
        assert_eq!(format(-5, None), "1970-01-01T00:00:00Z");
        assert_eq!(
            format(1_735_689_599, Some(42)),
            "2024-12-31T23:59:59.000042Z"
        );
    }
}
