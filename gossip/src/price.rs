//! A worker's price policy: fixed, or moving with its own load within operator bounds.
//!
//! Dynamic pricing observes load (busy slots over slots, plus jobs refused as busy since the
//! last observation) and keeps a moving average of utilisation. It raises the price by
//! `step` when the average is above `raise_above` (or jobs were refused), lowers it when
//! below `lower_below`, and holds in between: the dead band plus a minimum time between
//! changes (`hold_secs`) is the hysteresis that keeps prices from flapping. The price never
//! leaves `[floor, ceiling]`. Sans-IO: `now` comes in. A policy whose prices an advert
//! cannot carry (above [`limits::PRICE`]) is refused up front, since every peer would drop
//! the worker's adverts.

use serde::{Deserialize, Serialize};

use crate::advert::{limits, Price};

/// How a worker prices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum PricePolicy {
    /// Always this price.
    Fixed {
        /// The price.
        price: Price,
    },
    /// Moves with load.
    Dynamic {
        /// Lowest price.
        floor: Price,
        /// Highest price.
        ceiling: Price,
        /// Relative change per step (0.1 = 10 %). Default in [`PricePolicy::default`]: 0.1.
        step: f64,
        /// Raise when average utilisation is above this. Default: 0.8.
        raise_above: f64,
        /// Lower when average utilisation is below this. Default: 0.3.
        lower_below: f64,
        /// Least seconds between two changes. Default: 60.
        hold_secs: u64,
    },
}

impl Default for PricePolicy {
    /// Dynamic, from 0.01 to 1 TON per million prompt tokens and 0.03 to 3 TON per million
    /// completion tokens, starting at the floor. (At the floor a 100-token answer costs about
    /// 3,000 nanoTON: a thousand such jobs pay for one on-chain settlement.)
    fn default() -> Self {
        PricePolicy::Dynamic {
            floor: Price {
                prompt_per_mtok: 10_000_000,
                completion_per_mtok: 30_000_000,
            },
            ceiling: Price {
                prompt_per_mtok: 1_000_000_000,
                completion_per_mtok: 3_000_000_000,
            },
            step: 0.1,
            raise_above: 0.8,
            lower_below: 0.3,
            hold_secs: 60,
        }
    }
}

/// Why a policy is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid price policy: {0}")]
pub struct PolicyError(String);

/// One load observation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    /// Jobs running.
    pub busy: u32,
    /// Slots.
    pub slots: u32,
    /// Jobs refused as busy since the last observation.
    pub refused: u32,
}

/// The price state of one worker.
#[derive(Clone, Debug)]
pub struct PriceCore {
    policy: PricePolicy,
    current: Price,
    utilisation: f64,
    last_change: Option<u64>,
}

/// Weight of a new observation in the utilisation average.
const ALPHA: f64 = 0.3;

fn scale(p: Price, f: f64, floor: Price, ceiling: Price) -> Price {
    let one = |v: u64, lo: u64, hi: u64| {
        let x = (v as f64 * f).round();
        // Always move by at least one unit, so small prices do not get stuck.
        let x = if f > 1.0 {
            x.max(v as f64 + 1.0)
        } else {
            x.min((v as f64 - 1.0).max(0.0))
        };
        (x.clamp(lo as f64, hi as f64)) as u64
    };
    Price {
        prompt_per_mtok: one(
            p.prompt_per_mtok,
            floor.prompt_per_mtok,
            ceiling.prompt_per_mtok,
        ),
        completion_per_mtok: one(
            p.completion_per_mtok,
            floor.completion_per_mtok,
            ceiling.completion_per_mtok,
        ),
    }
}

/// Refuses a price an advert cannot carry (`what` names it: "fixed", "ceiling").
fn advertisable(what: &str, price: Price) -> Result<(), PolicyError> {
    for (side, p) in [
        ("prompt", price.prompt_per_mtok),
        ("completion", price.completion_per_mtok),
    ] {
        if p > limits::PRICE {
            return Err(PolicyError(format!(
                "the {what} {side} price {p} is above the most an advert carries: prices \
                 are 0 to {} nanoTON per million tokens",
                limits::PRICE
            )));
        }
    }
    Ok(())
}

impl PriceCore {
    /// Starts at the fixed price, or at the floor. Refuses a policy an advert cannot carry
    /// (a price above [`limits::PRICE`]) or that is inconsistent.
    pub fn new(policy: PricePolicy) -> Result<Self, PolicyError> {
        let current = match &policy {
            PricePolicy::Fixed { price } => {
                advertisable("fixed", *price)?;
                *price
            }
            PricePolicy::Dynamic {
                floor,
                ceiling,
                step,
                raise_above,
                lower_below,
                ..
            } => {
                let ordered = floor.prompt_per_mtok <= ceiling.prompt_per_mtok
                    && floor.completion_per_mtok <= ceiling.completion_per_mtok;
                if !ordered {
                    return Err(PolicyError("floor above ceiling".into()));
                }
                // The price moves between floor and ceiling: both must be advertisable.
                advertisable("ceiling", *ceiling)?;
                if !(step.is_finite() && *step > 0.0 && *step <= 1.0) {
                    return Err(PolicyError("step must be in (0, 1]".into()));
                }
                if !(0.0 <= *lower_below && lower_below < raise_above && *raise_above <= 1.0) {
                    return Err(PolicyError(
                        "need 0 <= lower_below < raise_above <= 1".into(),
                    ));
                }
                *floor
            }
        };
        Ok(Self {
            policy,
            current,
            utilisation: 0.0,
            last_change: None,
        })
    }

    /// The current price.
    pub fn price(&self) -> Price {
        self.current
    }

    /// The average utilisation the core believes in.
    pub fn utilisation(&self) -> f64 {
        self.utilisation
    }

    /// Feeds one observation at `now`; returns the new price if it changed.
    pub fn observe(&mut self, load: Load, now: u64) -> Option<Price> {
        let PricePolicy::Dynamic {
            floor,
            ceiling,
            step,
            raise_above,
            lower_below,
            hold_secs,
        } = self.policy
        else {
            return None;
        };
        let u = if load.slots == 0 {
            0.0
        } else {
            (load.busy as f64 / load.slots as f64).min(1.0)
        };
        self.utilisation += ALPHA * (u - self.utilisation);
        if self
            .last_change
            .is_some_and(|t| now.saturating_sub(t) < hold_secs)
        {
            return None;
        }
        let next = if load.refused > 0 || self.utilisation > raise_above {
            scale(self.current, 1.0 + step, floor, ceiling)
        } else if self.utilisation < lower_below {
            scale(self.current, 1.0 - step, floor, ceiling)
        } else {
            return None;
        };
        if next == self.current {
            return None;
        }
        self.current = next;
        self.last_change = Some(now);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn within(p: Price) -> bool {
        let PricePolicy::Dynamic { floor, ceiling, .. } = PricePolicy::default() else {
            unreachable!()
        };
        (floor.prompt_per_mtok..=ceiling.prompt_per_mtok).contains(&p.prompt_per_mtok)
            && (floor.completion_per_mtok..=ceiling.completion_per_mtok)
                .contains(&p.completion_per_mtok)
    }

    #[test]
    fn load_raises_idleness_lowers_and_the_band_holds() {
        let mut core = PriceCore::new(PricePolicy::default()).unwrap();
        let start = core.price();
        let full = Load {
            busy: 2,
            slots: 2,
            refused: 0,
        };
        let mut t = 0;
        for _ in 0..10 {
            t += 60;
            core.observe(full, t);
        }
        let high = core.price();
        assert!(high.completion_per_mtok > start.completion_per_mtok);
        // Half busy: inside the dead band once the average settles, so no change.
        let half = Load {
            busy: 1,
            slots: 2,
            refused: 0,
        };
        for _ in 0..10 {
            t += 60;
            core.observe(half, t);
        }
        let settled = core.price();
        for _ in 0..10 {
            t += 60;
            assert_eq!(core.observe(half, t), None, "no flapping in the band");
        }
        assert_eq!(core.price(), settled);
        for _ in 0..200 {
            t += 60;
            core.observe(Load::default(), t);
        }
        assert_eq!(core.price(), start, "idle returns to the floor");
        // Changes are at least hold_secs apart.
        let mut c = PriceCore::new(PricePolicy::default()).unwrap();
        assert!(c.observe(full, 0).is_none() || c.observe(full, 1).is_none());
    }

    #[test]
    fn fixed_never_moves_and_bad_policies_are_refused() {
        let price = Price {
            prompt_per_mtok: 5,
            completion_per_mtok: 7,
        };
        let mut c = PriceCore::new(PricePolicy::Fixed { price }).unwrap();
        assert_eq!(
            c.observe(
                Load {
                    busy: 9,
                    slots: 9,
                    refused: 9
                },
                100
            ),
            None
        );
        assert_eq!(c.price(), price);
        let PricePolicy::Dynamic { floor, ceiling, .. } = PricePolicy::default() else {
            unreachable!()
        };
        let inverted = PricePolicy::Dynamic {
            floor: ceiling,
            ceiling: floor,
            step: 0.1,
            raise_above: 0.8,
            lower_below: 0.3,
            hold_secs: 60,
        };
        assert!(PriceCore::new(inverted).is_err());
        let toml_like: PricePolicy = serde_json::from_str(
            r#"{"mode":"fixed","price":{"prompt_per_mtok":1,"completion_per_mtok":2}}"#,
        )
        .unwrap();
        assert!(matches!(toml_like, PricePolicy::Fixed { .. }));
    }

    /// A policy whose price an advert cannot carry is refused: every peer would drop the
    /// worker's adverts.
    #[test]
    fn prices_an_advert_cannot_carry_are_refused() {
        let max = crate::advert::limits::PRICE;
        let price = |prompt_per_mtok, completion_per_mtok| Price {
            prompt_per_mtok,
            completion_per_mtok,
        };
        let fixed = |p| PricePolicy::Fixed { price: p };
        assert!(PriceCore::new(fixed(price(max, max))).is_ok());
        let err = PriceCore::new(fixed(price(u64::MAX, 1))).unwrap_err();
        assert!(err.to_string().contains("prompt"), "{err}");
        assert!(err.to_string().contains("1000000000000"), "{err}");
        let err = PriceCore::new(fixed(price(1, max + 1))).unwrap_err();
        assert!(err.to_string().contains("completion"), "{err}");
        let PricePolicy::Dynamic { floor, .. } = PricePolicy::default() else {
            unreachable!()
        };
        let dynamic = |ceiling| PricePolicy::Dynamic {
            floor,
            ceiling,
            step: 0.1,
            raise_above: 0.8,
            lower_below: 0.3,
            hold_secs: 60,
        };
        assert!(PriceCore::new(dynamic(price(max, max))).is_ok());
        let err = PriceCore::new(dynamic(price(max, max + 1))).unwrap_err();
        assert!(err.to_string().contains("ceiling"), "{err}");
    }

    proptest! {
        #[test]
        fn prices_stay_within_bounds_under_any_load(
            loads in proptest::collection::vec((0u32..10, 1u32..10, 0u32..3, 0u64..200), 1..300)
        ) {
            let mut core = PriceCore::new(PricePolicy::default()).unwrap();
            let mut t = 0;
            for (busy, slots, refused, dt) in loads {
                t += dt;
                core.observe(Load { busy: busy.min(slots), slots, refused }, t);
                prop_assert!(within(core.price()));
            }
        }
    }
}
