//! The hybrid what-if: a small model answers every query, and a router hands some of them
//! to a large model. The router reads only what a deployment has at inference time (the
//! small model's own signals: no call it could read, a function it was not offered, a
//! give-up, no answer, and its mean token log-probability), never a gold verdict. The
//! oracle (route exactly what the small model fails) is shown apart, as an upper bound.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{load_run, resolve_run, Loaded};
use crate::config::HybridSpec;
use crate::eval::signals::Signals;
use crate::eval::PredictionKind;
use crate::report::ReportError;
use crate::store::Store;

/// Quantiles of the small model's log-probabilities tried as routing thresholds.
const QUANTILES: [f64; 5] = [0.1, 0.25, 0.5, 0.75, 0.9];

#[derive(Debug, Clone, Serialize)]
pub struct HybridRow {
    pub run_id: String,
    pub group: String,
    /// The large model: a run id, or `configured` for a configured pass rate.
    pub large: String,
    /// Examples both models answered (all of the small model's with a configured rate).
    pub n: usize,
    pub small_rate: f64,
    pub large_rate: f64,
    pub large_cost: f64,
    /// Examples whose predictions carry signals (older generations stored none).
    pub signalled: usize,
    /// Routing on the signals alone.
    pub router: RoutePoint,
    /// Routing on the signals or a mean log-probability under each threshold.
    pub curve: Vec<RoutePoint>,
    pub signals: Vec<SignalRow>,
    /// Routing exactly what the small model fails: not a router, an upper bound.
    pub oracle: RoutePoint,
}

/// One routing rule's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutePoint {
    /// The log-probability threshold (None: signals only, or the oracle).
    pub threshold: Option<f64>,
    /// Share of queries sent to the large model.
    pub routed: f64,
    /// Share of the routed queries that the small model failed; None when none routed.
    pub precision: Option<f64>,
    pub hybrid_rate: f64,
    /// Cost per query.
    pub cost: f64,
}

/// How well one signal catches the small model's failures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalRow {
    pub name: &'static str,
    /// Examples it fired on, and of those the ones the small model failed.
    pub fired: usize,
    pub caught: usize,
    /// caught / fired, and caught / all failures; None when undefined.
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

/// What is known of one example: the small model's verdict and signals, and what the large
/// model scores on it (1 or 0, or a configured expected rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Example {
    pub small: bool,
    pub signals: Option<Signals>,
    pub mean_logprob: Option<f64>,
    pub large: f64,
}

/// The router's curve, the signals' precision and the oracle over examples.
pub fn route(examples: &[Example], costs: (f64, f64)) -> (Vec<RoutePoint>, Vec<SignalRow>) {
    let point = |threshold: Option<f64>, send: &dyn Fn(&Example) -> bool| {
        let n = examples.len().max(1) as f64;
        let (mut routed, mut failed, mut score) = (0usize, 0usize, 0.0);
        for e in examples {
            if send(e) {
                routed += 1;
                failed += !e.small as usize;
                score += e.large;
            } else {
                score += e.small as u8 as f64;
            }
        }
        RoutePoint {
            threshold,
            routed: routed as f64 / n,
            precision: (routed > 0).then(|| failed as f64 / routed as f64),
            hybrid_rate: score / n,
            cost: costs.0 + routed as f64 / n * costs.1,
        }
    };
    let fires = |e: &Example| e.signals.is_some_and(|s| s.any());
    let mut curve = vec![point(None, &fires)];
    let mut lps: Vec<f64> = examples.iter().filter_map(|e| e.mean_logprob).collect();
    lps.sort_by(f64::total_cmp);
    let mut thresholds: Vec<f64> = QUANTILES
        .iter()
        .filter_map(|q| lps.get(((lps.len() as f64 - 1.0) * q).round() as usize))
        .copied()
        .collect();
    thresholds.dedup();
    for t in thresholds {
        // Strictly under: the threshold is an observed value, and at the 10% quantile
        // of few examples "at or under" would route the lowest for every threshold alike.
        curve.push(point(Some(t), &|e| {
            fires(e) || e.mean_logprob.is_some_and(|lp| lp < t)
        }));
    }

    let failures = examples.iter().filter(|e| !e.small).count();
    let names = Signals::default().named().map(|(name, _)| name);
    let mut signals: Vec<SignalRow> = names
        .iter()
        .enumerate()
        .map(|(i, &name)| signal_row(name, examples, failures, |s| s.named()[i].1))
        .collect();
    signals.push(signal_row("any", examples, failures, |s| s.any()));
    (curve, signals)
}

fn signal_row(
    name: &'static str,
    examples: &[Example],
    failures: usize,
    fired: impl Fn(&Signals) -> bool,
) -> SignalRow {
    let on: Vec<&Example> = examples
        .iter()
        .filter(|e| e.signals.as_ref().is_some_and(&fired))
        .collect();
    let caught = on.iter().filter(|e| !e.small).count();
    SignalRow {
        name,
        fired: on.len(),
        caught,
        precision: (!on.is_empty()).then(|| caught as f64 / on.len() as f64),
        recall: (failures > 0).then(|| caught as f64 / failures as f64),
    }
}

/// The oracle: route exactly the small model's failures.
fn oracle(examples: &[Example], costs: (f64, f64)) -> RoutePoint {
    let n = examples.len().max(1) as f64;
    let fails: Vec<&Example> = examples.iter().filter(|e| !e.small).collect();
    let passes = (examples.len() - fails.len()) as f64;
    RoutePoint {
        threshold: None,
        routed: fails.len() as f64 / n,
        precision: (!fails.is_empty()).then_some(1.0),
        hybrid_rate: (passes + fails.iter().map(|e| e.large).sum::<f64>()) / n,
        cost: costs.0 + fails.len() as f64 / n * costs.1,
    }
}

/// What a router sees of one example: the small model's signals and mean log-probability.
type Seen = (Option<Signals>, Option<f64>);

/// The signals and confidence stored with a run's predictions, by (dataset, example id);
/// an episode's stand before a step's of the same id, as the episode is what was judged.
fn stored_signals(
    store: &Store,
    run_id: &str,
) -> Result<BTreeMap<(String, String), Seen>, ReportError> {
    let mut out = BTreeMap::new();
    let Some(generation) = store.run_generation(run_id)? else {
        return Ok(out);
    };
    // `predictions` orders by kind: episodes come first and are kept.
    for p in store.predictions(&generation)? {
        let key = (p.dataset.clone(), p.example_id.clone());
        if out.contains_key(&key) {
            continue;
        }
        let Some(detail) = p.detail.as_ref() else {
            out.insert(key, (None, None));
            continue;
        };
        let lp = detail["mean_logprob"].as_f64();
        let signals = match p.kind {
            PredictionKind::Episode => Some(crate::toolenv::episode_signals(detail)),
            PredictionKind::Step if detail["ending"] == "context_overflow" => Some(Signals {
                no_finish: true,
                ..Signals::default()
            }),
            PredictionKind::Step => serde_json::from_value(detail["signals"].clone()).ok(),
        };
        out.insert(key, (signals, lp));
    }
    Ok(out)
}

/// The large model for each small run (a configured run or rate, else the sweep's run with
/// the most parameters among those with the same non-model axis values), and the router's
/// what-if for each.
pub(super) fn hybrid(
    store: &Store,
    runs: &[Loaded],
    spec: &HybridSpec,
) -> Result<Vec<HybridRow>, ReportError> {
    let configured_run = match &spec.large_run {
        Some(prefix) => {
            let id = resolve_run(store, prefix)?;
            Some(load_run(store, &id, &[], "{}", false)?)
        }
        None => None,
    };
    let key_without_model = |r: &Loaded| {
        r.row
            .axes
            .iter()
            .filter(|(k, _)| *k != "model.name")
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let has_model_axis = runs.iter().any(|r| r.row.axes.contains_key("model.name"));
    // An endpoint's model (an LLM behind an API) ranks above every local one: its size is
    // not known here, and it is what a small model would hand queries to.
    let rank = |r: &Loaded| {
        let endpoint = r
            .row
            .axes
            .get("model.name")
            .and_then(|v| v.as_str())
            .is_some_and(|n| n.starts_with(crate::config::ENDPOINT_PREFIX));
        (endpoint, r.row.params)
    };
    let costs = (spec.small_cost, spec.large_cost);
    let mut out = Vec::new();
    for small in runs {
        if small.row.status != "done" {
            continue;
        }
        let sv = small.primary();
        if sv.is_empty() {
            continue;
        }
        let signals = stored_signals(store, &small.row.run_id)?;
        let known = |k: &(&str, &str)| signals.get(&(k.0.to_string(), k.1.to_string()));
        let example = |k: &(&str, &str), small: bool, large: f64| {
            let (signals, mean_logprob) = known(k).copied().unwrap_or((None, None));
            Example {
                small,
                signals,
                mean_logprob,
                large,
            }
        };
        let (large, examples) = if let Some(rate) = spec.large_pass_rate {
            // The configured rate is the large model's on what the small one fails; on
            // what the small one passes, the large one is taken to pass too.
            let ex = sv
                .iter()
                .map(|(k, &p)| example(k, p, if p { 1.0 } else { rate }))
                .collect::<Vec<_>>();
            ("configured".to_string(), ex)
        } else {
            let large = match &configured_run {
                Some(l) => Some(l),
                None if has_model_axis => runs
                    .iter()
                    .filter(|l| {
                        l.row.status == "done" && key_without_model(l) == key_without_model(small)
                    })
                    .max_by(|a, b| rank(a).partial_cmp(&rank(b)).unwrap()),
                None => None,
            };
            let Some(large) = large else { continue };
            if large.row.run_id == small.row.run_id
                || (configured_run.is_none() && rank(large) <= rank(small))
            {
                continue;
            }
            let lv = large.primary();
            // Only examples both judged: the what-if is about the same queries.
            let ex = sv
                .iter()
                .filter_map(|(k, &p)| lv.get(k).map(|&l| example(k, p, l as u8 as f64)))
                .collect::<Vec<_>>();
            (large.row.run_id.clone(), ex)
        };
        if examples.is_empty() {
            continue;
        }
        let n = examples.len();
        let (mut curve, signals) = route(&examples, costs);
        out.push(HybridRow {
            run_id: small.row.run_id.clone(),
            group: small.row.group.clone(),
            large,
            n,
            small_rate: examples.iter().filter(|e| e.small).count() as f64 / n as f64,
            large_rate: examples.iter().map(|e| e.large).sum::<f64>() / n as f64,
            large_cost: spec.large_cost,
            signalled: examples.iter().filter(|e| e.signals.is_some()).count(),
            router: curve.remove(0),
            curve,
            signals,
            oracle: oracle(&examples, costs),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(small: bool, s: Signals, lp: f64, large: bool) -> Example {
        Example {
            small,
            signals: Some(s),
            mean_logprob: Some(lp),
            large: large as u8 as f64,
        }
    }

    #[test]
    fn the_router_reads_signals_and_confidence_never_the_verdict() {
        let none = Signals::default();
        let fmt = Signals {
            format: true,
            ..none
        };
        let halluc = Signals {
            hallucinated: true,
            ..none
        };
        // Ten examples: the small model fails 4 (two of them signalled), and one signal
        // fires on a pass. Log-probabilities -0.1 .. -1.0; the failures without a signal
        // are the least confident.
        let examples = vec![
            ex(true, none, -0.1, true),
            ex(true, none, -0.2, true),
            ex(true, fmt, -0.3, false), // a false alarm
            ex(true, none, -0.4, true),
            ex(false, fmt, -0.5, true),
            ex(true, none, -0.6, false),
            ex(false, halluc, -0.7, false),
            ex(true, none, -0.8, true),
            ex(false, none, -0.9, true),
            ex(false, none, -1.0, true),
        ];
        let (curve, signals) = route(&examples, (1.0, 10.0));
        // Signals only: routes #2, #4, #6. Kept with the small model: #0 #1 #3 #5 #7
        // pass, #8 #9 fail; routed, the large model passes #4 only: 6 of 10.
        let r = &curve[0];
        assert_eq!(r.threshold, None);
        assert!((r.routed - 0.3).abs() < 1e-12);
        assert_eq!(r.precision, Some(2.0 / 3.0));
        assert!((r.hybrid_rate - 0.6).abs() < 1e-12);
        assert!((r.cost - 4.0).abs() < 1e-12);
        // Thresholds are the 10/25/50/75/90% quantiles of the ten values sorted from
        // -1.0: indices round(9q) = 1, 2, 5, 7, 8.
        let ts: Vec<f64> = curve[1..].iter().map(|p| p.threshold.unwrap()).collect();
        assert_eq!(ts, vec![-0.9, -0.8, -0.5, -0.3, -0.2]);
        // Under -0.9: #9 joins; large passes it: 0.7.
        assert!((curve[1].hybrid_rate - 0.7).abs() < 1e-12);
        assert!((curve[1].routed - 0.4).abs() < 1e-12);
        // Under -0.8: #8 too: 0.8, with every failure routed.
        assert!((curve[2].hybrid_rate - 0.8).abs() < 1e-12);
        assert_eq!(curve[2].precision, Some(4.0 / 5.0));
        let by = |n: &str| signals.iter().find(|s| s.name == n).unwrap().clone();
        assert_eq!(
            by("format"),
            SignalRow {
                name: "format",
                fired: 2,
                caught: 1,
                precision: Some(0.5),
                recall: Some(0.25)
            }
        );
        assert_eq!(
            (by("hallucinated").fired, by("hallucinated").caught),
            (1, 1)
        );
        assert_eq!((by("gave_up").fired, by("gave_up").precision), (0, None));
        assert_eq!((by("any").fired, by("any").caught), (3, 2));
        // The oracle routes the four failures and gains what large passes of them.
        let o = oracle(&examples, (1.0, 10.0));
        assert!((o.routed - 0.4).abs() < 1e-12);
        assert!((o.hybrid_rate - 0.9).abs() < 1e-12);
        assert!((o.cost - 5.0).abs() < 1e-12);
    }

    #[test]
    fn examples_without_signals_are_never_routed_by_them() {
        let e = Example {
            small: false,
            signals: None,
            mean_logprob: None,
            large: 1.0,
        };
        let (curve, signals) = route(&[e, e], (1.0, 10.0));
        assert_eq!(curve.len(), 1);
        assert_eq!(curve[0].routed, 0.0);
        assert_eq!(curve[0].hybrid_rate, 0.0);
        assert!(signals.iter().all(|s| s.fired == 0));
    }
}
