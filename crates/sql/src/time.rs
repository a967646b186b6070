//! Dates and times in UTC without a calendar library: days to civil dates (Howard Hinnant's
//! algorithms) and the subset of Java's `SimpleDateFormat` patterns ksqlDB users write
//! (`yyyy MM dd HH mm ss SSS`, `'quoted'` literals, `XXX`/`Z` offsets printed as UTC).

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The civil date (year, month, day) of days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    milli: u32,
}

fn parts(ms: i64) -> Parts {
    let days = ms.div_euclid(86_400_000);
    let rest = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    Parts {
        year,
        month,
        day,
        hour: (rest / 3_600_000) as u32,
        minute: (rest / 60_000 % 60) as u32,
        second: (rest / 1000 % 60) as u32,
        milli: (rest % 1000) as u32,
    }
}

/// `2024-01-02T03:04:05.006` (ksqlDB's display of timestamps, UTC).
pub fn format_iso(ms: i64) -> String {
    format(ms, "yyyy-MM-dd'T'HH:mm:ss.SSS").unwrap_or_default()
}

/// `2024-01-02`.
pub fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A pattern cut into fields and literals.
enum Piece {
    Field(char, usize),
    Literal(String),
}

fn pieces(pattern: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let mut lit = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("unterminated quote in pattern '{pattern}'")),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        lit.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        lit.push(*c);
                        i += 1;
                    }
                }
            }
            out.push(Piece::Literal(if lit.is_empty() { "'".into() } else { lit }));
        } else if c.is_ascii_alphabetic() {
            let mut n = 0;
            while chars.get(i + n) == Some(&c) {
                n += 1;
            }
            if !"yMdHhmsSaXZ".contains(c) {
                return Err(format!("pattern letter '{c}' is not supported (use y M d H h m s S a X Z)"));
            }
            out.push(Piece::Field(c, n));
            i += n;
        } else {
            out.push(Piece::Literal(c.to_string()));
            i += 1;
        }
    }
    Ok(out)
}

/// Formats `ms` (UTC) with a Java date pattern.
pub fn format(ms: i64, pattern: &str) -> Result<String, String> {
    let p = parts(ms);
    let mut out = String::new();
    for piece in pieces(pattern)? {
        match piece {
            Piece::Literal(l) => out.push_str(&l),
            Piece::Field('y', 2) => out.push_str(&format!("{:02}", p.year.rem_euclid(100))),
            Piece::Field('y', n) => out.push_str(&format!("{:0n$}", p.year)),
            Piece::Field('M', n) => out.push_str(&format!("{:0n$}", p.month)),
            Piece::Field('d', n) => out.push_str(&format!("{:0n$}", p.day)),
            Piece::Field('H', n) => out.push_str(&format!("{:0n$}", p.hour)),
            Piece::Field('h', n) => {
                out.push_str(&format!("{:0n$}", if p.hour.is_multiple_of(12) { 12 } else { p.hour % 12 }))
            }
            Piece::Field('m', n) => out.push_str(&format!("{:0n$}", p.minute)),
            Piece::Field('s', n) => out.push_str(&format!("{:0n$}", p.second)),
            Piece::Field('S', n) => {
                let s = format!("{:03}", p.milli);
                out.push_str(&format!("{s:0<n$}")[..n.max(1)]);
            }
            Piece::Field('a', _) => out.push_str(if p.hour < 12 { "AM" } else { "PM" }),
            Piece::Field('X', _) => out.push('Z'),
            Piece::Field('Z', _) => out.push_str("+0000"),
            Piece::Field(c, _) => return Err(format!("pattern letter '{c}' is not supported")),
        }
    }
    Ok(out)
}

/// Parses `text` with a Java date pattern into milliseconds since the epoch (UTC).
pub fn parse(text: &str, pattern: &str) -> Result<i64, String> {
    let bad = || format!("'{text}' does not match the pattern '{pattern}'");
    let (mut year, mut month, mut day, mut hour, mut minute, mut second, mut milli) = (1970i64, 1u32, 1u32, 0, 0, 0, 0);
    let mut pm = None;
    let mut rest = text;
    let pieces = pieces(pattern)?;
    for (at, piece) in pieces.iter().enumerate() {
        let adjacent = matches!(pieces.get(at + 1), Some(Piece::Field(..)));
        match *piece {
            Piece::Literal(ref l) => rest = rest.strip_prefix(l.as_str()).ok_or_else(bad)?,
            Piece::Field('a', _) => {
                let upper = rest.get(..2).map(|s| s.to_ascii_uppercase());
                pm = match upper.as_deref() {
                    Some("AM") => Some(false),
                    Some("PM") => Some(true),
                    _ => return Err(bad()),
                };
                rest = rest.get(2..).ok_or_else(bad)?;
            }
            Piece::Field('X' | 'Z', _) => {
                // Offsets: only UTC is understood.
                if let Some(r) = rest.strip_prefix('Z') {
                    rest = r;
                } else if let Some(r) = rest.strip_prefix("+00:00").or_else(|| rest.strip_prefix("+0000")) {
                    rest = r;
                } else {
                    return Err(format!("'{text}': only UTC offsets are understood"));
                }
            }
            Piece::Field(c, n) => {
                // A field as wide as its letters, or wider for a lone letter (M, d, H ...) and
                // a year not followed at once by another field (`yyyyMMdd` reads 4 digits).
                let variable = n == 1 || (c == 'y' && n == 4 && !adjacent);
                let width = if variable {
                    rest.bytes().take_while(|b| b.is_ascii_digit()).count().min(if c == 'y' { 9 } else { 3 })
                } else {
                    n
                };
                if width > 9 {
                    return Err(format!("a pattern field of {width} letters is too wide"));
                }
                let digits =
                    rest.get(..width).filter(|d| width > 0 && d.bytes().all(|b| b.is_ascii_digit())).ok_or_else(bad)?;
                let v: i64 = digits.parse().map_err(|_| bad())?;
                rest = &rest[width..];
                match c {
                    'y' => year = if n == 2 { 2000 + v } else { v },
                    'M' => month = u32::try_from(v).map_err(|_| bad())?,
                    'd' => day = u32::try_from(v).map_err(|_| bad())?,
                    'H' | 'h' => hour = u32::try_from(v).map_err(|_| bad())?,
                    'm' => minute = u32::try_from(v).map_err(|_| bad())?,
                    's' => second = u32::try_from(v).map_err(|_| bad())?,
                    'S' => milli = (v as f64 * 10f64.powi(3 - width as i32)) as u32,
                    _ => return Err(bad()),
                }
            }
        }
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    if let Some(pm) = pm {
        hour = hour % 12 + if pm { 12 } else { 0 };
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(format!("'{text}' is not a valid date and time"));
    }
    let days = days_from_civil(year, month, day);
    let time = (hour as i64 * 3600 + minute as i64 * 60 + second as i64) * 1000 + milli as i64;
    days.checked_mul(86_400_000).and_then(|d| d.checked_add(time)).ok_or_else(|| format!("'{text}' is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_patterns_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(19723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let t = parse("2024-02-29 13:05:09.123", "yyyy-MM-dd HH:mm:ss.SSS").unwrap();
        assert_eq!(format(t, "yyyy-MM-dd'T'HH:mm:ss.SSSX").unwrap(), "2024-02-29T13:05:09.123Z");
        assert_eq!(format_iso(0), "1970-01-01T00:00:00.000");
        assert_eq!(format(-1, "yyyy-MM-dd HH:mm:ss.SSS").unwrap(), "1969-12-31 23:59:59.999");
        assert_eq!(
            parse("1/2/2024 01:00 PM", "M/d/yyyy hh:mm a").unwrap(),
            days_from_civil(2024, 1, 2) * 86_400_000 + 13 * 3_600_000
        );
        assert!(parse("2024-13-01", "yyyy-MM-dd").is_err());
        assert!(parse("2024-01-01x", "yyyy-MM-dd").is_err());
        assert!(format(0, "EEE").is_err());
        assert_eq!(parse("20240102", "yyyyMMdd").unwrap(), days_from_civil(2024, 1, 2) * 86_400_000);
        // Multi-byte text where digits are expected, and years past any range: errors.
        assert!(parse("2024-1é-01", "yyyy-MM-dd").is_err());
        assert!(parse("é", "a").is_err());
        assert!(parse("999999999-01-01", "yyyy-MM-dd").unwrap_err().contains("out of range"));
        assert!(parse("9999999999999999999", "yyyyyyyyyyyyyyyyyyy").is_err());
    }
}
