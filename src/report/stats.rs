//! The statistics reports print: intervals for one pass rate, paired tests between two
//! runs judged on the same examples, multiple-comparison correction, and spread over seeds.
//! Each function is checked in the tests against values computed independently (scipy and
//! statsmodels).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959963984540054;
/// Significance level of the "within noise" verdict (after Holm's correction).
pub const ALPHA: f64 = 0.05;

/// Wilson score interval for `passed` successes out of `n`.
pub fn wilson(passed: usize, n: usize, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = passed as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// The discordant pairs of two runs judged on the same examples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Discordant {
    /// Examples both runs judged.
    pub n: usize,
    /// Passed by the first run only.
    pub only_a: usize,
    /// Passed by the second run only.
    pub only_b: usize,
}

impl Discordant {
    pub fn of(a: &[bool], b: &[bool]) -> Self {
        let mut d = Discordant {
            n: a.len().min(b.len()),
            ..Default::default()
        };
        for (&x, &y) in a.iter().zip(b) {
            match (x, y) {
                (true, false) => d.only_a += 1,
                (false, true) => d.only_b += 1,
                _ => {}
            }
        }
        d
    }
}

/// Exact (binomial) two-sided McNemar test: under the null each discordant pair is a fair
/// coin, so p = 2 P(X <= min(b, c)) with X ~ Binomial(b + c, 1/2), capped at 1. The exact
/// form, not the chi-square one, because sweeps have few discordant pairs.
/// Cohen's kappa of two raters' pass/fail on the same items, from their 2x2 table, with a
/// 95% interval from its large-sample standard error, sqrt(po (1 - po) / (n (1 - pe)^2))
/// (Cohen 1960). None when chance agreement is 1 (both raters constant and equal).
pub fn cohens_kappa(
    both_pass: usize,
    only_a: usize,
    only_b: usize,
    both_fail: usize,
) -> Option<(f64, f64, f64)> {
    let n = (both_pass + only_a + only_b + both_fail) as f64;
    if n == 0.0 {
        return None;
    }
    let po = (both_pass + both_fail) as f64 / n;
    let a_pass = (both_pass + only_a) as f64 / n;
    let b_pass = (both_pass + only_b) as f64 / n;
    let pe = a_pass * b_pass + (1.0 - a_pass) * (1.0 - b_pass);
    if pe >= 1.0 {
        return None;
    }
    let kappa = (po - pe) / (1.0 - pe);
    let se = (po * (1.0 - po) / (n * (1.0 - pe).powi(2))).sqrt();
    Some((
        kappa,
        (kappa - Z95 * se).max(-1.0),
        (kappa + Z95 * se).min(1.0),
    ))
}

/// z of 80% power (the 0.8 quantile of the standard normal).
const Z80: f64 = 0.841_621_233_572_914_3;

/// The minimum detectable effect: the smallest difference in pass rate (0 to 1) from a
/// rate `p` that a two-sided test at α = 0.05 finds with 80% power when each side has `n`
/// examples (normal approximation of two independent proportions; pairing only narrows
/// it, so for paired examples it is conservative). None when no difference would do.
pub fn mde(n: usize, p: f64) -> Option<f64> {
    if n == 0 || !(0.0..=1.0).contains(&p) {
        return None;
    }
    let n = n as f64;
    // Toward the side with room: from 0.2 a gain, from 0.9 a loss.
    let room = p.max(1.0 - p);
    let q = |d: f64| if p <= 0.5 { p + d } else { p - d };
    let needed = |d: f64| (Z95 + Z80) * ((p * (1.0 - p) + q(d) * (1.0 - q(d))) / n).sqrt();
    if needed(room) > room {
        return None;
    }
    let (mut lo, mut hi) = (0.0, room);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if needed(mid) <= mid {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

pub fn mcnemar_exact(only_a: usize, only_b: usize) -> f64 {
    let n = only_a + only_b;
    if n == 0 {
        return 1.0;
    }
    let k = only_a.min(only_b);
    // Sum the binomial pmf in log space: n can be in the thousands.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_c = 0.0f64; // ln C(n, 0)
    let mut tail = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_c + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// Holm's step-down correction: adjusted p-values, in the input order.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let mut out = vec![0.0; m];
    let mut running = 0.0f64;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// A paired bootstrap of the difference in pass rate (b minus a) over the same examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BootstrapDiff {
    pub diff: f64,
    pub low: f64,
    pub high: f64,
}

/// Resamples examples with replacement `iters` times (seeded, so a report is reproducible;
/// parallel over fixed chunks, so the result does not depend on the thread count) and
/// returns the observed difference with its 95% percentile interval.
pub fn paired_bootstrap(a: &[bool], b: &[bool], iters: usize, seed: u64) -> BootstrapDiff {
    let n = a.len().min(b.len());
    // Per example: +1 when only b passes, -1 when only a passes.
    let d: Vec<i32> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| y as i32 - x as i32)
        .collect();
    let diff = if n == 0 {
        0.0
    } else {
        d.iter().sum::<i32>() as f64 / n as f64
    };
    if n == 0 || iters == 0 {
        return BootstrapDiff {
            diff,
            low: diff,
            high: diff,
        };
    }
    const CHUNK: usize = 256;
    let chunks = iters.div_ceil(CHUNK);
    let mut samples: Vec<f64> = (0..chunks)
        .into_par_iter()
        .flat_map_iter(|c| {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let len = CHUNK.min(iters - c * CHUNK);
            let d = &d;
            (0..len)
                .map(move |_| {
                    let s: i64 = (0..n).map(|_| d[rng.random_range(0..n)] as i64).sum();
                    s as f64 / n as f64
                })
                .collect::<Vec<_>>()
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    BootstrapDiff {
        diff,
        low: quantile_sorted(&samples, 0.025),
        high: quantile_sorted(&samples, 0.975),
    }
}

/// Linear-interpolated quantile (numpy's default) of sorted values.
pub fn quantile_sorted(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let pos = q * (xs.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    xs[lo] + (xs[hi] - xs[lo]) * (pos - lo as f64)
}

/// Mean, sample standard deviation and 95% t-interval of the mean (over seeds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub n: usize,
    pub mean: f64,
    /// None with a single value.
    pub sd: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

pub fn spread(xs: &[f64]) -> Option<Spread> {
    let n = xs.len();
    if n == 0 {
        return None;
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Some(Spread {
            n,
            mean,
            sd: None,
            low: None,
            high: None,
        });
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let sd = var.sqrt();
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .expect("n > 1 gives positive degrees of freedom")
        .inverse_cdf(0.975);
    let half = t * sd / (n as f64).sqrt();
    Some(Spread {
        n,
        mean,
        sd: Some(sd),
        low: Some(mean - half),
        high: Some(mean + half),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn mde_solves_the_two_proportion_power_equation() {
        // At p = 0.5 and n = 64: d = 2.8016 * sqrt((0.25 + q(1-q)) / 64) with q = 0.5 + d.
        // Its root, 0.23371, put back into the textbook sample size of a two-proportion
        // test, n = (z_a + z_b)^2 (p1 q1 + p2 q2) / (p2 - p1)^2, gives 64.0.
        let d = mde(64, 0.5).unwrap();
        let q = 0.5 + d;
        let rhs = (Z95 + Z80) * ((0.25 + q * (1.0 - q)) / 64.0).sqrt();
        assert!((d - rhs).abs() < 1e-9, "{d} {rhs}");
        assert!((d - 0.233711).abs() < 1e-6, "{d}");
        // More examples detect less; a rate near 0 detects a smaller gain than one at 0.5.
        assert!(mde(1000, 0.5).unwrap() < d);
        assert!(mde(64, 0.05).unwrap() < d);
        // Symmetric in p and 1 - p.
        assert!((mde(64, 0.2).unwrap() - mde(64, 0.8).unwrap()).abs() < 1e-9);
        assert_eq!(mde(0, 0.5), None);
        assert_eq!(mde(1, 0.5), None);
    }

    #[test]
    fn kappa_of_a_known_table() {
        // 20 items: 9 both pass, 1 + 2 discordant, 8 both fail. po = 0.85, pe = 0.5,
        // kappa = 0.7, se = sqrt(0.85 * 0.15 / (20 * 0.25)) = 0.1597.
        let (k, lo, hi) = cohens_kappa(9, 1, 2, 8).unwrap();
        assert!((k - 0.7).abs() < 1e-12, "{k}");
        assert!((lo - (0.7 - Z95 * 0.159687)).abs() < 1e-4, "{lo}");
        // 0.7 + 1.96 * 0.1597 passes 1: the interval is clipped to kappa's range.
        assert_eq!(hi, 1.0);
        // 100 items: 40, 5 + 5, 50. po = 0.9, pe = 0.505, kappa = 0.395 / 0.495,
        // se = sqrt(0.9 * 0.1 / (100 * 0.495^2)) = 0.0606061.
        let (k, lo, hi) = cohens_kappa(40, 5, 5, 50).unwrap();
        assert!((k - 0.395 / 0.495).abs() < 1e-12, "{k}");
        assert!((lo - (k - Z95 * 0.0606061)).abs() < 1e-6, "{lo}");
        assert!((hi - (k + Z95 * 0.0606061)).abs() < 1e-6, "{hi}");
        assert_eq!(cohens_kappa(5, 0, 0, 0), None);
    }

    #[test]
    fn wilson_matches_statsmodels() {
        // statsmodels proportion_confint(k, n, alpha=0.05, method="wilson"); the first two
        // are also Newcombe (1998), table I.
        for (k, n, lo, hi) in [
            (81, 263, 0.255288519878, 0.366209576983),
            (15, 148, 0.062386399531, 0.160487241723),
            (0, 10, 0.0, 0.277532799863),
            (10, 10, 0.722467200137, 1.0),
            (20, 64, 0.212310665395, 0.433923357027),
        ] {
            let (l, h) = wilson(k, n, Z95);
            assert!(close(l, lo, 1e-9) && close(h, hi, 1e-9), "{k}/{n}: {l} {h}");
        }
    }

    #[test]
    fn mcnemar_matches_statsmodels_exact() {
        // statsmodels mcnemar([[5, b], [c, 5]], exact=True).pvalue
        for (b, c, p) in [
            (1, 6, 0.125),
            (10, 3, 0.09228515625),
            (0, 0, 1.0),
            (150, 86, 3.71593613957139e-05),
            (25, 5, 0.000324914231896401),
            (7, 7, 1.0),
            (0, 12, 0.00048828125),
        ] {
            let got = mcnemar_exact(b, c);
            assert!(close(got, p, 1e-12 + 1e-9 * p), "b={b} c={c}: {got} vs {p}");
            assert_eq!(got, mcnemar_exact(c, b), "symmetric");
        }
    }

    #[test]
    fn holm_matches_statsmodels() {
        // statsmodels multipletests(p, method="holm")[1]
        let got = holm(&[0.01, 0.04, 0.03, 0.005]);
        for (g, want) in got.iter().zip([0.03, 0.06, 0.06, 0.02]) {
            assert!(close(*g, want, 1e-12), "{got:?}");
        }
        let got = holm(&[0.5, 0.2, 0.01]);
        for (g, want) in got.iter().zip([0.5, 0.4, 0.03]) {
            assert!(close(*g, want, 1e-12), "{got:?}");
        }
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn t_interval_matches_scipy() {
        // numpy mean / std(ddof=1), scipy.stats.t.interval(0.95, n-1, loc, scale=sd/sqrt(n))
        for (xs, m, sd, lo, hi) in [
            (
                vec![0.31, 0.29, 0.35],
                0.316666666667,
                0.030550504633,
                0.240775005995,
                0.392558327339,
            ),
            (
                vec![0.5, 0.6],
                0.55,
                0.070710678119,
                -0.085310236809,
                1.185310236809,
            ),
            (
                vec![0.2, 0.25, 0.22, 0.27, 0.3],
                0.248,
                0.039623225512,
                0.198801267389,
                0.297198732611,
            ),
        ] {
            let s = spread(&xs).unwrap();
            assert!(close(s.mean, m, 1e-9));
            assert!(close(s.sd.unwrap(), sd, 1e-9));
            assert!(close(s.low.unwrap(), lo, 1e-8), "{s:?}");
            assert!(close(s.high.unwrap(), hi, 1e-8), "{s:?}");
        }
        let one = spread(&[0.4]).unwrap();
        assert_eq!((one.mean, one.sd, one.low), (0.4, None, None));
        assert!(spread(&[]).is_none());
    }

    #[test]
    fn paired_bootstrap_is_seeded_and_covers_the_difference() {
        // 40 examples: b passes 12 more than a (8 only-a, 20 only-b).
        let a: Vec<bool> = (0..40).map(|i| i < 8).collect();
        let b: Vec<bool> = (0..40).map(|i| (8..28).contains(&i)).collect();
        let r = paired_bootstrap(&a, &b, 2000, 7);
        assert!(close(r.diff, 0.3, 1e-12));
        assert!(r.low < 0.3 && 0.3 < r.high, "{r:?}");
        // The normal approximation of the paired difference gives about ±0.25 here.
        assert!(r.low > 0.0 && r.high < 0.6, "{r:?}");
        assert_eq!(
            r,
            paired_bootstrap(&a, &b, 2000, 7),
            "same seed, same interval"
        );
        // Identical runs: no spread at all.
        let same = paired_bootstrap(&a, &a, 500, 1);
        assert_eq!((same.diff, same.low, same.high), (0.0, 0.0, 0.0));
    }

    #[test]
    fn discordant_counts() {
        let d = Discordant::of(&[true, true, false, false], &[true, false, true, true]);
        assert_eq!(
            d,
            Discordant {
                n: 4,
                only_a: 1,
                only_b: 2
            }
        );
    }
}
