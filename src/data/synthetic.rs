//! The built-in synthetic tool-calling task: a deterministic generator of tools (names and
//! JSON-schema parameters) and user queries with gold calls in ToolBench's ReAct form.
//! Solving it needs what the real task needs: pick the tool from the request, and copy
//! the argument values out of it into valid JSON.

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use super::{Example, GoldCall, ToolSpec};

const CITIES: &[&str] = &[
    "Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Lisbon", "Oslo", "Cairo", "Lima",
    "Seoul", "Delhi", "Boston", "Denver", "Sydney", "Dublin",
];
const CUISINES: &[&str] = &[
    "thai", "italian", "indian", "mexican", "french", "korean", "greek",
];
const CURRENCIES: &[&str] = &["USD", "EUR", "JPY", "GBP", "CHF", "INR"];
const SYMBOLS: &[&str] = &[
    "AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "IBM", "INTC", "ORCL",
];
const NAMES: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];
const TOPICS: &[&str] = &["lunch", "budget", "report", "holiday", "meeting", "launch"];
const LANGS: &[&str] = &["french", "german", "spanish", "japanese", "italian"];
const PHRASES: &[&str] = &[
    "good morning",
    "thank you",
    "see you soon",
    "where is the station",
];
const UNITS: &[&str] = &["celsius", "fahrenheit"];

struct ToolDef {
    name: &'static str,
    description: &'static str,
    /// (name, type, required)
    params: &'static [(&'static str, &'static str, bool)],
}

const TOOLS: &[ToolDef] = &[
    ToolDef {
        name: "get_weather",
        description: "current weather for a city",
        params: &[("city", "string", true), ("unit", "string", false)],
    },
    ToolDef {
        name: "book_flight",
        description: "book a flight between two cities",
        params: &[
            ("origin", "string", true),
            ("destination", "string", true),
            ("day", "integer", true),
        ],
    },
    ToolDef {
        name: "convert_currency",
        description: "convert an amount between currencies",
        params: &[
            ("amount", "integer", true),
            ("from", "string", true),
            ("to", "string", true),
        ],
    },
    ToolDef {
        name: "set_alarm",
        description: "set an alarm",
        params: &[("hour", "integer", true), ("minute", "integer", true)],
    },
    ToolDef {
        name: "find_restaurant",
        description: "find restaurants by cuisine in a city",
        params: &[("cuisine", "string", true), ("city", "string", true)],
    },
    ToolDef {
        name: "get_stock_price",
        description: "latest price of a stock",
        params: &[("symbol", "string", true)],
    },
    ToolDef {
        name: "send_email",
        description: "send an email",
        params: &[("to", "string", true), ("subject", "string", true)],
    },
    ToolDef {
        name: "translate",
        description: "translate a phrase",
        params: &[("text", "string", true), ("language", "string", true)],
    },
];

fn spec(t: &ToolDef) -> ToolSpec {
    let mut props = Map::new();
    for (n, ty, _) in t.params {
        props.insert(n.to_string(), json!({ "type": ty }));
    }
    let required: Vec<&str> = t.params.iter().filter(|p| p.2).map(|p| p.0).collect();
    ToolSpec {
        name: t.name.to_string(),
        description: t.description.to_string(),
        parameters: json!({ "type": "object", "properties": props, "required": required }),
    }
}

/// All tools of the synthetic task.
pub fn tools() -> Vec<ToolSpec> {
    TOOLS.iter().map(spec).collect()
}

fn pick<'a>(rng: &mut StdRng, xs: &'a [&'a str]) -> &'a str {
    xs.choose(rng).expect("non-empty")
}

/// One query and its gold arguments for tool `t`.
fn query(rng: &mut StdRng, t: usize) -> (String, Map<String, Value>) {
    let mut a = Map::new();
    let q = match TOOLS[t].name {
        "get_weather" => {
            let city = pick(rng, CITIES);
            a.insert("city".into(), city.into());
            if rng.random_bool(0.5) {
                let unit = pick(rng, UNITS);
                a.insert("unit".into(), unit.into());
                format!("What is the weather in {city} in {unit}?")
            } else {
                let v = ["How warm is it in {} today?", "Weather for {} please."];
                pick(rng, &v).replace("{}", city)
            }
        }
        "book_flight" => {
            let o = pick(rng, CITIES);
            let d = loop {
                let d = pick(rng, CITIES);
                if d != o {
                    break d;
                }
            };
            let day = rng.random_range(1..29);
            a.insert("origin".into(), o.into());
            a.insert("destination".into(), d.into());
            a.insert("day".into(), day.into());
            format!("Book me a flight from {o} to {d} on day {day}.")
        }
        "convert_currency" => {
            let amount = rng.random_range(1..1000);
            let f = pick(rng, CURRENCIES);
            let to = loop {
                let c = pick(rng, CURRENCIES);
                if c != f {
                    break c;
                }
            };
            a.insert("amount".into(), amount.into());
            a.insert("from".into(), f.into());
            a.insert("to".into(), to.into());
            format!("How much is {amount} {f} in {to}?")
        }
        "set_alarm" => {
            let h = rng.random_range(0..24);
            let m = rng.random_range(0..60);
            a.insert("hour".into(), h.into());
            a.insert("minute".into(), m.into());
            format!("Wake me up at {h}:{m:02}.")
        }
        "find_restaurant" => {
            let c = pick(rng, CUISINES);
            let city = pick(rng, CITIES);
            a.insert("cuisine".into(), c.into());
            a.insert("city".into(), city.into());
            format!("Find a {c} restaurant in {city}.")
        }
        "get_stock_price" => {
            let s = pick(rng, SYMBOLS);
            a.insert("symbol".into(), s.into());
            format!("What is {s} trading at?")
        }
        "send_email" => {
            let to = pick(rng, NAMES);
            let s = pick(rng, TOPICS);
            a.insert("to".into(), to.into());
            a.insert("subject".into(), s.into());
            format!("Email {to} about the {s}.")
        }
        "translate" => {
            let p = pick(rng, PHRASES);
            let l = pick(rng, LANGS);
            a.insert("text".into(), p.into());
            a.insert("language".into(), l.into());
            format!("Say \"{p}\" in {l}.")
        }
        other => unreachable!("no generator for {other}"),
    };
    (q, a)
}

/// `n` examples from a generator seeded with `seed`. Each example offers three tools, one
/// of them the right one, in random order.
pub fn generate(n: usize, seed: u64, split: &str) -> Vec<Example> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let t = rng.random_range(0..TOOLS.len());
            let (q, args) = query(&mut rng, t);
            let mut offered: Vec<usize> = (0..TOOLS.len()).filter(|&j| j != t).collect();
            offered.shuffle(&mut rng);
            offered.truncate(2);
            offered.push(t);
            offered.shuffle(&mut rng);
            let name = TOOLS[t].name.to_string();
            let thought = format!("The user wants {}, so I call {name}.", TOOLS[t].description);
            Example {
                id: format!("{split}-{i:05}"),
                category: name.clone(),
                tools: offered.iter().map(|&j| spec(&TOOLS[j])).collect(),
                query: q,
                thought,
                gold: GoldCall {
                    name,
                    arguments: Value::Object(args),
                },
                bfcl: None,
                history: vec![],
                raw: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_well_formed() {
        let a = generate(50, 7, "train");
        let b = generate(50, 7, "train");
        assert_eq!(a, b);
        assert_ne!(a, generate(50, 8, "train"));
        for e in &a {
            assert!(e.tools.iter().any(|t| t.name == e.gold.name));
            let tool = e.tools.iter().find(|t| t.name == e.gold.name).unwrap();
            for r in tool.required() {
                assert!(e.gold.arguments.get(&r).is_some(), "{e:?} misses {r}");
            }
        }
        let cats: std::collections::BTreeSet<_> = a.iter().map(|e| e.category.clone()).collect();
        assert!(cats.len() >= 6);
    }
}
