//! JSON values as Python holds them after `json.loads`: objects keep their key order, and
//! print the way StableToolBench's Python prints them. Its server keys the response cache
//! by `str(tool_input)` (the parsed input's Python repr) and ToolBench passes a response
//! on as `json.dumps(response)`; matching a cache entry or an observation byte for byte
//! needs both spellings, which `serde_json::Value` (sorted keys) cannot give.

use std::fmt::Write;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    /// Key order as in the text.
    Dict(Vec<(String, PyValue)>),
}

impl PyValue {
    /// `json.loads(text)`, keeping key order (a repeated key keeps its last value, in the
    /// first key's place, as a Python dict does).
    pub fn parse(text: &str) -> Result<PyValue, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn is_dict(&self) -> bool {
        matches!(self, PyValue::Dict(_))
    }

    /// The value of `key` in a dict.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Dict(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Python's `str(value)` (for a dict or list, the repr of its items).
    pub fn py_str(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out);
        out
    }

    /// Python's `json.dumps(value)` with its defaults (`", "` and `": "` separators,
    /// non-ASCII escaped).
    pub fn json_dumps(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    /// As serde's value (key order lost), for code that reads fields.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            PyValue::None => Value::Null,
            PyValue::Bool(b) => Value::Bool(*b),
            PyValue::Int(i) => i64::try_from(*i)
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(*i as f64)),
            PyValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            PyValue::Str(s) => Value::String(s.clone()),
            PyValue::List(l) => Value::Array(l.iter().map(PyValue::to_json).collect()),
            PyValue::Dict(d) => {
                Value::Object(d.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    fn write_repr(&self, out: &mut String) {
        match self {
            PyValue::None => out.push_str("None"),
            PyValue::Bool(true) => out.push_str("True"),
            PyValue::Bool(false) => out.push_str("False"),
            PyValue::Int(i) => write!(out, "{i}").expect("string"),
            PyValue::Float(f) => out.push_str(&float_repr(*f)),
            PyValue::Str(s) => out.push_str(&str_repr(s)),
            PyValue::List(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.write_repr(out);
                }
                out.push(']');
            }
            PyValue::Dict(items) => {
                out.push('{');
                for (i, (k, v)) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&str_repr(k));
                    out.push_str(": ");
                    v.write_repr(out);
                }
                out.push('}');
            }
        }
    }

    fn write_json(&self, out: &mut String) {
        match self {
            PyValue::None => out.push_str("null"),
            PyValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            PyValue::Int(i) => write!(out, "{i}").expect("string"),
            PyValue::Float(f) => out.push_str(&float_repr(*f)),
            PyValue::Str(s) => json_str(s, out),
            PyValue::List(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.write_json(out);
                }
                out.push(']');
            }
            PyValue::Dict(items) => {
                out.push('{');
                for (i, (k, v)) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    json_str(k, out);
                    out.push_str(": ");
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }
}

/// Python's `repr(float)`: the shortest round-tripping digits, in exponent form below
/// 1e-4 and from 1e16 on (the same bounds as Rust's `{:?}`, whose exponent Python writes
/// with a sign and at least two digits).
fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let s = format!("{f:?}");
    match s.split_once('e') {
        None => s,
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
    }
}

/// Whether Python's `str.isprintable()` holds for `c` (control, format, separator other
/// than the space, and private-use characters are not printable).
fn printable(c: char) -> bool {
    let u = c as u32;
    !(u < 0x20
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
        || (0x205f..=0x2064).contains(&u)
        || (0x2066..=0x206f).contains(&u)
        || u == 0x3000
        || (0xe000..=0xf8ff).contains(&u)
        || u == 0xfeff
        || (0xfff9..=0xfffb).contains(&u)
        || (0xf0000..).contains(&u))
}

/// Python's `repr(str)`: single quotes unless the text has one and no double quote.
fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if printable(c) => out.push(c),
            c if (c as u32) < 0x100 => write!(out, "\\x{:02x}", c as u32).expect("string"),
            c if (c as u32) < 0x10000 => write!(out, "\\u{:04x}", c as u32).expect("string"),
            c => write!(out, "\\U{:08x}", c as u32).expect("string"),
        }
    }
    out.push(quote);
    out
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
                    write!(out, "\\u{u:04x}").expect("string");
                }
            }
        }
    }
    out.push('"');
}

impl<'de> Deserialize<'de> for PyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PyValue, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PyValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<PyValue, E> {
                Ok(PyValue::None)
            }
            fn visit_bool<E>(self, b: bool) -> Result<PyValue, E> {
                Ok(PyValue::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<PyValue, E> {
                Ok(PyValue::Int(i as i128))
            }
            fn visit_u64<E>(self, i: u64) -> Result<PyValue, E> {
                Ok(PyValue::Int(i as i128))
            }
            fn visit_f64<E>(self, f: f64) -> Result<PyValue, E> {
                Ok(PyValue::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<PyValue, E> {
                Ok(PyValue::Str(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<PyValue, E> {
                Ok(PyValue::Str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PyValue, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
                Ok(PyValue::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PyValue, A::Error> {
                let mut items: Vec<(String, PyValue)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, PyValue>()? {
                    match items.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = v,
                        None => items.push((k, v)),
                    }
                }
                Ok(PyValue::Dict(items))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected strings are what CPython 3.11 prints for the same input.
    #[test]
    fn str_and_dumps_match_python() {
        let v = PyValue::parse(
            r#"{"q": "birthday party ideas", "n": 3, "f": 0.5, "b": true, "x": null, "l": [1, "it's"], "e": 1e-7, "big": 1e16, "u": "café\u200b", "nl": "a\nb\\"}"#,
        )
        .unwrap();
        assert_eq!(
            v.py_str(),
            r#"{'q': 'birthday party ideas', 'n': 3, 'f': 0.5, 'b': True, 'x': None, 'l': [1, "it's"], 'e': 1e-07, 'big': 1e+16, 'u': 'café\u200b', 'nl': 'a\nb\\'}"#
        );
        assert_eq!(
            v.json_dumps(),
            r#"{"q": "birthday party ideas", "n": 3, "f": 0.5, "b": true, "x": null, "l": [1, "it's"], "e": 1e-07, "big": 1e+16, "u": "caf\u00e9\u200b", "nl": "a\nb\\"}"#
        );
        // Both quotes: single quotes, the single one escaped.
        assert_eq!(PyValue::Str("a'b\"c".into()).py_str(), r#"'a\'b"c'"#);
        assert_eq!(PyValue::Str("\u{1}\u{a0}".into()).py_str(), r"'\x01\xa0'");
        assert_eq!(PyValue::Float(1.0).py_str(), "1.0");
        assert_eq!(PyValue::Float(123456.789).py_str(), "123456.789");
        assert_eq!(PyValue::Str("😀".into()).json_dumps(), r#""\ud83d\ude00""#);
    }

    #[test]
    fn key_order_is_kept_and_a_repeated_key_keeps_its_place() {
        let v = PyValue::parse(r#"{"z": 1, "a": 2, "z": 3}"#).unwrap();
        assert_eq!(v.py_str(), "{'z': 3, 'a': 2}");
        assert_eq!(v.get("a"), Some(&PyValue::Int(2)));
    }
}
