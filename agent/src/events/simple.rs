//! Built-in XSD simple types: whitespace handling and lexical checks.

use super::dom::is_xml_space;

/// The built-in simple types the event schemas may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    String,
    NormalizedString,
    Token,
    Boolean,
    Integer,
    Int,
    Long,
    UnsignedInt,
    Decimal,
    Double,
    Float,
    DateTime,
    Date,
    Base64Binary,
    AnyUri,
}

impl Builtin {
    /// Maps an XSD-namespace local name to a supported type.
    pub(crate) fn from_local(name: &str) -> Option<Builtin> {
        Some(match name {
            "string" => Builtin::String,
            "normalizedString" => Builtin::NormalizedString,
            "token" => Builtin::Token,
            "boolean" => Builtin::Boolean,
            "integer" => Builtin::Integer,
            "int" => Builtin::Int,
            "long" => Builtin::Long,
            "unsignedInt" => Builtin::UnsignedInt,
            "decimal" => Builtin::Decimal,
            "double" => Builtin::Double,
            "float" => Builtin::Float,
            "dateTime" => Builtin::DateTime,
            "date" => Builtin::Date,
            "base64Binary" => Builtin::Base64Binary,
            "anyURI" => Builtin::AnyUri,
            _ => return None,
        })
    }

    /// The name used in messages, e.g. `xs:decimal`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Builtin::String => "xs:string",
            Builtin::NormalizedString => "xs:normalizedString",
            Builtin::Token => "xs:token",
            Builtin::Boolean => "xs:boolean",
            Builtin::Integer => "xs:integer",
            Builtin::Int => "xs:int",
            Builtin::Long => "xs:long",
            Builtin::UnsignedInt => "xs:unsignedInt",
            Builtin::Decimal => "xs:decimal",
            Builtin::Double => "xs:double",
            Builtin::Float => "xs:float",
            Builtin::DateTime => "xs:dateTime",
            Builtin::Date => "xs:date",
            Builtin::Base64Binary => "xs:base64Binary",
            Builtin::AnyUri => "xs:anyURI",
        }
    }

    /// Whether range facets (minInclusive and friends) apply.
    pub(crate) fn is_numeric(self) -> bool {
        matches!(
            self,
            Builtin::Integer
                | Builtin::Int
                | Builtin::Long
                | Builtin::UnsignedInt
                | Builtin::Decimal
                | Builtin::Double
                | Builtin::Float
        )
    }

    /// Whether length facets apply (counted in characters).
    pub(crate) fn is_stringy(self) -> bool {
        matches!(
            self,
            Builtin::String | Builtin::NormalizedString | Builtin::Token | Builtin::AnyUri
        )
    }

    /// Applies the type's whiteSpace facet: preserve for xs:string, replace for
    /// xs:normalizedString, collapse for everything else.
    pub(crate) fn normalize(self, value: &str) -> String {
        match self {
            Builtin::String => value.to_string(),
            Builtin::NormalizedString => value
                .chars()
                .map(|c| if is_xml_space(c) { ' ' } else { c })
                .collect(),
            _ => value
                .split(is_xml_space)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// Checks a whitespace-normalised value against the type's lexical space.
    pub(crate) fn check(self, v: &str) -> bool {
        match self {
            // After replace/collapse every string is in these lexical spaces.
            Builtin::String | Builtin::NormalizedString | Builtin::Token => true,
            Builtin::Boolean => matches!(v, "true" | "false" | "1" | "0"),
            Builtin::Integer => is_integer(v),
            Builtin::Int => is_integer(v) && v.parse::<i32>().is_ok(),
            Builtin::Long => is_integer(v) && v.parse::<i64>().is_ok(),
            Builtin::UnsignedInt => {
                // "-0" is a valid unsignedInt; any other negative is not.
                is_integer(v)
                    && (v.trim_start_matches('-').bytes().all(|b| b == b'0')
                        || v.trim_start_matches('+').parse::<u32>().is_ok())
            }
            Builtin::Decimal => is_decimal(v),
            Builtin::Double | Builtin::Float => is_floating(v),
            Builtin::DateTime => is_date_time(v),
            Builtin::Date => is_date(v),
            Builtin::Base64Binary => is_base64(v),
            Builtin::AnyUri => is_any_uri(v),
        }
    }

    /// The numeric value of a valid value, for range facets.
    pub(crate) fn number(self, v: &str) -> Option<f64> {
        if !self.is_numeric() {
            return None;
        }
        match v {
            "INF" => Some(f64::INFINITY),
            "-INF" => Some(f64::NEG_INFINITY),
            _ => v.trim_start_matches('+').parse::<f64>().ok(),
        }
    }
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn strip_sign(v: &str) -> &str {
    v.strip_prefix(['+', '-']).unwrap_or(v)
}

fn is_integer(v: &str) -> bool {
    digits(strip_sign(v))
}

fn is_decimal(v: &str) -> bool {
    let body = strip_sign(v);
    match body.split_once('.') {
        Some((i, f)) => {
            (i.is_empty() || digits(i))
                && (f.is_empty() || digits(f))
                && !(i.is_empty() && f.is_empty())
        }
        None => digits(body),
    }
}

fn is_floating(v: &str) -> bool {
    if matches!(v, "INF" | "-INF" | "NaN") {
        return true;
    }
    let (mantissa, exp) = match v.find(['e', 'E']) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    is_decimal(mantissa) && exp.is_none_or(is_integer)
}

fn is_base64(v: &str) -> bool {
    let s: Vec<u8> = v.bytes().filter(|b| *b != b' ').collect();
    if !s.len().is_multiple_of(4) {
        return false;
    }
    let pad = s.iter().rev().take_while(|b| **b == b'=').count();
    if pad > 2 {
        return false;
    }
    s[..s.len() - pad]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

fn is_any_uri(v: &str) -> bool {
    // anyURI is deliberately lax; refuse only what no URI reference can contain even
    // after escaping: control characters and broken %-escapes.
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] < 0x20 || b[i] == 0x7f {
            return false;
        }
        if b[i] == b'%' {
            let ok =
                b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return false;
            }
        }
        i += 1;
    }
    true
}

/// Parses `[-]YYYY-MM-DD`, returning the rest of the string.
fn date_part(v: &str) -> Option<&str> {
    let body = v.strip_prefix('-').unwrap_or(v);
    let (year, rest) = body.split_once('-')?;
    if year.len() < 4 || !digits(year) || (year.len() > 4 && year.starts_with('0')) {
        return None;
    }
    let y: i64 = year.parse().ok()?;
    if y == 0 {
        return None;
    }
    if rest.len() < 5 || !rest.is_char_boundary(5) {
        return None;
    }
    let (md, tail) = rest.split_at(5);
    let (m, d) = md.split_once('-')?;
    if m.len() != 2 || d.len() != 2 || !digits(m) || !digits(d) {
        return None;
    }
    let (m, d): (u32, u32) = (m.parse().ok()?, d.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (1..=days).contains(&d).then_some(tail)
}

/// Checks an optional time zone: empty, `Z` or `±hh:mm` up to 14:00.
fn timezone(tz: &str) -> bool {
    if tz.is_empty() || tz == "Z" {
        return true;
    }
    let Some(body) = tz.strip_prefix(['+', '-']) else {
        return false;
    };
    let Some((h, m)) = body.split_once(':') else {
        return false;
    };
    if h.len() != 2 || m.len() != 2 || !digits(h) || !digits(m) {
        return false;
    }
    match (h.parse::<u32>(), m.parse::<u32>()) {
        (Ok(h), Ok(m)) => m < 60 && (h < 14 || (h == 14 && m == 0)),
        _ => false,
    }
}

fn is_date(v: &str) -> bool {
    date_part(v).is_some_and(timezone)
}

fn is_date_time(v: &str) -> bool {
    let Some(rest) = date_part(v) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix('T') else {
        return false;
    };
    // hh:mm:ss is 8 ASCII bytes; anything else fails the digit checks below.
    if rest.len() < 8 || !rest.is_char_boundary(8) {
        return false;
    }
    let (time, mut tail) = rest.split_at(8);
    let parts: Vec<&str> = time.split(':').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.len() != 2 || !digits(p)) {
        return false;
    }
    let n: Vec<u32> = parts.iter().filter_map(|p| p.parse().ok()).collect();
    let mut frac_zero = true;
    if let Some(f) = tail.strip_prefix('.') {
        let len = f.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return false;
        }
        frac_zero = f[..len].bytes().all(|b| b == b'0');
        tail = &f[len..];
    }
    let time_ok = match n.as_slice() {
        // 24:00:00 is allowed as the end of the day.
        [24, 0, 0] => frac_zero,
        [h, m, s] => *h < 24 && *m < 60 && *s < 60,
        _ => false,
    };
    time_ok && timezone(tail)
}

#[cfg(test)]
mod tests {
    use super::Builtin::*;

    #[test]
    fn lexical_forms() {
        let ok = [
            (Boolean, "true"),
            (Boolean, "0"),
            (Integer, "-0012"),
            (Integer, "+99999999999999999999999"),
            (Int, "-2147483648"),
            (Long, "9223372036854775807"),
            (UnsignedInt, "4294967295"),
            (UnsignedInt, "-0"),
            (Decimal, "0.07"),
            (Decimal, "-.5"),
            (Decimal, "3."),
            (Float, "1.5E-3"),
            (Double, "INF"),
            (Double, "NaN"),
            (DateTime, "2012-02-29T23:59:59.25Z"),
            (DateTime, "2013-03-14T24:00:00+01:00"),
            (Date, "2013-03-14-05:00"),
            (Base64Binary, "QUJD RA=="),
            (Base64Binary, ""),
            (AnyUri, "http://example.net/a%20b"),
        ];
        for (t, v) in ok {
            assert!(t.check(&t.normalize(v)), "{} should accept {v:?}", t.name());
        }
        let bad = [
            (Boolean, "yes"),
            (Boolean, "TRUE"),
            (Integer, "1.0"),
            (Integer, ""),
            (Int, "2147483648"),
            (Long, "9223372036854775808"),
            (UnsignedInt, "-1"),
            (UnsignedInt, "4294967296"),
            (Decimal, "abc"),
            (Decimal, "."),
            (Decimal, "1e3"),
            (Float, "inf"),
            (Float, "1e"),
            (DateTime, "2013-02-29T00:00:00"),
            (DateTime, "2013-03-14 10:00:00"),
            (DateTime, "2013-03-14T10:60:00"),
            (DateTime, "2013-03-14T10:00:00+15:00"),
            (Date, "13-03-14"),
            (Date, "0000-01-01"),
            (Base64Binary, "QUJ"),
            (Base64Binary, "Q===="),
            (Base64Binary, "QU*D"),
            (AnyUri, "a%zz"),
        ];
        for (t, v) in bad {
            assert!(
                !t.check(&t.normalize(v)),
                "{} should refuse {v:?}",
                t.name()
            );
        }
    }

    #[test]
    fn whitespace_facets() {
        assert_eq!(String.normalize(" a\tb "), " a\tb ");
        assert_eq!(NormalizedString.normalize(" a\tb "), " a b ");
        assert_eq!(Token.normalize(" a \n\t b "), "a b");
        assert!(Integer.check(&Integer.normalize("\n 42 \n")));
    }
}
