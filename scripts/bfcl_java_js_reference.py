#!/usr/bin/env python3
"""Reference verdicts of BFCL's own checker for its Java and JavaScript categories.

Writes tests/fixtures/bfcl/<category>.jsonl (one prediction a line with BFCL's verdict
on it: id, kind, calls, valid, error_type, error), the fixture that tests/it/bfcl.rs
scores with ablate's port and compares verdict by verdict,
and converters.jsonl: BFCL's converters on literals chosen to hit their corners.
Run it through scripts/bfcl-reference.sh, which fetches bfcl-eval 2026.3.23 (the version
the port follows) into a virtual environment outside the project; nothing here is needed
at test time.

Every question gets one prediction of each kind (the kind is only the intent; BFCL
decides the outcome):

  a_exact        the possible answer, every argument written as the literal BFCL's
                 converter reads back (Java `new ArrayList<>(Arrays.asList(...))`,
                 `5L`, JS `[...]`, `{...}`, ...)
  b_alt_syntax   the same values in other literal forms (ArrayList `{{ add(..); }}`,
                 HashMap spacing, `new Array(...)`, single quotes, `5l`, `0.5F`)
  c_untyped      the first argument as a JSON value instead of a source string
  d_wrong_value  the first argument's value changed
  e_wrong_name   the function name changed
  f_missing      the first required parameter left out
  g_quoted       every String/any argument written with double quotes around it
"""

import argparse
import json
import sys
import types
from pathlib import Path

KINDS = [
    "a_exact",
    "b_alt_syntax",
    "c_untyped",
    "d_wrong_value",
    "e_wrong_name",
    "f_missing",
    "g_quoted",
]


def stub_model_config():
    # ast_checker imports the model table only to map "." to "_" in names for some
    # hosted models; the file runner passes a model name, and ours keeps names as is.
    mod = types.ModuleType("bfcl_eval.constants.model_config")

    class Cfg:
        underscore_to_dot = False

    class Table(dict):
        def __getitem__(self, key):
            return Cfg()

    mod.MODEL_CONFIG_MAPPING = Table()
    sys.modules["bfcl_eval.constants.model_config"] = mod


def concrete(v):
    """An allowed value made concrete: dicts take each key's first value."""
    if isinstance(v, dict):
        out = {}
        for k, allowed in v.items():
            if "" in allowed:
                continue
            out[k] = concrete(allowed[0])
        return out
    if isinstance(v, list):
        return [concrete(x) for x in v]
    return v


def gold_args(params, doc):
    required = set(doc["parameters"].get("required", []))
    args = {}
    for k, allowed in params.items():
        if "" in allowed and k not in required:
            continue
        first = next((a for a in allowed if a != ""), None)
        if first is None:
            continue
        args[k] = concrete(first)
    return args


def pyfloat(x):
    r = repr(float(x))
    return r


def plainfloat(x):
    r = repr(float(x))
    if "e" in r or "E" in r:
        r = format(float(x), "f").rstrip("0")
        if r.endswith("."):
            r += "0"
    return r


JAVA_ELEMENT = {
    "String": "String",
    "integer": "int",
    "long": "long",
    "char": "char",
    "any": "Object",
    "boolean": "boolean",
    "double": "double",
    "float": "float",
}


def java_scalar(v, ty, alt=False):
    if isinstance(v, bool):
        return "true" if v else "false"
    if ty == "long" and isinstance(v, int):
        return f"{v}{'l' if alt else 'L'}"
    if ty == "float" and isinstance(v, (int, float)):
        return f"{pyfloat(v)}{'F' if alt else 'f'}"
    if ty == "double" and isinstance(v, (int, float)):
        return pyfloat(v)
    return str(v)


def java_value(v):
    """A literal as parse_java_value reads it (HashMap values)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, float):
        return pyfloat(v)
    return str(v)


def java_lit(v, ty, items, alt=False):
    if ty == "Array" and isinstance(v, list):
        t = JAVA_ELEMENT.get(items, "Object")
        body = ", ".join(java_scalar(e, items, alt) for e in v)
        return f"new {t}[] {{ {body} }}" if alt else f"new {t}[]{{{body}}}"
    if ty == "ArrayList" and isinstance(v, list):
        def el(e):
            if items in ("String", "char"):
                return f'"{e}"' if items == "String" else f"'{e}'"
            return java_scalar(e, items, alt)

        if not v:
            return "new ArrayList<>()"
        if alt:
            adds = " ".join(f"add({el(e)});" for e in v)
            return f"new ArrayList<{JAVA_ELEMENT.get(items, 'Object')}>() {{{{ {adds} }}}}"
        return f"new ArrayList<>(Arrays.asList({', '.join(el(e) for e in v)}))"
    if ty == "HashMap" and isinstance(v, dict):
        puts = " ".join(f'put("{k}", {java_value(x)});' for k, x in v.items())
        if alt:
            return f"new HashMap<>() {{{{{puts}}}}}"
        return f"new HashMap<String, Object>() {{{{ {puts} }}}}"
    return java_scalar(v, ty, alt)


def js_value(v, alt=False):
    """A literal as parse_js_value / the dict parser read it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f"'{v}'" if alt else f'"{v}"'
    if isinstance(v, float):
        return plainfloat(v)
    if isinstance(v, list):
        return "[" + ", ".join(js_value(e, alt) for e in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}": {js_value(x, alt)}' for k, x in v.items()) + "}"
    return str(v)


def js_lit(v, ty, items, alt=False):
    if ty == "String" and isinstance(v, str):
        return f"'{v}'" if alt else f'"{v}"'
    if ty == "Bigint" and isinstance(v, int):
        return f"{v}n"
    if ty == "float" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(int(v)) if alt and float(v).is_integer() else plainfloat(v)
    if ty == "array" and isinstance(v, list):
        body = ", ".join(js_lit(e, items, None, alt) if items != "any" else str(e) for e in v)
        return f"new Array({body})" if alt else f"[{body}]"
    if ty == "dict" and isinstance(v, dict):
        return js_value(v, alt)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def wrong(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 7
    if isinstance(v, str):
        return v + "_wrong"
    if isinstance(v, list):
        return v + (v[:1] if v else ["extra"])
    if isinstance(v, dict):
        return {**v, "unexpected_key": "x"}
    return v


def predictions(question, answer, java):
    lit = java_lit if java else js_lit
    calls = {k: [] for k in KINDS}
    for g in answer["ground_truth"]:
        name, params = next(iter(g.items()))
        doc = next(d for d in question["function"] if d["name"] == name)
        props = doc["parameters"]["properties"]
        required = doc["parameters"].get("required", [])
        args = gold_args(params, doc)

        def write(values, alt=False, quoted=False):
            out = {}
            for k, v in values.items():
                ty = props[k]["type"]
                items = props[k].get("items", {}).get("type")
                s = lit(v, ty, items, alt)
                if quoted and ty in ("String", "any"):
                    s = f'"{s}"' if not (s.startswith('"') and s.endswith('"')) else s
                out[k] = s
            return out

        first = next(iter(args), None)
        calls["a_exact"].append({"name": name, "arguments": write(args)})
        calls["b_alt_syntax"].append({"name": name, "arguments": write(args, alt=True)})
        untyped = write(args)
        if first is not None:
            untyped[first] = args[first] if not isinstance(args[first], str) else [args[first]]
        calls["c_untyped"].append({"name": name, "arguments": untyped})
        changed = dict(args)
        if first is not None:
            changed[first] = wrong(args[first])
        calls["d_wrong_value"].append({"name": name, "arguments": write(changed)})
        calls["e_wrong_name"].append({"name": name + "_v2", "arguments": write(args)})
        missing = write(args)
        if required:
            missing.pop(required[0], None)
        calls["f_missing"].append({"name": name, "arguments": missing})
        calls["g_quoted"].append({"name": name, "arguments": write(args, quoted=True)})
    return calls


# Literals for the converters alone: odd spacing, final newlines, quotes, nesting.
JAVA_CASES = [
    ("5", "integer", None), ("5\n", "integer", None), (" 5", "integer", None), ("+5", "integer", None),
    ("5.0", "integer", None), ("1_000", "integer", None), ("-0", "short", None),
    ("2.5f", "float", None), ("2.5F\n", "float", None), ("2f", "float", None), ("2.5", "float", None),
    ("1e3", "double", None), ("1.5e-3", "double", None), ("1.5d", "double", None), (".5", "double", None),
    ("7L", "long", None), ("7l\n", "long", None), ("7", "long", None),
    ("true", "boolean", None), ("TRUE", "boolean", None), ("true\n", "boolean", None),
    ("'a'", "char", None), ("a", "char", None), ('"quoted"', "String", None), ("x", "any", None),
    ("new int[]{1, 2}", "Array", "integer"), ("new int[] { 1 , 2 , }", "Array", "integer"),
    ("new String[]{a, b}", "Array", "String"), ('new String[]{"a", "b"}', "Array", "String"),
    ("new long[]{1L, 2}", "Array", "long"), ("int[]{1}", "Array", "integer"),
    ("prefix new int[]{3} suffix", "Array", "integer"), ("new Object[]{1, \"a\", 2.5, 3L, 4f, true}", "Array", None),
    ('new ArrayList<>(Arrays.asList("a", "b"))', "ArrayList", "String"),
    ("new ArrayList<Integer>(Arrays.asList(1, 2))", "ArrayList", "integer"),
    ("new ArrayList<Long>(Arrays.asList(1L, 2L))", "ArrayList", "long"),
    ("new ArrayList<>(Arrays.asList('a', 'b'))", "ArrayList", "char"),
    ('new ArrayList<>(Arrays.asList(1, "b", true))', "ArrayList", "any"),
    ('new ArrayList<String>() {{ add("a"); add("b"); }}', "ArrayList", "String"),
    ('new ArrayList<String>() {{\n add("a");\n add("b");\n}}', "ArrayList", "String"),
    ("new ArrayList<>()", "ArrayList", "String"), ("Arrays.asList(1)", "ArrayList", "integer"),
    ('new HashMap<String, Object>() {{ put("a", 1); put("b", "x"); put("c", true); put("d", 2.5); put("e", 3L); }}', "HashMap", None),
    ('new HashMap<>() {{\n put("a", 1);\n}}', "HashMap", None), ("new HashMap<>()", "HashMap", None),
    ('new HashMap<String, String>() { { put("k", "v"); } }', "HashMap", None),
    ('new HashMap<String, Integer>() {{ put("k", 1_0); put("k", 2); }}', "HashMap", None),
    ("Map.of()", "HashMap", None), ("x", "Set", None), ("x", "Hashtable", None), ("x", "Queue", None),
    ("x", "Vector", None),
]

JS_CASES = [
    ("5", "integer", None), ("5\n", "integer", None), ("5.5", "integer", None), ("-5", "integer", None),
    ("2.5", "float", None), ("2", "float", None), ("1e3", "float", None), ("2.5\n", "float", None),
    ("5n", "Bigint", None), ("5", "Bigint", None), ("5n\n", "Bigint", None),
    ("true", "Boolean", None), ("True", "Boolean", None),
    ('"a"', "String", None), ("'a'", "String", None), ("a", "String", None), ('"', "String", None),
    ("x", "any", None), ("'x'", "any", None),
    ("[1, 2]", "array", "integer"), ("[1, 2.5]", "array", "float"), ('["a", \'b\']', "array", "String"),
    ("[a, b]", "array", "String"), ("new Array(1, 2)", "array", "integer"), ("[]", "array", "String"),
    ("  [ 1 ,2 ] ", "array", "integer"), ("[1, 'two', true]", "array", None), ("[[1, 2], [3]]", "array", "array"),
    ("new Array([1], [2, 'x'])", "array", "array"), ("[1, 2] tail", "array", "integer"), ("Array.of(1)", "array", "integer"),
    ('["a,b", "c"]', "array", "String"), ("[1n, 2n]", "array", "Bigint"), ("[1, x]", "array", "Set"),
    ("{}", "dict", None), ("{'a': 1, 'b': 'x', 'c': true}", "dict", None), ('{"a": [1, 2], "b": {"c": 1}}', "dict", None),
    ("{a: 1, b: two}", "dict", None), ("{ 'k' : 'v' }", "dict", None), ("{'a': 1} tail", "dict", None),
    ("{'a': '1.5'}", "dict", None), ("notadict", "dict", None), ("{'a': 1,\n 'b': 2}", "dict", None),
    ("x", "Symbol", None),
]


def converter_cases():
    from bfcl_eval.eval_checker.ast_eval.type_convertor.java_type_converter import java_type_converter
    from bfcl_eval.eval_checker.ast_eval.type_convertor.js_type_converter import js_type_converter

    out = []
    for lang, fn, cases in [("java", java_type_converter, JAVA_CASES), ("javascript", js_type_converter, JS_CASES)]:
        for value, ty, nested in cases:
            row = {"lang": lang, "value": value, "type": ty, "nested": nested}
            try:
                row["result"] = fn(value, ty, nested) if nested else fn(value, ty)
            except Exception as e:
                row["raised"] = f"{type(e).__name__}: {e}"
            out.append(row)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="../shared/data/bfcl")
    p.add_argument("--out", required=True, help="tests/fixtures/bfcl")
    a = p.parse_args()
    stub_model_config()
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    import bfcl_eval

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for cat in ["simple_java", "simple_javascript"]:
        java = cat == "simple_java"
        qs = [json.loads(l) for l in open(Path(a.data) / f"BFCL_v4_{cat}.json")]
        ans = [
            json.loads(l)
            for l in open(Path(a.data) / "possible_answer" / f"BFCL_v4_{cat}.json")
        ]
        assert len(qs) == len(ans)
        language = Language.JAVA if java else Language.JAVASCRIPT
        lines = []
        for kind in KINDS:
            for q, an in zip(qs, ans):
                calls = predictions(q, an, java)[kind]
                model_output = [{c["name"]: c["arguments"]} for c in calls]
                try:
                    r = ast_checker(
                        q["function"], model_output, an["ground_truth"], language, cat, "ablate"
                    )
                    valid, etype = r["valid"], r.get("error_type", "") if not r["valid"] else ""
                    err = "" if r["valid"] else str(r["error"][0])[:100]
                except Exception as e:  # BFCL raises (unknown type, NotImplemented)
                    valid, etype, err = False, f"exception:{type(e).__name__}", str(e)[:100]
                lines.append(
                    {"id": q["id"], "kind": kind, "calls": calls, "valid": valid,
                     "error_type": etype, "error": err}
                )
        with open(out / f"{cat}.jsonl", "w") as f:
            for l in lines:
                f.write(json.dumps(l, ensure_ascii=False) + "\n")
        for kind in KINDS:
            vs = [v for v in lines if v["kind"] == kind]
            ok = sum(v["valid"] for v in vs)
            print(f"{cat:18} {kind:14} {ok:3}/{len(vs)} valid", file=sys.stderr)
    with open(out / "converters.jsonl", "w") as f:
        for row in converter_cases():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"bfcl-eval {getattr(bfcl_eval, '__version__', '2026.3.23')}", file=sys.stderr)


if __name__ == "__main__":
    main()
