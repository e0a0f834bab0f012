//! `js_type_converter.py` (bfcl-eval 2026.3.23): a JavaScript source literal, as a model
//! writes it inside a string, read back into the typed value BFCL compares with the
//! possible answer. What does not parse stays the string it was, as in BFCL.

use serde_json::{Map, Value};

use super::python::{self, re, Re};
use super::Raised;

static INT: Re = re!(r"^-?\d+$");
static FLOAT: Re = re!(r"^-?\d+(\.\d+)?$");
static BIGINT: Re = re!(r"^-?\d+n$");
static ARRAY_2D: Re =
    re!(r"^(?:\[\s*\[.*?\]\s*(,\s*\[.*?\]\s*)*\]|\bnew\s+Array\(\s*\[.*?\]\s*(,\s*\[.*?\]\s*)*\))");
static BRACKETED: Re = re!(r"\[(.*?)\]");
static ARRAY: Re = re!(r"^(?:\[(.*?)\]|\bnew\s+Array\((.*?)\))");
static DICT: Re = re!(r"^\{(.*?)\}");
// `$` is safe here: the text matched by DICT holds no newline.
static PAIR: Re = re!(r"([^:]+):\s*(.*?)(?:,\s*(?=[^,]+:)|$)");

fn text(s: &str) -> Value {
    Value::String(s.to_string())
}

fn quoted(s: &str) -> bool {
    (s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\''))
}

/// `js_type_converter(value, expected_type, nested_type)`.
pub fn convert(value: &str, ty: &str, nested: Option<&str>) -> Result<Value, Raised> {
    let bare = python::before_final_newline(value);
    Ok(match ty {
        "String" if quoted(value) => text(python::inner(value)),
        "integer" if INT.is_match(bare) => python::int(value).unwrap_or_else(|| text(value)),
        "float" if FLOAT.is_match(bare) => python::float(value).unwrap_or_else(|| text(value)),
        // BFCL drops the last character: with a final newline that is the newline, and
        // int("5n") raises.
        "Bigint" if BIGINT.is_match(bare) => match python::int(python::drop_last(value)) {
            Some(v) => v,
            None => {
                return Err(Raised(format!(
                    "invalid literal for int() with base 10: {:?}",
                    python::drop_last(value)
                )))
            }
        },
        "Boolean" if value == "true" || value == "false" => Value::Bool(value == "true"),
        "String" | "integer" | "float" | "Bigint" | "Boolean" | "any" => text(value),
        "dict" => parse_dict(python::strip(value)),
        "array" => parse_array(python::strip(value), nested),
        _ => return Err(Raised(format!("Unsupported type: {ty}"))),
    })
}

/// `parse_js_collection(code, "array", nested_type)`; any error inside gives back the
/// text, as BFCL's bare `except` does.
fn parse_array(code: &str, nested: Option<&str>) -> Value {
    if let Some(whole) = ARRAY_2D.group(code, 0) {
        let rows = BRACKETED
            .findall(whole)
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut row = python::strip(m[0]);
                if i == 0 {
                    row = row.strip_prefix('[').unwrap_or(row);
                }
                Value::Array(
                    row.split(',')
                        .map(|e| parse_value(python::strip(e)))
                        .collect(),
                )
            })
            .collect();
        return Value::Array(rows);
    }
    let Some(groups) = ARRAY.groups(code) else {
        return text(code);
    };
    let body = groups[1].or(groups[2]).map(python::strip).unwrap_or("");
    let elements: Vec<&str> = if body.is_empty() {
        vec![]
    } else {
        body.split(',').collect()
    };
    match nested {
        Some(t) => elements
            .iter()
            .map(|e| {
                let e = python::strip(e);
                convert(e, t, quoted(e).then_some("String"))
            })
            .collect::<Result<_, _>>()
            .map(Value::Array)
            .unwrap_or_else(|_| text(code)),
        None => Value::Array(
            elements
                .iter()
                .map(|e| parse_value(python::strip(e)))
                .collect(),
        ),
    }
}

/// `parse_js_collection(code, "dict")`.
fn parse_dict(code: &str) -> Value {
    if code == "{}" {
        return Value::Object(Map::new());
    }
    let Some(content) = DICT.group(code, 1) else {
        return text(code);
    };
    let quotes: &[char] = &['\'', '"'];
    let mut map = Map::new();
    for pair in PAIR.findall(content) {
        let key = python::strip(pair[0]).trim_matches(quotes);
        let value = python::strip(pair[1]);
        let parsed = if value.starts_with('[') && value.ends_with(']') {
            parse_array(value, None)
        } else if value.starts_with('{') && value.ends_with('}') {
            parse_dict(value)
        } else {
            parse_value(value.trim_matches(quotes))
        };
        map.insert(key.to_string(), parsed);
    }
    Value::Object(map)
}

/// `parse_js_value`.
fn parse_value(s: &str) -> Value {
    let s = python::strip(s);
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ if quoted(s) => text(python::inner(s)),
        _ => python::int(s)
            .or_else(|| python::float(s))
            .unwrap_or_else(|| text(s)),
    }
}

/// The literal a model writes for `v`, which `convert` reads back as `v`; the inverse
/// that turns a possible answer into a prediction (and a gold call into training text).
pub fn literal(v: &Value, ty: &str, items: Option<&str>) -> String {
    match (ty, v) {
        ("String", Value::String(s)) => format!("\"{s}\""),
        ("Bigint", Value::Number(n)) => format!("{n}n"),
        // Display never writes an exponent, which the float pattern does not take.
        ("float", Value::Number(n)) => format!("{}", n.as_f64().unwrap_or_default()),
        ("array", Value::Array(a)) => {
            let body: Vec<String> = a
                .iter()
                .map(|e| literal(e, items.unwrap_or("any"), None))
                .collect();
            format!("[{}]", body.join(", "))
        }
        ("dict", Value::Object(_)) => value_literal(v),
        (_, Value::String(s)) => s.clone(),
        (_, other) => other.to_string(),
    }
}

/// A value inside an object literal, as `parse_js_value` and the dict parser read it.
fn value_literal(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Array(a) => {
            let body: Vec<String> = a.iter().map(value_literal).collect();
            format!("[{}]", body.join(", "))
        }
        Value::Object(m) => {
            let body: Vec<String> = m
                .iter()
                .map(|(k, x)| format!("\"{k}\": {}", value_literal(x)))
                .collect();
            format!("{{{}}}", body.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(v: &str, t: &str, n: Option<&str>) -> Value {
        convert(v, t, n).unwrap()
    }

    /// The assertions of BFCL's own tests of `js_type_converter`.
    #[test]
    fn bfcl_own_examples() {
        assert_eq!(c("true", "Boolean", None), json!(true));
        assert_eq!(c("123", "integer", None), json!(123));
        assert_eq!(c("-3.25", "float", None), json!(-3.25));
        assert_eq!(c("123n", "Bigint", None), json!(123));
        assert_eq!(c("abc", "String", None), json!("abc"));
        assert_eq!(c("[1, 2, 3]", "array", None), json!([1, 2, 3]));
        assert_eq!(c("new Array(1, 2, 3)", "array", None), json!([1, 2, 3]));
        assert_eq!(c("{'key': 'value'}", "dict", None), json!({"key": "value"}));
        assert_eq!(c("{'key': true}", "dict", None), json!({"key": true}));
        assert_eq!(c("[]", "array", None), json!([]));
        assert_eq!(c("{}", "dict", None), json!({}));
        assert_eq!(
            c("[1, 'two', true]", "array", None),
            json!([1, "two", true])
        );
        assert_eq!(
            c(
                "{'key1': 123, 'key2': 'value', 'key3': false}",
                "dict",
                None
            ),
            json!({"key1": 123, "key2": "value", "key3": false})
        );
        assert_eq!(c("123.45", "integer", None), json!("123.45"));
        assert_eq!(c("123", "Bigint", None), json!("123"));
        assert_eq!(
            convert("123", "InvalidType", None).unwrap_err().0,
            "Unsupported type: InvalidType"
        );
        assert_eq!(
            c("new Array(4n, 5n, 6n)", "array", Some("Bigint")),
            json!([4, 5, 6])
        );
        assert_eq!(
            c("[1.1, 2.2, 3.3]", "array", Some("float")),
            json!([1.1, 2.2, 3.3])
        );
        assert_eq!(
            c(r#"["hello", "world", "!"]"#, "array", Some("String")),
            json!(["hello", "world", "!"])
        );
        assert_eq!(
            c(" [ [ 1, 2 ], [ 3,   4], [5, 6]]", "array", Some("array")),
            json!([[1, 2], [3, 4], [5, 6]])
        );
        assert_eq!(
            c("new Array([1, 2], [3, 4], [5, 6])", "array", Some("array")),
            json!([[1, 2], [3, 4], [5, 6]])
        );
        let complex = c(
            r#"{"initialState": initialStateObject, "reducers": reducersMap, "middlewares": ["loggerMiddleware"], "enhancers": ["applyMiddleware", "myMiddleWare"]}"#,
            "dict",
            None,
        );
        assert_eq!(
            complex,
            json!({"initialState": "initialStateObject", "reducers": "reducersMap",
                   "middlewares": ["loggerMiddleware"], "enhancers": ["applyMiddleware", "myMiddleWare"]})
        );
    }

    #[test]
    fn failures_inside_an_array_give_back_the_text() {
        // An element type BFCL has no converter for: its bare `except` returns the code.
        assert_eq!(c("[1, 2]", "array", Some("Set")), json!("[1, 2]"));
        // BFCL drops the last character (here the newline) and int("5n") raises.
        assert!(convert("5n\n", "Bigint", None).is_err());
    }
}
