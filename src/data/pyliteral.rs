//! Python literals, read and written as Python writes them.
//!
//! ToolBench's SFT files append the API list to the system turn as Python's `str()` of a
//! list of dicts (single quotes, `True`, `None`), not JSON. This reads that (and JSON, whose
//! `true` / `false` / `null` it also accepts, so one order-preserving reader serves both),
//! and writes `str()` back byte for byte, so that ablate can produce the same files as
//! ToolBench's preprocessing. Dicts keep their order: it is part of the text the model sees.

use std::fmt::Write;

use serde_json::Value;

/// A Python literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    /// Digits as written (Python ints have no size limit).
    Int(String),
    Float(f64),
    Str(String),
    List(Vec<Py>),
    Tuple(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

/// Where and why a literal did not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("Python literal, at byte {at}: {message}")]
pub struct PyError {
    pub at: usize,
    pub message: String,
}

/// Parses one literal that spans the whole of `text` (surrounding whitespace allowed).
pub fn parse(text: &str) -> Result<Py, PyError> {
    let mut p = Parser { s: text, i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != text.len() {
        return Err(p.err("unexpected text after the value"));
    }
    Ok(v)
}

/// Nesting deeper than this is refused rather than overflowing the stack.
const MAX_DEPTH: usize = 256;

struct Parser<'a> {
    s: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn err(&self, message: impl Into<String>) -> PyError {
        PyError {
            at: self.i,
            message: message.into(),
        }
    }

    fn rest(&self) -> &str {
        &self.s[self.i..]
    }

    fn ws(&mut self) {
        let r = self.rest();
        self.i += r.len() - r.trim_start().len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.ws();
        if self.rest().starts_with(c) {
            self.i += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Py, PyError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.ws();
        match self.rest().chars().next() {
            None => Err(self.err("expected a value, found the end")),
            Some('{') => {
                self.i += 1;
                let items = self.seq('}', depth, |p, d| {
                    let k = p.value(d)?;
                    if !p.eat(':') {
                        return Err(p.err("expected ':' after a dict key"));
                    }
                    Ok((k, p.value(d)?))
                })?;
                Ok(Py::Dict(items))
            }
            Some('[') => {
                self.i += 1;
                Ok(Py::List(self.seq(']', depth, |p, d| p.value(d))?))
            }
            Some('(') => {
                self.i += 1;
                Ok(Py::Tuple(self.seq(')', depth, |p, d| p.value(d))?))
            }
            Some(q @ ('\'' | '"')) => self.string(q),
            Some(c) if c == '-' || c == '+' || c == '.' || c.is_ascii_digit() => self.number(),
            Some(_) => {
                let word: String = self
                    .rest()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let v = match word.as_str() {
                    "None" | "null" => Py::None,
                    "True" | "true" => Py::Bool(true),
                    "False" | "false" => Py::Bool(false),
                    "inf" => Py::Float(f64::INFINITY),
                    "nan" => Py::Float(f64::NAN),
                    "" => return Err(self.err("expected a value")),
                    w => return Err(self.err(format!("`{w}` is not a literal"))),
                };
                self.i += word.len();
                Ok(v)
            }
        }
    }

    /// Comma-separated items up to `close` (a trailing comma is allowed, as in Python).
    fn seq<T>(
        &mut self,
        close: char,
        depth: usize,
        mut item: impl FnMut(&mut Self, usize) -> Result<T, PyError>,
    ) -> Result<Vec<T>, PyError> {
        let mut out = Vec::new();
        loop {
            if self.eat(close) {
                return Ok(out);
            }
            out.push(item(self, depth + 1)?);
            if self.eat(close) {
                return Ok(out);
            }
            if !self.eat(',') {
                return Err(self.err(format!("expected ',' or '{close}'")));
            }
        }
    }

    fn number(&mut self) -> Result<Py, PyError> {
        let start = self.i;
        let r = self.rest();
        let len = r
            .char_indices()
            .find(|&(k, c)| {
                !(c.is_ascii_digit()
                    || c == '.'
                    || c == 'e'
                    || c == 'E'
                    || c == '_'
                    || ((c == '-' || c == '+') && (k == 0 || matches!(&r[k - 1..k], "e" | "E"))))
            })
            .map_or(r.len(), |(k, _)| k);
        let text = r[..len].replace('_', "");
        // `-inf` is how str() writes negative infinity.
        if let Some(w) = r.strip_prefix('-').filter(|_| len == 1) {
            if w.starts_with("inf") {
                self.i += 4;
                return Ok(Py::Float(f64::NEG_INFINITY));
            }
        }
        self.i += len;
        let digits = text.trim_start_matches(['-', '+']);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Py::Int(text.trim_start_matches('+').to_string()));
        }
        text.parse::<f64>().map(Py::Float).map_err(|_| PyError {
            at: start,
            message: format!("`{text}` is not a number"),
        })
    }

    fn string(&mut self, q: char) -> Result<Py, PyError> {
        let start = self.i;
        self.i += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((k, c)) = chars.next() {
            match c {
                c if c == q => {
                    self.i += k + 1;
                    return Ok(Py::Str(out));
                }
                '\n' => break,
                '\\' => {
                    let Some((_, e)) = chars.next() else { break };
                    let mut hex = |n: usize| -> Result<char, PyError> {
                        let h: String = (0..n)
                            .filter_map(|_| chars.next().map(|(_, c)| c))
                            .collect();
                        u32::from_str_radix(&h, 16)
                            .ok()
                            .filter(|_| h.len() == n)
                            .and_then(char::from_u32)
                            .ok_or_else(|| PyError {
                                at: start,
                                message: format!("bad escape \\{e}{h}"),
                            })
                    };
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        'a' => out.push('\x07'),
                        'b' => out.push('\x08'),
                        'f' => out.push('\x0c'),
                        'v' => out.push('\x0b'),
                        '/' => out.push('/'),
                        '\\' | '\'' | '"' => out.push(e),
                        '\n' => {}
                        'x' => out.push(hex(2)?),
                        'u' => out.push(hex(4)?),
                        'U' => out.push(hex(8)?),
                        other => {
                            // Python keeps unknown escapes as written.
                            out.push('\\');
                            out.push(other);
                        }
                    }
                }
                c => out.push(c),
            }
        }
        Err(PyError {
            at: start,
            message: "unterminated string".into(),
        })
    }
}

impl Py {
    /// The value of `key` in a dict with string keys.
    pub fn get(&self, key: &str) -> Option<&Py> {
        match self {
            Py::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A JSON value as Python's `json.loads` gives it (integers stay ints).
    pub fn from_json(v: &Value) -> Py {
        match v {
            Value::Null => Py::None,
            Value::Bool(b) => Py::Bool(*b),
            Value::Number(n) if n.is_i64() || n.is_u64() => Py::Int(n.to_string()),
            Value::Number(n) => Py::Float(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Py::Str(s.clone()),
            Value::Array(a) => Py::List(a.iter().map(Py::from_json).collect()),
            Value::Object(o) => Py::Dict(
                o.iter()
                    .map(|(k, v)| (Py::Str(k.clone()), Py::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// The value as JSON (tuples become arrays; dict keys that are not strings are written
    /// as their `str()`).
    pub fn to_json(&self) -> Value {
        match self {
            Py::None => Value::Null,
            Py::Bool(b) => Value::Bool(*b),
            Py::Int(d) => d
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| d.parse::<u64>().map(Value::from))
                .unwrap_or_else(|_| d.parse::<f64>().map(Value::from).unwrap_or(Value::Null)),
            Py::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Py::Str(s) => Value::String(s.clone()),
            Py::List(v) | Py::Tuple(v) => Value::Array(v.iter().map(Py::to_json).collect()),
            Py::Dict(items) => Value::Object(
                items
                    .iter()
                    .map(|(k, v)| {
                        let key = match k {
                            Py::Str(s) => s.clone(),
                            k => k.repr(),
                        };
                        (key, v.to_json())
                    })
                    .collect(),
            ),
        }
    }

    /// Python's `str()` of the value (for containers and non-strings, `repr()`).
    pub fn repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out);
        out
    }

    fn write_repr(&self, out: &mut String) {
        let join = |out: &mut String, items: &[Py], open: &str, close: &str| {
            out.push_str(open);
            for (n, v) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                v.write_repr(out);
            }
            if close == ")" && items.len() == 1 {
                out.push(',');
            }
            out.push_str(close);
        };
        match self {
            Py::None => out.push_str("None"),
            Py::Bool(true) => out.push_str("True"),
            Py::Bool(false) => out.push_str("False"),
            Py::Int(d) => out.push_str(d),
            Py::Float(f) => out.push_str(&float_repr(*f)),
            Py::Str(s) => str_repr(s, out),
            Py::List(v) => join(out, v, "[", "]"),
            Py::Tuple(v) => join(out, v, "(", ")"),
            Py::Dict(items) => {
                out.push('{');
                for (n, (k, v)) in items.iter().enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    k.write_repr(out);
                    out.push_str(": ");
                    v.write_repr(out);
                }
                out.push('}');
            }
        }
    }
}

/// `json.loads(text)` as Python holds the result: strict JSON (no Python spellings), key
/// order kept, a repeated key keeping its last value in its first place. StableToolBench's
/// server keys its response cache by `str()` of that, and ToolBench passes a reply on as
/// `json.dumps()` of it; `serde_json::Value` (sorted keys) cannot give either.
pub fn json_loads(text: &str) -> Result<Py, serde_json::Error> {
    serde_json::from_str::<JsonPy>(text).map(|j| j.0)
}

/// A [`Py`] read from JSON by serde, keeping order.
struct JsonPy(Py);

impl<'de> serde::Deserialize<'de> for JsonPy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JsonPy, D::Error> {
        use serde::de::{MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonPy;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<JsonPy, E> {
                Ok(JsonPy(Py::None))
            }
            fn visit_bool<E>(self, b: bool) -> Result<JsonPy, E> {
                Ok(JsonPy(Py::Bool(b)))
            }
            fn visit_i64<E>(self, i: i64) -> Result<JsonPy, E> {
                Ok(JsonPy(Py::Int(i.to_string())))
            }
            fn visit_u64<E>(self, i: u64) -> Result<JsonPy, E> {
                Ok(JsonPy(Py::Int(i.to_string())))
            }
            fn visit_f64<E>(self, f: f64) -> Result<JsonPy, E> {
                Ok(JsonPy(Py::Float(f)))
            }
            fn visit_str<E>(self, s: &str) -> Result<JsonPy, E> {
                Ok(JsonPy(Py::Str(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<JsonPy, E> {
                Ok(JsonPy(Py::Str(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonPy, A::Error> {
                let mut items = Vec::new();
                while let Some(JsonPy(v)) = seq.next_element()? {
                    items.push(v);
                }
                Ok(JsonPy(Py::List(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonPy, A::Error> {
                let mut items: Vec<(Py, Py)> = Vec::new();
                while let Some((k, JsonPy(v))) = map.next_entry::<String, JsonPy>()? {
                    match items
                        .iter_mut()
                        .find(|(key, _)| matches!(key, Py::Str(s) if *s == k))
                    {
                        Some(slot) => slot.1 = v,
                        None => items.push((Py::Str(k), v)),
                    }
                }
                Ok(JsonPy(Py::Dict(items)))
            }
        }
        d.deserialize_any(V)
    }
}

impl From<&str> for Py {
    fn from(s: &str) -> Py {
        Py::Str(s.to_string())
    }
}

impl Py {
    /// Python's `json.dumps(value)` with its defaults (`", "` and `": "` separators,
    /// non-ASCII escaped, `NaN` / `Infinity` for those floats).
    pub fn json_dumps(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) {
        let join = |out: &mut String, items: &[Py]| {
            out.push('[');
            for (n, v) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                v.write_json(out);
            }
            out.push(']');
        };
        match self {
            Py::None => out.push_str("null"),
            Py::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Py::Int(d) => out.push_str(d),
            Py::Float(f) if f.is_nan() => out.push_str("NaN"),
            Py::Float(f) if f.is_infinite() => {
                out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
            }
            Py::Float(f) => out.push_str(&float_repr(*f)),
            Py::Str(s) => json_str(s, out),
            Py::List(v) | Py::Tuple(v) => join(out, v),
            Py::Dict(items) => {
                out.push('{');
                for (n, (k, v)) in items.iter().enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    match k {
                        Py::Str(s) => json_str(s, out),
                        k => json_str(&k.repr(), out),
                    }
                    out.push_str(": ");
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }
}

/// A JSON string as `json.dumps` writes it (`ensure_ascii=True`).
fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (' '..='~').contains(&c) => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Python's float repr: the shortest digits that round-trip, positional for exponents
/// in [-4, 16), scientific (`1e-05`, `1e+16`) outside.
fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e-5".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

/// Whether Python's `str.isprintable()` is false for `c` (control, format, separator other
/// than the space, unassigned and private-use characters): repr() escapes those. This
/// covers the ranges that occur in text; rare unassigned code points are printed as is.
fn escaped_by_repr(c: char) -> bool {
    let u = c as u32;
    u < 0x20
        || (0x7f..=0xa0).contains(&u)
        || u == 0xad
        || (0x600..=0x605).contains(&u)
        || u == 0x61c
        || u == 0x6dd
        || u == 0x70f
        || u == 0x1680
        || u == 0x180e
        || (0x2000..=0x200f).contains(&u)
        || (0x2028..=0x202f).contains(&u)
        || (0x205f..=0x206f).contains(&u)
        || u == 0x3000
        || (0xd800..=0xf8ff).contains(&u)
        || u == 0xfeff
        || (0xfff0..=0xfffb).contains(&u)
        || (0xe0000..=0xe0fff).contains(&u)
        || u >= 0xf0000
}

/// Python's repr of a str: single quotes unless the text has a single quote and no double.
fn str_repr(s: &str, out: &mut String) {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if escaped_by_repr(c) => {
                let u = c as u32;
                let _ = if u <= 0xff {
                    write!(out, "\\x{u:02x}")
                } else if u <= 0xffff {
                    write!(out, "\\u{u:04x}")
                } else {
                    write!(out, "\\U{u:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(q);
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected strings are what CPython 3.11 prints for the same input.
    #[test]
    fn json_loads_then_str_and_dumps_match_python() {
        let v = json_loads(
            r#"{"q": "birthday party ideas", "n": 3, "f": 0.5, "b": true, "x": null, "l": [1, "it's"], "e": 1e-7, "big": 1e16, "u": "café\u200b", "nl": "a\nb\\"}"#,
        )
        .unwrap();
        assert_eq!(
            v.repr(),
            r#"{'q': 'birthday party ideas', 'n': 3, 'f': 0.5, 'b': True, 'x': None, 'l': [1, "it's"], 'e': 1e-07, 'big': 1e+16, 'u': 'café\u200b', 'nl': 'a\nb\\'}"#
        );
        assert_eq!(
            v.json_dumps(),
            r#"{"q": "birthday party ideas", "n": 3, "f": 0.5, "b": true, "x": null, "l": [1, "it's"], "e": 1e-07, "big": 1e+16, "u": "caf\u00e9\u200b", "nl": "a\nb\\"}"#
        );
        assert_eq!(Py::Str("😀".into()).json_dumps(), r#""\ud83d\ude00""#);
        // Order kept; a repeated key keeps its last value in its first place.
        assert_eq!(
            json_loads(r#"{"z": 1, "a": 2, "z": 3}"#).unwrap().repr(),
            "{'z': 3, 'a': 2}"
        );
        // json.loads is strict: Python's own spelling is not JSON.
        assert!(json_loads("{'q': 1}").is_err());
    }

    #[test]
    fn reads_python_and_json_spellings() {
        let v = parse("{'a': [1, -2.5, True, None], \"b\": ('x',), 'c': {}}").unwrap();
        assert_eq!(
            v.to_json(),
            serde_json::json!({"a": [1, -2.5, true, null], "b": ["x"], "c": {}})
        );
        assert_eq!(
            parse(r#"{"k": [true, false, null, 1e-05]}"#)
                .unwrap()
                .to_json(),
            serde_json::json!({"k": [true, false, null, 1e-05]})
        );
    }

    #[test]
    fn strings_escape_and_unescape_as_python_does() {
        for (lit, text) in [
            (r#"'it\'s'"#, "it's"),
            (r#""it's""#, "it's"),
            (r#"'say "hi"'"#, "say \"hi\""),
            (r"'a\nb\\c\t'", "a\nb\\c\t"),
            (r"'\xa0\u200b\U0001f680'", "\u{a0}\u{200b}\u{1f680}"),
        ] {
            assert_eq!(parse(lit).unwrap(), Py::Str(text.into()), "{lit}");
        }
        // What Python's repr() prints for these strings.
        for (text, repr) in [
            ("it's", r#""it's""#),
            ("it's \"x\"", r#"'it\'s "x"'"#),
            ("a\nb\\", r"'a\nb\\'"),
            ("nb\u{a0}sp café 東京 🚀", r"'nb\xa0sp café 東京 🚀'"),
            ("\u{200b}\u{7f}", r"'\u200b\x7f'"),
        ] {
            assert_eq!(Py::Str(text.into()).repr(), repr, "{text:?}");
        }
    }

    #[test]
    fn floats_print_as_python_prints_them() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (-2.5, "-2.5"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            assert_eq!(float_repr(f), s);
            assert_eq!(parse(s).unwrap(), Py::Float(f), "{s}");
        }
        assert_eq!(parse("(1,)").unwrap().repr(), "(1,)");
    }

    #[test]
    fn malformed_input_says_where() {
        for bad in ["{'a' 1}", "[1, 2", "'open", "{'a': nope}", "[1] 2", ""] {
            let e = parse(bad).unwrap_err();
            assert!(e.at <= bad.len(), "{bad}: {e}");
        }
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).unwrap_err().message.contains("deeply"));
    }
}
