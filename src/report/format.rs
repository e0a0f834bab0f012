//! How numbers read in reports, `ablate compare` and CSV: one definition each, registered
//! as template filters and called by the text printers. `None` reads as `-`.

use serde_json::Value;

/// A rate as a percentage with one decimal: `31.2%`.
pub fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.1}%", 100.0 * x))
}

/// A number with `digits` decimals (4 by default).
pub fn num(v: Option<f64>, digits: Option<usize>) -> String {
    v.map_or("-".into(), |x| format!("{:.*}", digits.unwrap_or(4), x))
}

/// A difference of rates in signed points: `+29.7`.
pub fn signed_pts(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:+.1}", 100.0 * x))
}

/// A p-value with three decimals, or `< 0.001`.
pub fn pvalue(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(p) if p < 0.001 => "< 0.001".into(),
        Some(p) => format!("{p:.3}"),
    }
}

/// A count with an SI suffix: `495.4k`, `3.4M`, `1.32B`.
pub fn si(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x >= 1e9 => format!("{:.2}B", x / 1e9),
        Some(x) if x >= 1e6 => format!("{:.1}M", x / 1e6),
        Some(x) if x >= 1e3 => format!("{:.1}k", x / 1e3),
        Some(x) => format!("{x:.0}"),
    }
}

/// A duration as a person reads a wait: `45s`, `3m 20s`, `2h 05m`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A JSON value as a CSV cell: empty for null, strings without quotes.
pub fn csv_cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_waits() {
        assert_eq!(duration(0.4), "0s");
        assert_eq!(duration(59.4), "59s");
        assert_eq!(duration(200.0), "3m 20s");
        assert_eq!(duration(7500.0), "2h 05m");
        assert_eq!(duration(-3.0), "0s");
    }
}
