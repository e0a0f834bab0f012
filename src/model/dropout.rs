//! Residual dropout as transformers' `OPTDecoderLayer` applies it in training: on the
//! attention block's output (after `out_proj`) and on the feed-forward block's output
//! (after `fc2`), before each is added to its residual, with `p = config.dropout` and the
//! kept values scaled by `1 / (1 - p)`. (OPT's layer has an `activation_dropout` setting
//! that transformers never applies; attention-probability dropout is refused at plan time.)
//!
//! Masks are a pure function of (seed, micro-batch, layer, site, position): a counter-based
//! hash, not a stream, so they do not depend on thread count or on which step a run was
//! resumed from. The seed changes every optimizer step (`for_step`).

use rayon::prelude::*;

/// Where in a layer a mask applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The attention block's output.
    Attention = 0,
    /// The feed-forward block's output.
    FeedForward = 1,
}

/// Dropout at rate `p` for one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub p: f32,
    seed: u64,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Dropout {
    /// Dropout for optimizer step `step` of a run seeded by `seed`; `None` when `p` is 0
    /// (training is then exactly the dropout-free computation).
    pub fn for_step(p: f64, seed: u64, step: usize) -> Option<Dropout> {
        (p > 0.0).then(|| Dropout {
            p: p as f32,
            seed: splitmix(splitmix(seed ^ 0xD20F_0D20) ^ step as u64),
        })
    }

    /// The scaled keep mask (`0` or `1 / (1 - p)`) of `len` values, row-major like the
    /// activation it multiplies.
    pub fn mask(&self, micro: usize, layer: usize, site: Site, len: usize) -> Vec<f32> {
        let key = splitmix(
            self.seed ^ splitmix((micro as u64) << 32 | (layer as u64) << 1 | site as u64),
        );
        // Keep when the hash's top 32 bits fall at or above p's share of the range.
        let threshold = (self.p as f64 * 4_294_967_296.0) as u64;
        let scale = 1.0 / (1.0 - self.p);
        let mut out = vec![0f32; len];
        out.par_chunks_mut(4096).enumerate().for_each(|(c, chunk)| {
            for (i, v) in chunk.iter_mut().enumerate() {
                let h = splitmix(key ^ (c * 4096 + i) as u64) >> 32;
                *v = if h >= threshold { scale } else { 0.0 };
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_drop_about_p_and_scale_the_rest() {
        let d = Dropout::for_step(0.1, 7, 3).unwrap();
        let m = d.mask(0, 1, Site::Attention, 100_000);
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.1).abs() < 0.005, "{dropped}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // The mean is preserved in expectation.
        let mean = m.iter().map(|&v| v as f64).sum::<f64>() / m.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
    }

    #[test]
    fn masks_are_a_function_of_step_micro_layer_and_site() {
        let d = Dropout::for_step(0.5, 7, 3).unwrap();
        let a = d.mask(0, 1, Site::Attention, 1000);
        assert_eq!(
            a,
            Dropout::for_step(0.5, 7, 3)
                .unwrap()
                .mask(0, 1, Site::Attention, 1000)
        );
        for other in [
            Dropout::for_step(0.5, 7, 4)
                .unwrap()
                .mask(0, 1, Site::Attention, 1000),
            Dropout::for_step(0.5, 8, 3)
                .unwrap()
                .mask(0, 1, Site::Attention, 1000),
            d.mask(1, 1, Site::Attention, 1000),
            d.mask(0, 2, Site::Attention, 1000),
            d.mask(0, 1, Site::FeedForward, 1000),
        ] {
            assert_ne!(a, other);
        }
        assert_eq!(Dropout::for_step(0.0, 7, 3), None);
    }
}
