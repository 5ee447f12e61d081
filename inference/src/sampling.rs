//! Sampling parameters and their translation to candle's seeded [`LogitsProcessor`], which
//! each generation's decoding (in either runtime) samples with; [`argmax`] is greedy
//! decoding on a plain row of logits.
//!
//! Every random choice comes from a `StdRng` seeded with [`SamplingParams::seed`], so the same
//! model, prompt and parameters give the same text on the same device. A temperature of 0 is
//! greedy decoding (argmax), which ignores the seed.

use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};

use crate::error::GenerateError;

/// Default [`SamplingParams::max_tokens`]: 256.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// Temperatures below this are treated as 0 (greedy).
pub const GREEDY_BELOW: f64 = 1e-7;

/// How to pick each next token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SamplingParams {
    /// Seed of the sampler's random number generator. Default 0.
    pub seed: u64,
    /// Softmax temperature; 0 means greedy (argmax). Must be finite and ≥ 0. Default 0.
    pub temperature: f64,
    /// Nucleus sampling: sample from the smallest set of tokens whose probability reaches
    /// `top_p`, in (0, 1]. Default `None` (off).
    pub top_p: Option<f64>,
    /// Sample only among the `top_k` most likely tokens (≥ 1). Default `None` (off).
    pub top_k: Option<usize>,
    /// Most tokens to generate (≥ 1); hitting it finishes with
    /// [`FinishReason::Length`](crate::FinishReason::Length). Default [`DEFAULT_MAX_TOKENS`].
    pub max_tokens: u32,
    /// Generation stops when the text contains one of these; the text before it is returned.
    /// Empty strings are ignored. Default empty.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            seed: 0,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            stop: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: u32) -> Self {
        SamplingParams {
            max_tokens,
            ..Self::default()
        }
    }

    /// Checks the invariants documented on each field.
    pub fn validate(&self) -> Result<(), GenerateError> {
        let invalid = |m: String| Err(GenerateError::InvalidRequest(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return invalid(format!(
                "temperature must be finite and >= 0, got {}",
                self.temperature
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return invalid(format!("top_p must be in (0, 1], got {p}"));
            }
        }
        if self.top_k == Some(0) {
            return invalid("top_k must be >= 1".to_string());
        }
        if self.max_tokens == 0 {
            return invalid("max_tokens must be >= 1".to_string());
        }
        Ok(())
    }

    /// Whether this is greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_BELOW
    }

    /// candle's sampling strategy for these parameters.
    pub fn strategy(&self) -> Sampling {
        if self.is_greedy() {
            return Sampling::ArgMax;
        }
        let temperature = self.temperature;
        let top_p = self.top_p.filter(|&p| p < 1.0);
        match (self.top_k, top_p) {
            (None, None) => Sampling::All { temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        }
    }

    /// A fresh seeded sampler.
    pub fn processor(&self) -> LogitsProcessor {
        LogitsProcessor::from_sampling(self.seed, self.strategy())
    }
}

/// The index of the largest value, the first one on ties (as candle's argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if logits[best] < v {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let d = SamplingParams::default();
        assert_eq!(d.seed, 0);
        assert_eq!(d.temperature, 0.0);
        assert_eq!(d.max_tokens, 256);
        assert!(d.top_p.is_none() && d.top_k.is_none() && d.stop.is_empty());
        assert_eq!(d.strategy(), Sampling::ArgMax);
        let partial: SamplingParams = serde_json::from_str(r#"{"temperature":0.5}"#).unwrap();
        assert_eq!(partial.max_tokens, 256);
    }

    #[test]
    fn strategies_and_validation() {
        let p = |t, top_p, top_k| SamplingParams {
            temperature: t,
            top_p,
            top_k,
            ..Default::default()
        };
        assert_eq!(
            p(0.7, Some(0.9), Some(40)).strategy(),
            Sampling::TopKThenTopP {
                k: 40,
                p: 0.9,
                temperature: 0.7
            }
        );
        assert_eq!(
            p(0.7, Some(1.0), None).strategy(),
            Sampling::All { temperature: 0.7 }
        );
        assert!(p(-1.0, None, None).validate().is_err());
        assert!(p(f64::NAN, None, None).validate().is_err());
        assert!(p(1.0, Some(0.0), None).validate().is_err());
        assert!(p(1.0, None, Some(0)).validate().is_err());
        assert!(p(1.0, Some(0.5), Some(3)).validate().is_ok());
    }
}
