//! BFCL's file format and a port of its AST checker
//! (`bfcl_eval/eval_checker/ast_eval/ast_checker.py`, bfcl-eval 2026.3.23), rule for rule, odd ones included (see
//! `../shared/notes/bfcl-checker.md`): values are compared with Python's semantics
//! (`type(v) == T`, `1 == 1.0 == True`), strings and list elements after BFCL's
//! `standardize_string`, parallel calls matched greedily in gold order. In the Java and
//! JavaScript categories every argument is a source literal inside a string, read back
//! by ports of BFCL's converters (`java`, `js`) before the same checks.

mod java;
mod js;
pub mod python;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One function call of a model's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub name: String,
    #[serde(default = "empty_object")]
    pub arguments: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A BFCL question: its function documents (the prompt is not needed to score).
#[derive(Debug, Clone, Deserialize)]
pub struct Question {
    pub id: String,
    #[serde(default)]
    pub question: Value,
    #[serde(default)]
    pub function: Vec<Value>,
}

/// A possible answer: a list of `{function_name: {param: [allowed values]}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Answer {
    pub id: String,
    pub ground_truth: Vec<Map<String, Value>>,
}

/// A model's output for one question.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub calls: Vec<Call>,
}

/// BFCL's decision on one example; `error_type` is BFCL's (`""` when valid).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub valid: bool,
    pub error_type: String,
    pub error: String,
}

impl Verdict {
    fn ok() -> Verdict {
        Verdict {
            valid: true,
            error_type: String::new(),
            error: String::new(),
        }
    }

    fn fail(error_type: &str, error: String) -> Verdict {
        Verdict {
            valid: false,
            error_type: error_type.to_string(),
            error,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BfclError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// Reads a JSON Lines file (BFCL's `.json` files are JSON Lines), naming the line of any
/// bad entry.
pub fn load_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, BfclError> {
    let text = std::fs::read_to_string(path).map_err(|e| BfclError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| BfclError::Line {
                path: path.display().to_string(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Which of BFCL's type systems a category uses; BFCL decides by substring
/// (`is_java`, `is_js`), and so does this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    Java,
    JavaScript,
}

impl Language {
    pub fn of(category: &str) -> Language {
        if category.contains("javascript") {
            Language::JavaScript
        } else if category.contains("java") {
            Language::Java
        } else {
            Language::Python
        }
    }

    /// `PYTHON_TYPE_MAPPING`, `JAVA_TYPE_CONVERSION`, `JS_TYPE_CONVERSION`. Java's `Set`
    /// (a Python set) is never compared: its converter raises first.
    fn expected(self, t: &str) -> Option<PyType> {
        Some(match (self, t) {
            (Language::Python, "string" | "any") => PyType::Str,
            (Language::Python, "integer") => PyType::Int,
            (Language::Python, "float") => PyType::Float,
            (Language::Python, "boolean") => PyType::Bool,
            (Language::Python, "array" | "tuple") => PyType::List,
            (Language::Python, "dict") => PyType::Dict,
            (Language::Java, "byte" | "short" | "integer" | "long") => PyType::Int,
            (Language::Java, "float" | "double") => PyType::Float,
            (Language::Java, "boolean") => PyType::Bool,
            (Language::Java, "char" | "String" | "any") => PyType::Str,
            (Language::Java, "Array" | "ArrayList" | "Queue" | "Stack" | "Set") => PyType::List,
            (Language::Java, "HashMap" | "Hashtable") => PyType::Dict,
            (Language::JavaScript, "String" | "any") => PyType::Str,
            (Language::JavaScript, "integer" | "Bigint") => PyType::Int,
            (Language::JavaScript, "float") => PyType::Float,
            (Language::JavaScript, "Boolean") => PyType::Bool,
            (Language::JavaScript, "dict") => PyType::Dict,
            (Language::JavaScript, "array") => PyType::List,
            _ => return None,
        })
    }

    /// `NESTED_CONVERSION_TYPE_LIST` for Java and JavaScript, `PYTHON_NESTED_TYPE_CHECK_LIST`
    /// for Python: the types whose items' type is read from the schema.
    fn nests(self, t: &str) -> bool {
        match self {
            Language::Python => matches!(t, "array" | "tuple"),
            _ => matches!(t, "Array" | "ArrayList" | "array"),
        }
    }

    /// The source literal for a typed value that `convert` reads back as it (Java and
    /// JavaScript); Python's values are written as JSON.
    pub fn literal(self, v: &Value, t: &str, items: Option<&str>) -> Value {
        match self {
            Language::Java => Value::String(java::literal(v, t, items)),
            Language::JavaScript => Value::String(js::literal(v, t, items)),
            Language::Python => v.clone(),
        }
    }

    /// Reads a source literal back as a value, as BFCL's `java_type_converter` /
    /// `js_type_converter` do; Python's values are not literals and stay as they are.
    pub fn convert(self, value: &str, t: &str, items: Option<&str>) -> Result<Value, Raised> {
        match self {
            Language::Java => java::convert(value, t, items),
            Language::JavaScript => js::convert(value, t, items),
            Language::Python => Ok(Value::String(value.to_string())),
        }
    }
}

/// A call's arguments as a model writes them for `doc` in this language: in Java and
/// JavaScript every value becomes its source literal, by the parameter's schema type.
pub fn as_literals(lang: Language, doc: &Value, args: &Value) -> Value {
    let Some(args) = args.as_object() else {
        return args.clone();
    };
    let props = &doc["parameters"]["properties"];
    Value::Object(
        args.iter()
            .map(|(k, v)| {
                let t = props[k]["type"].as_str().unwrap_or("any");
                let items = props[k]["items"]["type"].as_str();
                (k.clone(), lang.literal(v, t, items))
            })
            .collect(),
    )
}

/// Where BFCL's converter raises (a type it has no conversion for) instead of deciding;
/// BFCL's run stops there, the port fails the example with the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Raised(pub String);

/// The category of an id (`parallel_multiple_12` → `parallel_multiple`).
pub fn category_of(id: &str) -> &str {
    match id.rsplit_once('_') {
        Some((c, n)) if n.chars().all(|c| c.is_ascii_digit()) => c,
        _ => id,
    }
}

/// Python's type of a JSON value, as `json.loads` builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PyType {
    Str,
    Int,
    Float,
    Bool,
    List,
    Dict,
    None,
}

fn py_type(v: &Value) -> PyType {
    match v {
        Value::String(_) => PyType::Str,
        Value::Number(n) if n.is_f64() => PyType::Float,
        Value::Number(_) => PyType::Int,
        Value::Bool(_) => PyType::Bool,
        Value::Array(_) => PyType::List,
        Value::Object(_) => PyType::Dict,
        Value::Null => PyType::None,
    }
}

fn py_type_name(t: PyType) -> &'static str {
    match t {
        PyType::Str => "str",
        PyType::Int => "int",
        PyType::Float => "float",
        PyType::Bool => "bool",
        PyType::List => "list",
        PyType::Dict => "dict",
        PyType::None => "NoneType",
    }
}

/// Python's `==` on decoded JSON: numbers and booleans compare by value (`1 == 1.0 ==
/// True`), containers element by element.
fn py_eq(a: &Value, b: &Value) -> bool {
    let num = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    };
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Null, Value::Null) => true,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| py_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => match (num(a), num(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

fn py_in(v: &Value, list: &[Value]) -> bool {
    list.iter().any(|x| py_eq(v, x))
}

/// `standardize_string`: drop ` ,./-_*^`, lowercase, `'` → `"`.
pub fn standardize(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | ',' | '.' | '/' | '-' | '_' | '*' | '^'))
        .collect::<String>()
        .to_lowercase()
        .replace('\'', "\"")
}

fn std_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(standardize(s)),
        other => other.clone(),
    }
}

/// What Python's `len()`/iteration sees of an allowed entry: a list's items, a string's
/// characters (so the `""` marker is an empty sequence).
fn as_items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::String(s) => s.chars().map(|c| Value::String(c.to_string())).collect(),
        _ => vec![],
    }
}

fn repr(v: &Value) -> String {
    v.to_string()
}

fn is_marker(v: &Value) -> bool {
    v.as_str() == Some("")
}

/// BFCL's `"" in allowed`: a list holding the `""` marker, or any string at all (for a
/// string, `in` is a substring test, and the empty string is in every one).
fn allows_omission(allowed: &Value) -> bool {
    match allowed {
        Value::String(_) => true,
        Value::Array(a) => a.iter().any(is_marker),
        _ => false,
    }
}

/// `get_possible_answer_type`: the type of the first allowed value that is not `""`.
fn answer_type(allowed: &[Value]) -> Option<PyType> {
    allowed.iter().find(|a| !is_marker(a)).map(py_type)
}

struct TypeCheck {
    valid: bool,
    is_variable: bool,
    verdict: Option<Verdict>,
}

/// `type_checker`, including its "variable" rule and the nested check of arrays.
fn type_checker(
    param: &str,
    value: &Value,
    allowed: &[Value],
    expected_desc: &str,
    expected: PyType,
    nested: Option<PyType>,
) -> TypeCheck {
    let is_variable = answer_type(allowed).is_some_and(|t| t != expected);
    if py_type(value) == expected {
        let Some(inner) = nested else {
            return TypeCheck {
                valid: true,
                is_variable,
                verdict: None,
            };
        };
        for item in allowed {
            let mut flag = true;
            if let Value::Array(inner_allowed) = item {
                for v in value.as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    let r = type_checker(param, v, inner_allowed, py_type_name(inner), inner, None);
                    if !r.valid {
                        flag = false;
                        break;
                    }
                }
            }
            if flag {
                return TypeCheck {
                    valid: true,
                    is_variable,
                    verdict: None,
                };
            }
        }
        return TypeCheck {
            valid: false,
            is_variable: false,
            verdict: Some(Verdict::fail(
                "type_error:nested",
                format!(
                    "Nested type checking failed for parameter '{param}'. Expected outer type {expected_desc} with inner type {}. Parameter value: {}.",
                    py_type_name(inner),
                    repr(value)
                ),
            )),
        };
    }
    if answer_type(allowed).is_some_and(|t| py_type(value) == t) {
        return TypeCheck {
            valid: true,
            is_variable: true,
            verdict: None,
        };
    }
    TypeCheck {
        valid: false,
        is_variable: false,
        verdict: Some(Verdict::fail(
            "type_error:simple",
            format!(
                "Incorrect type for parameter '{param}'. Expected type {expected_desc}, got {}. Parameter value: {}.",
                py_type_name(py_type(value)),
                repr(value)
            ),
        )),
    }
}

fn string_checker(param: &str, value: &str, allowed: &[Value]) -> Option<Verdict> {
    let v = standardize(value);
    let ok = allowed
        .iter()
        .filter_map(Value::as_str)
        .any(|a| standardize(a) == v);
    (!ok).then(|| {
        Verdict::fail(
            "value_error:string",
            format!(
                "Invalid value for parameter '{param}': '{value}'. Expected one of {}.",
                Value::Array(allowed.to_vec())
            ),
        )
    })
}

fn list_checker(param: &str, value: &[Value], allowed: &[Value]) -> Option<Verdict> {
    let v = Value::Array(value.iter().map(std_value).collect());
    let ok = allowed.iter().any(|a| {
        py_eq(
            &v,
            &Value::Array(as_items(a).iter().map(std_value).collect()),
        )
    });
    (!ok).then(|| {
        Verdict::fail(
            "value_error:list/tuple",
            format!(
                "Invalid value for parameter '{param}': {}. Expected one of {}.",
                repr(&Value::Array(value.to_vec())),
                Value::Array(allowed.to_vec())
            ),
        )
    })
}

fn dict_checker(value: &Map<String, Value>, allowed: &[Value]) -> Verdict {
    let mut result = Verdict::fail("dict_checker:unclear", String::new());
    for a in allowed {
        if is_marker(a) {
            continue;
        }
        result = Verdict::fail("dict_checker:unclear", String::new());
        let empty = Map::new();
        let answer = a.as_object().unwrap_or(&empty);
        let mut flag = true;
        for (key, v) in value {
            let Some(key_allowed) = answer.get(key) else {
                result = Verdict::fail(
                    "value_error:dict_key",
                    format!("Unexpected dict key parameter: '{key}'."),
                );
                flag = false;
                break;
            };
            let std_allowed: Vec<Value> = as_items(key_allowed).iter().map(std_value).collect();
            if !py_in(&std_value(v), &std_allowed) {
                result = Verdict::fail(
                    "value_error:dict_value",
                    format!(
                        "Invalid value for parameter '{key}': {}. Expected one of {}.",
                        repr(v),
                        Value::Array(std_allowed)
                    ),
                );
                flag = false;
                break;
            }
        }
        for (key, key_allowed) in answer {
            let optional = allows_omission(key_allowed);
            if !value.contains_key(key) && !optional {
                result = Verdict::fail(
                    "value_error:dict_key",
                    format!("Missing dict key parameter: '{key}'."),
                );
                flag = false;
                break;
            }
        }
        if flag {
            return Verdict::ok();
        }
    }
    result
}

fn list_dict_checker(value: &[Value], allowed: &[Value]) -> Verdict {
    let mut result = Verdict::fail("list_dict_checker:unclear", String::new());
    for a in allowed {
        let answer = as_items(a);
        if value.len() != answer.len() {
            result = Verdict::fail(
                "value_error:list_dict_count",
                "Wrong number of dictionaries in the list.".into(),
            );
            continue;
        }
        let mut flag = true;
        for (v, ans) in value.iter().zip(&answer) {
            let empty = Map::new();
            result = dict_checker(v.as_object().unwrap_or(&empty), std::slice::from_ref(ans));
            if !result.valid {
                flag = false;
                break;
            }
        }
        if flag {
            return Verdict::ok();
        }
    }
    result
}

/// `simple_function_checker`: one call against one function document and one gold call.
pub fn simple_function_checker(
    lang: Language,
    doc: &Value,
    call: &Call,
    gold: &Map<String, Value>,
) -> Verdict {
    let empty = Map::new();
    let answer = gold
        .values()
        .next()
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let func_name = doc["name"].as_str().unwrap_or_default();
    let params = &doc["parameters"];
    let details = params["properties"].as_object().unwrap_or(&empty);
    let required: Vec<&str> = params["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();

    if call.name != func_name {
        return Verdict::fail(
            "simple_function_checker:wrong_func_name",
            format!("Function name '{func_name}' not found in model output."),
        );
    }
    let Some(model_params) = call.arguments.as_object() else {
        return Verdict::fail(
            "ast_decoder:decoder_wrong_output_format",
            "Arguments are not a JSON object.".into(),
        );
    };
    for p in &required {
        if !model_params.contains_key(*p) {
            return Verdict::fail(
                "simple_function_checker:missing_required",
                format!("Missing required parameter: '{p}'."),
            );
        }
    }
    for (param, value) in model_params {
        let (Some(detail), Some(allowed)) = (details.get(param), answer.get(param)) else {
            return Verdict::fail(
                "simple_function_checker:unexpected_param",
                format!("Unexpected parameter: '{param}'."),
            );
        };
        let allowed = as_items(allowed);
        let desc = detail["type"].as_str().unwrap_or_default();
        let Some(expected) = lang.expected(desc) else {
            return Verdict::fail(
                "ast_checker:unknown_type",
                format!("Unknown schema type '{desc}' for parameter '{param}'."),
            );
        };
        let items = lang
            .nests(desc)
            .then(|| detail["items"]["type"].as_str().unwrap_or_default());
        let nested = match items {
            None => None,
            Some(inner) => match lang.expected(inner) {
                Some(t) => Some(t),
                None => {
                    return Verdict::fail(
                        "ast_checker:unknown_type",
                        format!("Unknown item type '{inner}' for parameter '{param}'."),
                    )
                }
            },
        };
        let converted;
        let value = match (lang, value) {
            // Python's int → float promotion, at the top level only.
            (Language::Python, Value::Number(n)) if desc == "float" && !n.is_f64() => {
                converted = Value::from(n.as_f64().unwrap_or_default());
                &converted
            }
            (Language::Python, v) => v,
            (_, Value::String(s)) => match lang.convert(s, desc, items) {
                Ok(v) => {
                    converted = v;
                    &converted
                }
                Err(Raised(why)) => return Verdict::fail("ast_checker:converter_raised", why),
            },
            (_, v) => {
                return Verdict::fail(
                    if lang == Language::Java {
                        "type_error:java"
                    } else {
                        "type_error:js"
                    },
                    format!(
                        "Incorrect type for parameter '{param}'. Expected type String, got {}. Parameter value: {}.",
                        py_type_name(py_type(v)),
                        repr(v)
                    ),
                )
            }
        };
        let tc = type_checker(param, value, &allowed, desc, expected, nested);
        if !tc.valid {
            return tc.verdict.expect("a failed type check explains itself");
        }
        if !tc.is_variable {
            let failed = match (expected, value) {
                (PyType::Dict, Value::Object(m)) => Some(dict_checker(m, &allowed)),
                (PyType::List, Value::Array(items)) if nested == Some(PyType::Dict) => {
                    Some(list_dict_checker(items, &allowed))
                }
                (PyType::Str, Value::String(s)) => string_checker(param, s, &allowed),
                (PyType::List, Value::Array(items)) => list_checker(param, items, &allowed),
                _ => {
                    if py_in(value, &allowed) {
                        None
                    } else {
                        Some(others(param, value, &allowed))
                    }
                }
            };
            match failed {
                Some(v) if !v.valid => return v,
                _ => continue,
            }
        }
        if !py_in(value, &allowed) {
            return others(param, value, &allowed);
        }
    }
    for (param, allowed) in answer {
        if !model_params.contains_key(param) && !allows_omission(allowed) {
            return Verdict::fail(
                "simple_function_checker:missing_optional",
                format!("Optional parameter '{param}' not provided and not marked as optional."),
            );
        }
    }
    Verdict::ok()
}

fn others(param: &str, value: &Value, allowed: &[Value]) -> Verdict {
    Verdict::fail(
        "value_error:others",
        format!(
            "Invalid value for parameter '{param}': {}. Expected one of {}.",
            repr(value),
            Value::Array(allowed.to_vec())
        ),
    )
}

/// The function document named `name` (BFCL's `find_description`).
pub fn find_description<'a>(docs: &'a [Value], name: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["name"].as_str() == Some(name))
}

fn gold_name(g: &Map<String, Value>) -> &str {
    g.keys().next().map(String::as_str).unwrap_or_default()
}

/// `ast_checker` (and the relevance runner for `irrelevance`): dispatch on the category
/// name as BFCL does.
pub fn check(
    category: &str,
    docs: &[Value],
    calls: &[Call],
    gold: &[Map<String, Value>],
) -> Verdict {
    let lang = Language::of(category);
    if category.contains("irrelevance") {
        return if calls.is_empty() {
            Verdict::ok()
        } else {
            Verdict::fail(
                "irrelevance_error:decoder_success",
                "Valid syntax. Successfully decode AST when it should not.".into(),
            )
        };
    }
    if category.contains("parallel") {
        if calls.len() != gold.len() {
            return Verdict::fail(
                "parallel_function_checker_no_order:wrong_count",
                "Wrong number of functions.".into(),
            );
        }
        let mut matched: Vec<usize> = Vec::new();
        for (i, g) in gold.iter().enumerate() {
            let Some(doc) = find_description(docs, gold_name(g)) else {
                return Verdict::fail(
                    "parallel_function_checker_no_order:cannot_find_match",
                    format!("No function document for '{}'.", gold_name(g)),
                );
            };
            let mut errors = Vec::new();
            let mut found = false;
            for (j, c) in calls.iter().enumerate() {
                if matched.contains(&j) {
                    continue;
                }
                let r = simple_function_checker(lang, doc, c, g);
                if r.valid {
                    matched.push(j);
                    found = true;
                    break;
                }
                errors.push(format!("index {j}: {} ({})", r.error, r.error_type));
            }
            if !found {
                return Verdict::fail(
                    "parallel_function_checker_no_order:cannot_find_match",
                    format!(
                        "Could not find a matching function for index {i} of possible answers: {}",
                        errors.join("; ")
                    ),
                );
            }
        }
        return Verdict::ok();
    }
    if category.contains("multiple") {
        if calls.len() != gold.len() {
            return Verdict::fail(
                "multiple_function_checker:wrong_count",
                "Wrong number of functions.".into(),
            );
        }
        let Some(doc) = gold
            .first()
            .and_then(|g| find_description(docs, gold_name(g)))
        else {
            return Verdict::fail(
                "multiple_function_checker:wrong_count",
                "No function document for the expected call.".into(),
            );
        };
        return simple_function_checker(lang, doc, &calls[0], &gold[0]);
    }
    if calls.len() != 1 {
        return Verdict::fail(
            "simple_function_checker:wrong_count",
            "Wrong number of functions.".into(),
        );
    }
    match (docs.first(), gold.first()) {
        (Some(doc), Some(g)) => simple_function_checker(lang, doc, &calls[0], g),
        _ => Verdict::fail(
            "simple_function_checker:wrong_count",
            "No function document or possible answer.".into(),
        ),
    }
}

/// One scored example.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub id: String,
    pub category: String,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Accuracy over a set of examples, overall and per category.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub accuracy: f64,
    pub total: usize,
    pub passed: usize,
    pub categories: BTreeMap<String, CategoryScore>,
    pub verdicts: Vec<Scored>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CategoryScore {
    pub accuracy: f64,
    pub total: usize,
    pub passed: usize,
}

/// Scores predictions (matched by id; a missing one fails) against questions and their
/// possible answers (paired by line, as BFCL pairs them). `answers` may be empty for
/// `irrelevance`.
pub fn score(
    questions: &[Question],
    answers: &[Answer],
    predictions: &[Prediction],
) -> Result<Score, BfclError> {
    let by_id: BTreeMap<&str, &Prediction> =
        predictions.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut verdicts = Vec::with_capacity(questions.len());
    for (i, q) in questions.iter().enumerate() {
        let category = category_of(&q.id).to_string();
        let gold: &[Map<String, Value>] = if category.contains("irrelevance") {
            &[]
        } else {
            match answers.get(i) {
                Some(a) => &a.ground_truth,
                None => {
                    return Err(BfclError::Unsupported(format!(
                        "{}: no possible answer on line {} of the answers file",
                        q.id,
                        i + 1
                    )))
                }
            }
        };
        let verdict = match by_id.get(q.id.as_str()) {
            Some(p) => check(&category, &q.function, &p.calls, gold),
            None => Verdict::fail("missing_prediction", "No prediction for this id.".into()),
        };
        verdicts.push(Scored {
            id: q.id.clone(),
            category,
            verdict,
        });
    }
    let mut categories: BTreeMap<String, CategoryScore> = BTreeMap::new();
    for v in &verdicts {
        let c = categories
            .entry(v.category.clone())
            .or_insert(CategoryScore {
                accuracy: 0.0,
                total: 0,
                passed: 0,
            });
        c.total += 1;
        c.passed += v.verdict.valid as usize;
    }
    for c in categories.values_mut() {
        c.accuracy = c.passed as f64 / c.total.max(1) as f64;
    }
    let passed = verdicts.iter().filter(|v| v.verdict.valid).count();
    Ok(Score {
        accuracy: passed as f64 / verdicts.len().max(1) as f64,
        total: verdicts.len(),
        passed,
        categories,
        verdicts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({"name": "f", "parameters": {"type": "dict", "required": ["x"], "properties": {
            "x": {"type": "integer"}, "r": {"type": "float"}, "s": {"type": "string"},
            "l": {"type": "array", "items": {"type": "float"}},
            "d": {"type": "dict", "properties": {}}}}})
    }

    fn gold() -> Map<String, Value> {
        json!({"f": {"x": [5], "r": [1.5, 2.0, ""], "s": ["New York, NY", ""],
                     "l": [[1.0, 2.0], ""], "d": [{"k": ["a"], "o": ["", 1]}, ""]}})
        .as_object()
        .unwrap()
        .clone()
    }

    fn check1(args: Value) -> Verdict {
        let call = Call {
            name: "f".into(),
            arguments: args,
        };
        simple_function_checker(Language::Python, &doc(), &call, &gold())
    }

    #[test]
    fn each_rule_gives_bfcls_error_type() {
        assert!(check1(json!({"x": 5})).valid);
        let et = |args: Value| check1(args).error_type;
        assert_eq!(et(json!({})), "simple_function_checker:missing_required");
        assert_eq!(
            et(json!({"x": 5, "zz": 1})),
            "simple_function_checker:unexpected_param"
        );
        assert_eq!(et(json!({"x": 5.0})), "type_error:simple"); // 5.0 is not an int
        assert_eq!(et(json!({"x": true})), "type_error:simple"); // bool is not int
        assert_eq!(et(json!({"x": 6})), "value_error:others");
        assert!(check1(json!({"x": 5, "r": 2})).valid); // int promoted to float
                                                        // Ints in an array of float pass the nested check only because `""` is allowed.
        assert!(check1(json!({"x": 5, "l": [1, 2]})).valid);
        let mut strict = gold();
        strict["f"]["l"] = json!([[1.0, 2.0]]);
        let call = Call {
            name: "f".into(),
            arguments: json!({"x": 5, "l": [1, 2]}),
        };
        assert_eq!(
            simple_function_checker(Language::Python, &doc(), &call, &strict).error_type,
            "type_error:nested"
        );
        assert!(check1(json!({"x": 5, "s": "new york ny"})).valid); // standardised
        assert_eq!(et(json!({"x": 5, "s": "Boston"})), "value_error:string");
        assert!(check1(json!({"x": 5, "d": {"k": "A"}})).valid);
        assert_eq!(
            et(json!({"x": 5, "d": {"k": "a", "q": 1}})),
            "value_error:dict_key"
        );
        assert_eq!(
            et(json!({"x": 5, "d": {"k": "b"}})),
            "value_error:dict_value"
        );
        assert!(check1(json!({"x": 5, "d": {"k": "a", "o": true}})).valid); // 1 == True
        let wrong = Call {
            name: "g".into(),
            arguments: json!({"x": 5}),
        };
        assert_eq!(
            simple_function_checker(Language::Python, &doc(), &wrong, &gold()).error_type,
            "simple_function_checker:wrong_func_name"
        );
    }

    #[test]
    fn parallel_matching_is_greedy_in_gold_order() {
        let docs = vec![
            json!({"name": "f", "parameters": {"type": "dict", "required": ["x"],
            "properties": {"x": {"type": "integer"}}}}),
        ];
        let gold: Vec<Map<String, Value>> = [json!({"f": {"x": [1, 2]}}), json!({"f": {"x": [1]}})]
            .iter()
            .map(|g| g.as_object().unwrap().clone())
            .collect();
        let calls = |xs: [i64; 2]| -> Vec<Call> {
            xs.iter()
                .map(|x| Call {
                    name: "f".into(),
                    arguments: json!({ "x": x }),
                })
                .collect()
        };
        // BFCL consumes x=1 for the first gold call and then finds no match: it fails a
        // prediction that an optimal matching would accept.
        let v = check("parallel", &docs, &calls([1, 2]), &gold);
        assert_eq!(
            v.error_type,
            "parallel_function_checker_no_order:cannot_find_match"
        );
        assert!(check("parallel", &docs, &calls([2, 1]), &gold).valid);
        assert_eq!(
            check("parallel", &docs, &calls([2, 1])[..1], &gold).error_type,
            "parallel_function_checker_no_order:wrong_count"
        );
        assert!(check("irrelevance", &docs, &[], &[]).valid);
        assert!(!check("irrelevance", &docs, &calls([1, 1])[..1], &[]).valid);
    }

    #[test]
    fn standardize_as_bfcl() {
        assert_eq!(standardize("New York, N.Y."), "newyorkny");
        assert_eq!(standardize("it's a_b-c*d^e/f"), "it\"sabcdef");
        assert_eq!(category_of("parallel_multiple_12"), "parallel_multiple");
    }
}
