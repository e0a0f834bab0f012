//! `java_type_converter.py` (bfcl-eval 2026.3.23): a Java source literal, as a model
//! writes it inside a string, read back into the typed value BFCL compares with the
//! possible answer. A literal that does not parse stays the string it was, as in BFCL.

use serde_json::{Map, Value};

use super::python::{self, re, Re};
use super::Raised;

static INT: Re = re!(r"^-?\d+$");
static FLOAT_F: Re = re!(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?[fF]$");
static DOUBLE: Re = re!(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$");
static LONG: Re = re!(r"^-?\d+[lL]$");
static AS_LIST: Re = re!(r"new\s+ArrayList<\w*>\(Arrays\.asList\((.+?)\)\)");
static ADDS: Re = re!(r"(?s)new\s+ArrayList<\w*>\(\)\s*\{\{\s*(.+?)\s*\}\}");
static ADD: Re = re!(r"add\((.+?)\)");
static EMPTY_LIST: Re = re!(r"new\s+ArrayList<\w*>\(\)");
static ARRAY: Re = re!(r"new\s+\w+\[\]\s*\{(.*?)\}");
static HASHMAP: Re = re!(r"(?s)new\s+HashMap<.*?>\s*\(\)\s*\{\s*\{?\s*(.*?)\s*\}?\s*\}");
static PUT: Re = re!(r#"put\("(.*?)",\s*(.*?)\)"#);
static EMPTY_MAP: Re = re!(r"new\s+HashMap<.*?>\s*\(\)");

fn text(s: &str) -> Value {
    Value::String(s.to_string())
}

/// `java_type_converter(value, expected_type, nested_type)`.
pub fn convert(value: &str, ty: &str, nested: Option<&str>) -> Result<Value, Raised> {
    // The number patterns end in Python's `$`, which also matches before a final
    // newline; int() and float() then ignore it.
    let bare = python::before_final_newline(value);
    Ok(match ty {
        "byte" | "short" | "integer" if INT.is_match(bare) => {
            python::int(value).unwrap_or_else(|| text(value))
        }
        "float" if FLOAT_F.is_match(bare) => {
            python::float(python::drop_last(bare)).unwrap_or_else(|| text(value))
        }
        "double" if DOUBLE.is_match(bare) => python::float(value).unwrap_or_else(|| text(value)),
        "long" if LONG.is_match(bare) => {
            python::int(python::drop_last(bare)).unwrap_or_else(|| text(value))
        }
        "boolean" if value == "true" || value == "false" => Value::Bool(value == "true"),
        "byte" | "short" | "integer" | "float" | "double" | "long" | "boolean" => text(value),
        // `char`'s pattern (`^\'.$\'`) can never match, so a char stays as written.
        "char" | "String" | "any" => text(value),
        "Array" => parse_array(value, nested)?,
        "ArrayList" => parse_arraylist(value, nested)?,
        "HashMap" => parse_hashmap(value),
        "Set" | "Hashtable" => return Err(Raised("Set conversion is not implemented".into())),
        "Queue" | "Stack" => return Err(Raised(format!("{ty} conversion is not implemented"))),
        _ => return Err(Raised(format!("Unsupported type: {ty}"))),
    })
}

/// An element of an ArrayList: chars and Strings lose their quotes, other types convert.
fn list_element(s: &str, nested: Option<&str>) -> Result<Value, Raised> {
    match nested {
        Some("char") | Some("String") => Ok(text(python::inner(s))),
        Some(t) => convert(s, t, None),
        None => Ok(parse_value(s)),
    }
}

fn parse_arraylist(input: &str, nested: Option<&str>) -> Result<Value, Raised> {
    if let Some(elements) = AS_LIST.group(input, 1) {
        return elements
            .split(',')
            .map(|e| list_element(python::strip(e), nested))
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    if let Some(adds) = ADDS.group(input, 1) {
        return ADD
            .findall(adds)
            .iter()
            .map(|m| list_element(python::strip(m[0]), nested))
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    if EMPTY_LIST.is_match(input) {
        return Ok(Value::Array(vec![]));
    }
    Ok(text(input))
}

fn parse_array(input: &str, nested: Option<&str>) -> Result<Value, Raised> {
    let Some(elements) = ARRAY.group(input, 1) else {
        return Ok(text(input));
    };
    elements
        .split(',')
        .map(python::strip)
        .filter(|x| !x.is_empty())
        .map(|x| match nested {
            Some(t) => convert(x, t, None),
            None => Ok(parse_value(x)),
        })
        .collect::<Result<_, _>>()
        .map(Value::Array)
}

fn parse_hashmap(input: &str) -> Value {
    if let Some(puts) = HASHMAP.group(input, 1) {
        let mut map = Map::new();
        if !python::strip(puts).is_empty() {
            for m in PUT.findall(puts) {
                map.insert(m[0].to_string(), parse_value(python::strip(m[1])));
            }
        }
        return Value::Object(map);
    }
    if EMPTY_MAP.is_match(input) {
        return Value::Object(Map::new());
    }
    text(input)
}

/// `parse_java_value`: a literal without a declared type (HashMap values, untyped lists).
fn parse_value(s: &str) -> Value {
    match s {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if s.starts_with('"') && s.ends_with('"') {
        return text(python::inner(s));
    }
    let bare = python::before_final_newline(s);
    if LONG.is_match(bare) {
        if let Some(v) = python::int(python::drop_last(s)) {
            return v;
        }
    } else if FLOAT_F.is_match(bare) {
        if let Some(v) = python::float(python::drop_last(bare)) {
            return v;
        }
    }
    python::int(s)
        .or_else(|| python::float(s))
        .unwrap_or_else(|| text(s))
}

/// The literal a model writes for `v`, which `convert` reads back as `v`; the inverse
/// that turns a possible answer into a prediction (and a gold call into training text).
/// `any` lists cannot hold non-strings: BFCL reads each element as a string.
pub fn literal(v: &Value, ty: &str, items: Option<&str>) -> String {
    let items = items.unwrap_or("any");
    match (ty, v) {
        ("Array", Value::Array(a)) => {
            let t = match items {
                "String" | "char" | "boolean" | "long" | "double" | "float" => items,
                "integer" => "int",
                _ => "Object",
            };
            let body: Vec<String> = a.iter().map(|e| scalar(e, items)).collect();
            format!("new {t}[]{{{}}}", body.join(", "))
        }
        ("ArrayList", Value::Array(a)) if a.is_empty() => "new ArrayList<>()".into(),
        ("ArrayList", Value::Array(a)) => {
            let body: Vec<String> = a
                .iter()
                .map(|e| match (items, e) {
                    ("String", Value::String(s)) => format!("\"{s}\""),
                    ("char", Value::String(s)) => format!("'{s}'"),
                    _ => scalar(e, items),
                })
                .collect();
            format!("new ArrayList<>(Arrays.asList({}))", body.join(", "))
        }
        ("HashMap", Value::Object(m)) => {
            let puts: Vec<String> = m
                .iter()
                .map(|(k, x)| {
                    let x = match x {
                        Value::String(s) => format!("\"{s}\""),
                        other => scalar(other, "any"),
                    };
                    format!("put(\"{k}\", {x});")
                })
                .collect();
            format!("new HashMap<String, Object>() {{{{ {} }}}}", puts.join(" "))
        }
        _ => scalar(v, ty),
    }
}

fn scalar(v: &Value, ty: &str) -> String {
    match (ty, v) {
        (_, Value::String(s)) => s.clone(),
        ("long", Value::Number(n)) => format!("{n}L"),
        // Display never writes an exponent, which the float patterns would not all take.
        ("float", Value::Number(n)) => format!("{}f", n.as_f64().unwrap_or_default()),
        ("double", Value::Number(n)) => format!("{}", n.as_f64().unwrap_or_default()),
        (_, other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(v: &str, t: &str) -> Value {
        convert(v, t, None).unwrap()
    }

    /// The assertions of BFCL's own `test_java_type_converter` (its 3.14 written 3.25, which
    /// clippy does not take for an approximate pi).
    #[test]
    fn bfcl_own_examples() {
        assert_eq!(c("true", "boolean"), json!(true));
        assert_eq!(c("false", "boolean"), json!(false));
        assert_eq!(c("123", "integer"), json!(123));
        assert_eq!(c("-123", "integer"), json!(-123));
        assert_eq!(c("3.25f", "float"), json!(3.25));
        assert_eq!(c("-3.25f", "float"), json!(-3.25));
        assert_eq!(c("3.25", "double"), json!(3.25));
        assert_eq!(c("123L", "long"), json!(123));
        assert_eq!(c("-123L", "long"), json!(-123));
        assert_eq!(c("a", "char"), json!("a"));
        assert_eq!(c("abc", "String"), json!("abc"));
        assert_eq!(c("new int[]{1, 2, 3}", "Array"), json!([1, 2, 3]));
        assert_eq!(
            c(r#"new ArrayList<>(Arrays.asList("a", "b"))"#, "ArrayList"),
            json!(["a", "b"])
        );
        assert_eq!(
            c(
                r#"new HashMap<String, String>() {{ put("key", "value"); }}"#,
                "HashMap"
            ),
            json!({"key": "value"})
        );
        assert_eq!(c("3f", "float"), json!(3.0));
        assert_eq!(c("3e3F", "float"), json!(3e3));
        assert_eq!(c("3e-3F", "float"), json!(3e-3));
        assert_eq!(c("3.14e-2", "double"), json!(3.14e-2));
        assert_eq!(c("-128", "byte"), json!(-128));
        assert_eq!(
            c("9223372036854775807L", "long"),
            json!(9223372036854775807i64)
        );
        assert_eq!(
            c("-9223372036854775808L", "long"),
            json!(-9223372036854775808i64)
        );
        assert_eq!(c("123", "any"), json!("123"));
        assert_eq!(c("new int[]{}", "Array"), json!([]));
        assert_eq!(c("new ArrayList<>()", "ArrayList"), json!([]));
        assert_eq!(c("new HashMap<>()", "HashMap"), json!({}));
        assert_eq!(
            c(r#"new Object[]{1, "abc", true}"#, "Array"),
            json!([1, "abc", true])
        );
        assert_eq!(
            c(
                r#"new ArrayList<>(Arrays.asList(1, "abc", true))"#,
                "ArrayList"
            ),
            json!([1, "abc", true])
        );
        for empty in [
            "new int[] {}",
            "new int[] { }",
            "new HashMap<>() {}",
            "new HashMap<>() {{}}",
            "new HashMap<>() {{ }}",
        ] {
            assert!(c(
                empty,
                if empty.contains("Map") {
                    "HashMap"
                } else {
                    "Array"
                }
            )
            .as_array()
            .map_or_else(|| true, |a| a.is_empty()));
        }
        assert_eq!(c("new int[] { 1, 2, 3 }", "Array"), json!([1, 2, 3]));
        assert_eq!(
            c(
                r#"new HashMap<String, String>() { { put("key", "value"); } }"#,
                "HashMap"
            ),
            json!({"key": "value"})
        );
        assert_eq!(
            c(
                r#"new HashMap<String, Object>() {{ put("key1", 123); put("key2", true); }}"#,
                "HashMap"
            ),
            json!({"key1": 123, "key2": true})
        );
        let long = |s| parse_array(s, Some("long")).unwrap();
        assert_eq!(long("new long[]{1L, 2L, 3L}"), json!([1, 2, 3]));
        assert_eq!(long("new long[]{1L, 2, 3L}"), json!([1, "2", 3]));
        assert_eq!(long("new long[]{1L, 2.0, 3L}"), json!([1, "2.0", 3]));
        let list = |s, t| parse_arraylist(s, Some(t)).unwrap();
        assert_eq!(
            list(
                "new ArrayList<Float>() {{ add(1.0f); add(2.0f); }}",
                "float"
            ),
            json!([1.0, 2.0])
        );
        assert_eq!(
            list(
                "new ArrayList<Character>() {{ add('a'); add('b'); }}",
                "char"
            ),
            json!(["a", "b"])
        );
        assert_eq!(
            parse_arraylist(r#"new ArrayList<String>() {{ add("x"); add("y"); }}"#, None).unwrap(),
            json!(["x", "y"])
        );
    }

    #[test]
    fn what_does_not_parse_stays_text_and_unported_types_raise() {
        assert_eq!(c("true", "integer"), json!("true"));
        assert_eq!(c("3.14", "float"), json!("3.14"));
        assert_eq!(c("3.14f", "double"), json!("3.14f"));
        assert_eq!(c("5", "long"), json!("5"));
        assert_eq!(c("5\n", "integer"), json!(5));
        assert_eq!(c("List.of(1)", "ArrayList"), json!("List.of(1)"));
        assert_eq!(
            convert("x", "Set", None).unwrap_err().0,
            "Set conversion is not implemented"
        );
        assert_eq!(
            convert("x", "Stack", None).unwrap_err().0,
            "Stack conversion is not implemented"
        );
        assert_eq!(
            convert("x", "Vector", None).unwrap_err().0,
            "Unsupported type: Vector"
        );
    }
}
