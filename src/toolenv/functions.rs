//! The functions a ToolBench query offers, built from its `api_list` the way ToolBench's
//! inference builds them (`rapidapi_wrapper.api_json_to_openai_json`): names standardised
//! and suffixed with the tool (`<api>_for_<tool>`, at most 64 characters), RapidAPI types
//! mapped to JSON-schema types, descriptions cut to 256 characters, defaults given as
//! `example_value`, optional parameters only beside required ones; then `Finish`. The shared StableToolBench answers were made with these
//! functions, and a test compares them field for field.

use serde_json::{json, Map, Value};

use crate::data::ToolSpec;

/// ToolBench's `standardize`: every character other than ASCII letters and digits, `_`,
/// `^` and CJK ideographs becomes `_` (the `^` is kept because ToolBench's character class
/// names it), runs of `_` shrink to one, the result is lower-cased and trimmed of `_`, and
/// a leading digit gets `get_` before it.
pub fn standardize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let keep = c.is_ascii_alphanumeric()
            || c == '_'
            || c == '^'
            || ('\u{4e00}'..='\u{9fa5}').contains(&c);
        let c = if keep { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    let out = out.to_lowercase();
    let out = out.trim_matches('_');
    match out.chars().next() {
        Some(c) if c.is_numeric() => format!("get_{out}"),
        _ => out.to_string(),
    }
}

/// ToolBench's `change_name`: names that are Python keywords (or close) get `is_`.
pub fn change_name(name: &str) -> String {
    const CHANGED: [&str; 7] = ["from", "class", "return", "false", "true", "id", "and"];
    if CHANGED.contains(&name) {
        format!("is_{name}")
    } else {
        name.to_string()
    }
}

/// StableToolBench's server's spelling of a category in its cache folders.
pub fn standard_category(category: &str) -> String {
    let mut s = category.replace([' ', ',', '/'], "_");
    while s.contains(' ') || s.contains(',') {
        s = s.replace([' ', ','], "_");
    }
    s.replacen("__", "_", usize::MAX)
}

/// Where a function's calls go: what ToolBench sends its tool server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiRef {
    /// The function's name as offered (`<api>_for_<tool>`).
    pub function: String,
    /// `category_name` of the api_list entry, as written.
    pub category: String,
    /// The standardised tool name.
    pub tool_name: String,
    /// The standardised API name (without the tool suffix).
    pub api_name: String,
}

fn chars_prefix(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn chars_suffix(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    match s.char_indices().nth(count.saturating_sub(n)) {
        Some((i, _)) if count > n => &s[i..],
        _ => s,
    }
}

/// Python's `str()` of a JSON default value (for the "is it empty" test).
fn py_len_of_str(v: &Value) -> usize {
    match v {
        Value::Null => 4, // "None"
        Value::String(s) => s.chars().count(),
        other => other.to_string().len(),
    }
}

/// One `api_list` entry as an offered function, and where its calls go. `None` when the
/// entry lacks the tool or API name.
pub fn api_function(api: &Value) -> Option<(ToolSpec, ApiRef)> {
    const MAX_DESCRIPTION: usize = 256;
    let tool = standardize(api["tool_name"].as_str()?);
    let raw_api_name = api["api_name"].as_str()?;
    let pure = change_name(&standardize(raw_api_name));
    let full = format!("{pure}_for_{tool}");
    let name = chars_suffix(&full, 64).to_string();
    let mut description =
        format!("This is the subfunction for tool \"{tool}\", you can use this tool.");
    let api_description = api["api_description"].as_str().unwrap_or_default().trim();
    if !api_description.is_empty() {
        let replaced = api_description.replace(raw_api_name, &name);
        description.push_str(&format!(
            "The description of this function is: \"{}\"",
            chars_prefix(&replaced, MAX_DESCRIPTION)
        ));
    }
    let mut properties = Map::new();
    let mut lists = [Vec::new(), Vec::new()];
    // ToolBench reads the optional parameters only of an API that has required ones (its
    // loop over them sits inside that test); an API with none offers no parameters.
    let has_required = api["required_parameters"]
        .as_array()
        .is_some_and(|r| !r.is_empty());
    let lists_read = if has_required { 2 } else { 0 };
    for (i, key) in ["required_parameters", "optional_parameters"]
        .iter()
        .enumerate()
        .take(lists_read)
    {
        for p in api[*key].as_array().into_iter().flatten() {
            let pname = change_name(&standardize(p["name"].as_str().unwrap_or_default()));
            let ptype = match p["type"].as_str() {
                Some("NUMBER") => "integer",
                Some("BOOLEAN") => "boolean",
                _ => "string",
            };
            let pdesc = chars_prefix(
                p["description"].as_str().unwrap_or_default(),
                MAX_DESCRIPTION,
            );
            let mut prop = json!({"type": ptype, "description": pdesc});
            if py_len_of_str(&p["default"]) != 0 {
                prop["example_value"] = p["default"].clone();
            }
            properties.insert(pname.clone(), prop);
            lists[i].push(Value::String(pname));
        }
    }
    let [required, optional] = lists;
    let spec = ToolSpec {
        name: name.clone(),
        description,
        parameters: json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "optional": optional,
        }),
    };
    let api_ref = ApiRef {
        function: name,
        category: api["category_name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        tool_name: tool,
        api_name: pure,
    };
    Some((spec, api_ref))
}

/// The `Finish` function every query offers: its name and arguments are ToolBench's (the
/// models are trained to call it so); the description is ablate's own words.
pub fn finish() -> ToolSpec {
    ToolSpec {
        name: "Finish".into(),
        description: "Call this at the end: give the final answer the user will see \
                      (return_type \"give_answer\" with final_answer), or give up \
                      (return_type \"give_up_and_restart\")."
            .into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "return_type": {"type": "string", "enum": ["give_answer", "give_up_and_restart"]},
                "final_answer": {"type": "string", "description": "The answer shown to the user."},
            },
            "required": ["return_type"],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values are what ToolBench's Python functions return for the same input.
    #[test]
    fn names_are_standardised_as_toolbench_does() {
        assert_eq!(standardize("Keyword Analysis"), "keyword_analysis");
        assert_eq!(standardize("  --Get  Data!! v2--"), "get_data_v2");
        assert_eq!(standardize("3D Models^x"), "get_3d_models^x");
        assert_eq!(standardize("天气 API"), "天气_api");
        assert_eq!(standardize("__"), "");
        assert_eq!(change_name("id"), "is_id");
        assert_eq!(change_name("ids"), "ids");
        assert_eq!(
            standard_category("Health and Fitness"),
            "Health_and_Fitness"
        );
        // Python's replace("__", "_") is one pass: three become two.
        assert_eq!(standard_category("Text , Analysis"), "Text__Analysis");
    }

    #[test]
    fn long_names_keep_their_last_64_characters() {
        let api = json!({"tool_name": "A Very Long Tool Name That Goes On", "api_name":
            "An Endpoint With An Even Longer Name Than The Tool", "category_name": "Data",
            "api_description": ""});
        let (spec, r) = api_function(&api).unwrap();
        assert_eq!(spec.name.chars().count(), 64);
        assert!(spec
            .name
            .ends_with("_for_a_very_long_tool_name_that_goes_on"));
        assert_eq!(
            r.api_name,
            "an_endpoint_with_an_even_longer_name_than_the_tool"
        );
        assert_eq!(
            spec.description,
            "This is the subfunction for tool \"a_very_long_tool_name_that_goes_on\", you can use this tool."
        );
    }
}
