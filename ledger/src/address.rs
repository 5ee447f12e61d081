//! Where a channel lives: the channel contract's address, derived from the channel's terms
//! exactly as TON derives it (`0:SHA-256(StateInit)`, `ton/contract/README.md` "Channel
//! address"). A client names its channel by it, vouchers carry it, and a worker recomputes it
//! from the terms and its own key and payout wallet to know a channel pays it.
//!
//! `StateInit = b{00110} ^code ^data`: the contract's code enters only through its cell's
//! hash and depth, [`CHANNEL_CODE_HASH`] and [`CHANNEL_CODE_DEPTH`], so this core needs no TON
//! library. The code itself is `ton/contract/code/channel.hex`, which `cocoon-ton` embeds; its
//! tests check these two constants against it and this derivation against tonlib-core's.

use crate::cell::{Builder, CellError, CellRef};
use crate::journal::ChannelTerms;

/// Representation hash of the channel contract's code cell (`ton/contract/code/channel.hex`),
/// `7322e15a…632b9b5d` (`node ton/contract/compile.mjs` prints it). Recompiling the contract
/// changes it, and every channel address with it: cocoon-ton's tests then say the new value.
pub const CHANNEL_CODE_HASH: [u8; 32] = [
    0x73, 0x22, 0xe1, 0x5a, 0x15, 0x71, 0xb3, 0x62, 0xae, 0xdf, 0x48, 0x1f, 0x78, 0xec, 0x6c, 0x8d,
    0xa8, 0x70, 0x88, 0xc8, 0x49, 0x56, 0x7e, 0x58, 0x03, 0xcd, 0x8c, 0x5e, 0x63, 0x2b, 0x9b, 0x5d,
];

/// Depth of the channel contract's code cell: 5.
pub const CHANNEL_CODE_DEPTH: u16 = 5;

impl ChannelTerms {
    /// The contract's initial storage (README "Channel"): these terms, status unfunded, all
    /// amounts and times 0.
    pub fn initial_data(&self) -> Result<CellRef, CellError> {
        let keys = Builder::new()
            .bytes(&self.client_key)?
            .bytes(&self.worker_key)?
            .finish();
        let parties = Builder::new()
            .basechain_address(&self.client_address)?
            .basechain_address(&self.worker_payout)?
            .finish();
        Ok(Builder::new()
            .uint(self.channel_id.into(), 64)?
            .uint(0, 2)? // status: unfunded
            .coins(0)? // deposit
            .coins(0)? // settled_amount
            .uint(0, 64)? // settled_seq
            .uint(0, 32)? // close_started_at
            .uint(0, 32)? // opened_at
            .uint(self.challenge_period.into(), 32)?
            .uint(self.worker_timeout.into(), 32)?
            .reference(keys)?
            .reference(parties)?
            .finish())
    }

    /// The channel contract's account id for these terms (the address on the basechain
    /// without its workchain): what vouchers name, and what a worker recomputes to know a
    /// channel pays it.
    pub fn address(&self) -> Result<[u8; 32], CellError> {
        let code = CellRef {
            hash: CHANNEL_CODE_HASH,
            depth: CHANNEL_CODE_DEPTH,
        };
        // No split depth, no special, code, data, no library.
        let state_init = Builder::new()
            .uint(0b00110, 5)?
            .reference(code)?
            .reference(self.initial_data()?)?;
        Ok(state_init.hash())
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    /// The golden channel of the contract README ("Golden vectors (channel)").
    fn golden_terms() -> ChannelTerms {
        ChannelTerms {
            channel_id: 42,
            client_key: SigningKey::from_bytes(&[0x11; 32])
                .verifying_key()
                .to_bytes(),
            worker_key: SigningKey::from_bytes(&[0x22; 32])
                .verifying_key()
                .to_bytes(),
            client_address: [0x11; 32],
            worker_payout: [0x22; 32],
            challenge_period: 3600,
            worker_timeout: 604800,
        }
    }

    #[test]
    fn initial_data_matches_the_golden_vector() {
        let data = golden_terms().initial_data().unwrap();
        assert_eq!(
            hex::encode(data.hash),
            "0d3b99a47ecbf9ebe76ea490383f0722397ba5a9f1d51732cba72536c1bcd2d9"
        );
        assert_eq!(data.depth, 1);
    }

    #[test]
    fn the_golden_channels_address_is_the_one_ton_core_derives() {
        // @ton/core: `contractAddress(0, {code, data})` with code/channel.hex at the code hash
        // above and the golden data.
        assert_eq!(
            hex::encode(golden_terms().address().unwrap()),
            "e2ecf4880e3b9708528b802f51b01d424db27cd02e69c41685d6e080ff5bc0cf"
        );
    }

    #[test]
    fn the_address_depends_on_every_term() {
        let golden = golden_terms();
        let address = golden.address().unwrap();
        for other in [
            ChannelTerms {
                channel_id: 43,
                ..golden
            },
            ChannelTerms {
                client_key: [1; 32],
                ..golden
            },
            ChannelTerms {
                worker_key: [1; 32],
                ..golden
            },
            ChannelTerms {
                client_address: [1; 32],
                ..golden
            },
            ChannelTerms {
                worker_payout: [1; 32],
                ..golden
            },
            ChannelTerms {
                challenge_period: 1,
                ..golden
            },
            ChannelTerms {
                worker_timeout: 1,
                ..golden
            },
        ] {
            assert_ne!(other.address().unwrap(), address, "{other:?}");
        }
    }
}
