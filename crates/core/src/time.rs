//! Calendar dates without a date library: Unix seconds <-> `YYYY-MM-DD[THH:MM:SS]Z` (UTC).

/// Days since 1970-01-01 for a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days in month `m` (1–12) of year `y` (proleptic Gregorian).
fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]` (UTC) or plain Unix seconds.
pub fn parse(s: &str) -> Result<i64, String> {
    let err = || format!("invalid time '{s}' (use YYYY-MM-DD, YYYY-MM-DDTHH:MM:SS or Unix seconds)");
    let s = s.trim().trim_end_matches('Z');
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.len() != 8 {
        return s.parse().map_err(|_| err());
    }
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, ""));
    // Fields are unsigned decimal numbers (no sign: "T-5:00" is not a time of day).
    let field =
        |p: &str| if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) { p.parse::<i64>().map_err(|_| err()) } else { Err(err()) };
    let parts: Vec<i64> = date.split('-').map(field).collect::<Result<_, _>>()?;
    let [y, m, d] = parts[..] else { return Err(err()) };
    // Years are four digits: beyond them the day count would overflow.
    if !(0..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=days_in_month(y, m)).contains(&d) {
        return Err(err());
    }
    let mut secs = 0;
    if !time.is_empty() {
        let t: Vec<i64> = time.split(':').map(field).collect::<Result<_, _>>()?;
        if t.len() < 2 || t.len() > 3 || t[0] > 23 || t[1] > 59 || t.get(2).is_some_and(|&x| x > 60) {
            return Err(err());
        }
        secs = t[0] * 3600 + t[1] * 60 + t.get(2).copied().unwrap_or(0);
    }
    Ok(days_from_civil(y, m, d) * 86_400 + secs)
}

/// Formats Unix seconds as RFC 3339 UTC, e.g. `2026-11-22T08:00:00Z`.
pub fn format(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// The current Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_known_dates() {
        assert_eq!(super::parse("1970-01-01").unwrap(), 0);
        assert_eq!(super::parse("2000-03-01").unwrap(), 951_868_800);
        assert_eq!(super::parse("2026-11-22T08:00:00Z").unwrap(), 1_795_334_400);
        assert_eq!(super::format(1_795_334_400), "2026-11-22T08:00:00Z");
        assert_eq!(super::format(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(super::parse("1795334400").unwrap(), 1_795_334_400);
        assert!(super::parse("2026-13-01").is_err());
        assert!(super::parse("yesterday").is_err());
    }

    /// A day the month lacks was accepted and silently moved on (2026-02-31 was 2026-03-03).
    #[test]
    fn refuses_days_the_month_lacks() {
        for s in ["2026-02-29", "2026-02-31", "2026-04-31", "1900-02-29", "2026-11-31"] {
            assert!(super::parse(s).is_err(), "{s} was accepted");
        }
        for s in ["2024-02-29", "2000-02-29", "2026-01-31", "2026-12-31", "2026-04-30"] {
            assert!(super::parse(s).is_ok(), "{s} was refused");
        }
        // The last day of each month, and the day after it refused.
        for (m, last) in [(1, 31), (2, 28), (3, 31), (4, 30), (5, 31), (6, 30), (7, 31), (8, 31), (9, 30), (10, 31), (11, 30), (12, 31)] {
            assert!(super::parse(&format!("2026-{m:02}-{last:02}")).is_ok());
            assert!(super::parse(&format!("2026-{m:02}-{:02}", last + 1)).is_err());
        }
    }

    /// Found writing the query_parse fuzz target: a year past i64's range of days overflowed (a panic in a
    /// checked build, a wrong time otherwise), and negative or signed fields were accepted
    /// ("2026-01-01T-5:00" was five hours before midnight).
    #[test]
    fn refuses_out_of_range_and_signed_fields() {
        for s in ["99999999999999999-01-01", "9223372036854775807-12-31", "10000-01-01", "-5-01-01", "+2026-01-01", "2026-+1-01"] {
            assert!(super::parse(s).is_err(), "{s} accepted");
        }
        for s in ["2026-01-01T-5:00", "2026-01-01T05:-1", "2026-01-01T05:00:-1", "2026-01-01T+5:00", "2026-01-01T-9223372036854775808:00"] {
            assert!(super::parse(s).is_err(), "{s} accepted");
        }
        assert_eq!(super::parse("0000-01-01").unwrap(), -62_167_219_200);
        assert_eq!(super::parse("9999-12-31T23:59:59").unwrap(), 253_402_300_799);
    }
}
