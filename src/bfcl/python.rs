//! The bits of Python that BFCL's Java and JavaScript converters lean on: `int()`,
//! `float()`, `str.strip()`, slicing, `json.dumps`, and regexes compiled once.
//!
//! Known gaps, none of which BFCL's data reaches: `int()` of non-ASCII digits keeps the
//! text (Python converts it); `float('nan')`/`float('inf')` keep the text (JSON has no
//! such numbers); integers beyond `u64` become the nearest float.

use fancy_regex::Regex;
use serde_json::Value;

/// A pattern compiled on first use. Patterns are constants of this module's callers, so
/// a failure to compile is a bug, caught by the unit tests.
pub(super) struct Re(std::sync::LazyLock<Regex>);

impl Re {
    pub(super) const fn new(f: fn() -> Regex) -> Re {
        Re(std::sync::LazyLock::new(f))
    }

    /// `re.match` (patterns are written with `^`) or `re.search`: a backtracking limit
    /// hit counts as no match.
    pub(super) fn is_match(&self, s: &str) -> bool {
        self.0.is_match(s).unwrap_or(false)
    }

    /// Group `i` of the first match.
    pub(super) fn group<'s>(&self, s: &'s str, i: usize) -> Option<&'s str> {
        self.groups(s)?.get(i).copied().flatten()
    }

    /// Whether the first match exists and which of its groups took part.
    pub(super) fn groups<'s>(&self, s: &'s str) -> Option<Vec<Option<&'s str>>> {
        let caps = self.0.captures(s).ok()??;
        Some(caps.iter().map(|m| m.map(|m| m.as_str())).collect())
    }

    /// `re.findall`: group 0 without groups, group 1 with one, all groups with more.
    pub(super) fn findall<'s>(&self, s: &'s str) -> Vec<Vec<&'s str>> {
        self.0
            .captures_iter(s)
            .map_while(Result::ok)
            .map(|c| {
                if c.len() == 1 {
                    vec![c.get(0).map_or("", |m| m.as_str())]
                } else {
                    (1..c.len())
                        .map(|i| c.get(i).map_or("", |m| m.as_str()))
                        .collect()
                }
            })
            .collect()
    }
}

/// Builds a `Re` from a literal pattern.
macro_rules! re {
    ($p:expr) => {
        $crate::bfcl::python::Re::new(|| {
            fancy_regex::Regex::new($p).expect("BFCL pattern compiles")
        })
    };
}
pub(super) use re;

fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// `str.strip()`.
pub(super) fn strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// `s[1:-1]`.
pub(super) fn inner(s: &str) -> &str {
    let mut it = s.char_indices();
    match (it.next(), it.next_back()) {
        (Some((_, a)), Some((end, _))) => &s[a.len_utf8()..end],
        _ => "",
    }
}

/// `s[:-1]`.
pub(super) fn drop_last(s: &str) -> &str {
    s.char_indices().last().map_or("", |(i, _)| &s[..i])
}

/// Python's `$` without MULTILINE also matches before a final newline; the number
/// patterns are written for the text without it.
pub(super) fn before_final_newline(s: &str) -> &str {
    s.strip_suffix('\n').unwrap_or(s)
}

/// Digits with single underscores between them, as `int()` and `float()` accept.
fn underscored_digits(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let ok = !s.is_empty()
        && b.iter().all(|c| c.is_ascii_digit() || *c == b'_')
        && b.first() != Some(&b'_')
        && b.last() != Some(&b'_')
        && !s.contains("__");
    ok.then(|| s.replace('_', ""))
}

/// `int(s)` in base 10; `None` where Python raises `ValueError`.
pub(super) fn int(s: &str) -> Option<Value> {
    let t = strip(s);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let digits = underscored_digits(digits)?;
    let sign = if neg { "-" } else { "" };
    let text = format!("{sign}{digits}");
    if let Ok(n) = text.parse::<i64>() {
        return Some(Value::from(n));
    }
    if let Ok(n) = text.parse::<u64>() {
        return Some(Value::from(n));
    }
    text.parse::<f64>().ok().map(Value::from)
}

/// `float(s)`; `None` where Python raises, and for NaN and infinities (kept as text).
pub(super) fn float(s: &str) -> Option<Value> {
    let t = strip(s);
    // Underscores are allowed between digits only; Rust's parser takes none.
    let bytes = t.as_bytes();
    for (i, c) in bytes.iter().enumerate() {
        if *c == b'_' {
            let around = i > 0
                && i + 1 < bytes.len()
                && bytes[i - 1].is_ascii_digit()
                && bytes[i + 1].is_ascii_digit();
            if !around {
                return None;
            }
        }
    }
    let x: f64 = t.replace('_', "").parse().ok()?;
    serde_json::Number::from_f64(x).map(Value::Number)
}

/// `json.dumps(v)` with its defaults: `", "` and `": "` separators, non-ASCII escaped.
pub fn json_dumps(v: &Value) -> String {
    fn separator<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    struct PyFormatter;
    impl serde_json::ser::Formatter for PyFormatter {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            separator(w, first)
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            separator(w, first)
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
        ) -> std::io::Result<()> {
            w.write_all(b": ")
        }
        fn write_string_fragment<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            fragment: &str,
        ) -> std::io::Result<()> {
            for c in fragment.chars() {
                if c.is_ascii() {
                    w.write_all(&[c as u8])?;
                } else {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        write!(w, "\\u{u:04x}")?;
                    }
                }
            }
            Ok(())
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter);
    serde::Serialize::serialize(v, &mut ser).expect("a JSON value serializes");
    String::from_utf8(out).expect("the formatter writes ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn int_and_float_as_python() {
        assert_eq!(int(" 12 "), Some(json!(12)));
        assert_eq!(int("+1_000"), Some(json!(1000)));
        assert_eq!(int("-0"), Some(json!(0)));
        assert_eq!(int("1__0"), None);
        assert_eq!(int("1.0"), None);
        assert_eq!(int(""), None);
        assert_eq!(float("1e-3"), Some(json!(0.001)));
        assert_eq!(float(" .5\n"), Some(json!(0.5)));
        assert_eq!(float("1_0.5"), Some(json!(10.5)));
        assert_eq!(float("_1"), None);
        assert_eq!(float("abc"), None);
        assert_eq!(float("nan"), None);
    }

    #[test]
    fn slices_and_strip() {
        assert_eq!(inner("\"ab\""), "ab");
        assert_eq!(inner("\""), "");
        assert_eq!(inner("'é'"), "é");
        assert_eq!(drop_last("5n"), "5");
        assert_eq!(strip("\x1c a \n"), "a");
    }

    #[test]
    fn dumps_as_python() {
        let v = json!({"a": [1, "é"], "b": {"c": true}});
        assert_eq!(json_dumps(&v), r#"{"a": [1, "\u00e9"], "b": {"c": true}}"#);
    }
}
