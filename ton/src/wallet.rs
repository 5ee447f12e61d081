//! A standard wallet v4r2 (tonlib-core's code and layouts) from a 32-byte ed25519 seed: its
//! address, and signed external messages carrying up to four internal messages.
//!
//! This is how the node pays on chain: every contract message (open, close, anchor...) is an
//! internal message the node's wallet sends. Cells are tonlib-core's; the tests pin them to
//! vectors computed with @ton/core (same cell hashes; tonlib-core orders the cells of a deep
//! tree differently inside a BoC, which any parser accepts).

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use num_bigint::BigUint;
use tonlib_core::cell::{ArcCell, Cell, TonCellError};
use tonlib_core::tlb_types::block::coins::{CurrencyCollection, Grams};
use tonlib_core::tlb_types::block::message::{CommonMsgInfo, IntMsgInfo, Message};
use tonlib_core::tlb_types::block::msg_address::MsgAddress;
use tonlib_core::tlb_types::block::state_init::StateInit;
use tonlib_core::tlb_types::tlb::TLB;
use tonlib_core::wallet::mnemonic::KeyPair;
use tonlib_core::wallet::ton_wallet::TonWallet;
use tonlib_core::wallet::version_helper::VersionHelper;
use tonlib_core::wallet::versioned::v4::WalletExtMsgBodyV4;
use tonlib_core::wallet::versioned::DEFAULT_WALLET_ID;
use tonlib_core::wallet::wallet_version::WalletVersion;
use tonlib_core::TonAddress;

/// The default subwallet id of v4r2 wallets on the basechain: 698983191 (`0x29a9a317`).
pub const SUBWALLET_ID: i32 = DEFAULT_WALLET_ID;

/// Send mode of an internal message by default: 3 = pay forward fees separately + ignore
/// errors of the action (the wallet's standard mode).
pub const DEFAULT_SEND_MODE: u8 = 3;

/// Most internal messages one v4r2 external message carries.
pub const MAX_MESSAGES: usize = 4;

/// An internal message for the wallet to send.
#[derive(Clone, Debug, PartialEq)]
pub struct OutMsg {
    /// Destination.
    pub dest: TonAddress,
    /// Value, nanoTON.
    pub value: u128,
    /// Bounce back if the destination fails (use `true` for contracts, `false` to fund an
    /// uninitialised account).
    pub bounce: bool,
    /// Body; `None` is the empty cell (a plain transfer).
    pub body: Option<ArcCell>,
    /// StateInit that deploys the destination.
    pub state_init: Option<ArcCell>,
    /// Send mode ([`DEFAULT_SEND_MODE`] by default).
    pub mode: u8,
}

impl OutMsg {
    /// A message with the default mode, no body and no StateInit.
    pub fn new(dest: TonAddress, value: u128, bounce: bool) -> Self {
        Self {
            dest,
            value,
            bounce,
            body: None,
            state_init: None,
            mode: DEFAULT_SEND_MODE,
        }
    }

    /// With this body.
    pub fn with_body(mut self, body: Cell) -> Self {
        self.body = Some(Arc::new(body));
        self
    }

    /// With this StateInit (deploys the destination).
    pub fn with_state_init(mut self, state_init: ArcCell) -> Self {
        self.state_init = Some(state_init);
        self
    }

    /// The `MessageRelaxed` cell (source `addr_none`, the wallet fills it in).
    pub fn to_cell(&self) -> Result<Cell, TonCellError> {
        let info = CommonMsgInfo::Int(IntMsgInfo {
            ihr_disabled: true,
            bounce: self.bounce,
            bounced: false,
            src: MsgAddress::NONE,
            dest: self.dest.to_msg_address_int().into(),
            value: CurrencyCollection::new(BigUint::from(self.value)),
            ihr_fee: Grams::new(BigUint::ZERO),
            fwd_fee: Grams::new(BigUint::ZERO),
            created_lt: 0,
            created_at: 0,
        });
        let body = self
            .body
            .clone()
            .unwrap_or_else(|| Arc::new(Cell::default()));
        let mut msg = Message::new(info, body);
        if let Some(init) = &self.state_init {
            msg.with_state_init(StateInit::from_cell(init)?);
        }
        msg.to_cell()
    }
}

/// A wallet v4r2 on the basechain with the default subwallet id.
#[derive(Clone, Debug)]
pub struct Wallet {
    inner: TonWallet,
}

impl Wallet {
    /// The wallet of the ed25519 key with this seed.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, TonCellError> {
        let key = SigningKey::from_bytes(seed);
        let key_pair = KeyPair {
            public_key: key.verifying_key().to_bytes().to_vec(),
            secret_key: key.to_keypair_bytes().to_vec(),
        };
        Ok(Self {
            inner: TonWallet::new_with_params(WalletVersion::V4R2, key_pair, 0, SUBWALLET_ID)?,
        })
    }

    /// Its address.
    pub fn address(&self) -> &TonAddress {
        &self.inner.address
    }

    /// The StateInit that deploys it (sent with its first external message).
    pub fn state_init(&self) -> Result<Cell, TonCellError> {
        let data = VersionHelper::get_data(self.inner.version, &self.inner.key_pair, SUBWALLET_ID)?;
        StateInit::new(
            VersionHelper::get_code(self.inner.version)?.clone(),
            Arc::new(data),
        )
        .to_cell()
    }

    /// The signed external message (BoC bytes, with CRC32) sending `msgs` (at most
    /// [`MAX_MESSAGES`]) with this `seqno`, valid until the unixtime `valid_until`; it
    /// carries the wallet's StateInit when `include_state_init` (the wallet is not deployed).
    pub fn external_transfer(
        &self,
        seqno: u32,
        valid_until: u32,
        msgs: &[OutMsg],
        include_state_init: bool,
    ) -> Result<Vec<u8>, TonCellError> {
        let body = WalletExtMsgBodyV4 {
            subwallet_id: SUBWALLET_ID,
            valid_until,
            msg_seqno: seqno,
            opcode: 0,
            msgs_modes: msgs.iter().map(|m| m.mode).collect(),
            msgs: msgs
                .iter()
                .map(|m| m.to_cell().map(Arc::new))
                .collect::<Result<_, _>>()?,
        }
        .to_cell()?;
        let signed = self.inner.sign_external_body(&body)?;
        let external = self
            .inner
            .wrap_signed_body(signed, include_state_init)
            .map_err(|e| TonCellError::InternalError(e.to_string()))?;
        external.to_boc(true)
    }
}

/// The basechain account id of the v4r2 wallet of `key`: a node's wallet, the client
/// address of its channels and a worker's default payout.
pub fn account_of(key: &SigningKey) -> Result<[u8; 32], TonCellError> {
    let wallet = Wallet::from_seed(&key.to_bytes())?;
    Ok(wallet.address().hash_part.clone().into())
}

/// A basechain address from its account id.
pub fn basechain(account: [u8; 32]) -> TonAddress {
    TonAddress::new(0, account.into())
}

#[cfg(test)]
mod tests {
    use tonlib_core::cell::BagOfCells;

    use super::*;

    fn open_to_sevens() -> OutMsg {
        OutMsg::new(TonAddress::new(0, [7; 32].into()), 1_000_000_000, true)
            .with_body(crate::contract::ChannelMsg::Open.body(0).unwrap())
    }

    /// Computed with @ton/core 0.63.1 and @ton/crypto 3.3.0 (`keyPairFromSeed`, the v4r2 data
    /// layout `seqno:0 subwallet:698983191 key:uint256 plugins:0`, `contractAddress`,
    /// `storeMessageRelaxed` / `storeMessage`, `sign` over the hash of the body): seed
    /// `0x11..11`; transfer with seqno 3, valid until 1700000000, with StateInit, carrying
    /// 1 TON bounceable to `0:0707..07` with an `OP_OPEN` body.
    #[test]
    fn address_and_external_message_match_ton_core() {
        let w = Wallet::from_seed(&[0x11; 32]).unwrap();
        assert_eq!(
            w.address().to_hex(),
            "0:dc07f707c7d61fc2fe1be2c2dc5b6b518381cd8d924baa3af44c12822f6fbb35"
        );
        assert_eq!(
            w.address().to_base64_url(),
            "EQDcB_cHx9Yfwv4b4sLcW2tRg4HNjZJLqjr0TBKCL2-7NaUo"
        );
        assert_eq!(
            Cell::cell_hash(&w.state_init().unwrap().references()[0]).to_hex(),
            // The well-known v4r2 code hash.
            "feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0"
        );
        let boc = w
            .external_transfer(3, 1_700_000_000, &[open_to_sevens()], true)
            .unwrap();
        // The same cell as @ton/core's (tonlib-core orders the cells of a deep tree
        // differently in the BoC, so compare hashes, not BoC bytes).
        let root = BagOfCells::parse(&boc).unwrap().single_root().unwrap();
        assert_eq!(
            Cell::cell_hash(&root).to_hex(),
            "5e3964d10d0b2849213a4f6f8c1ea67912ae937e8c0300da7a081b7f01c38d5e"
        );
        assert_ne!(
            Wallet::from_seed(&[0x22; 32]).unwrap().address(),
            w.address()
        );
    }

    #[test]
    fn external_transfer_round_trips() {
        let w = Wallet::from_seed(&[0x11; 32]).unwrap();
        let msg = open_to_sevens();
        let dest = msg.dest.clone();
        let boc = w
            .external_transfer(3, 1_700_000_000, std::slice::from_ref(&msg), true)
            .unwrap();
        let root = BagOfCells::parse(&boc).unwrap().single_root().unwrap();
        let ext = Message::from_cell(&root).unwrap();
        assert!(ext.init.is_some());
        let signed = &ext.body.value;
        let mut p = signed.parser();
        p.skip_bits(512).unwrap();
        let body = WalletExtMsgBodyV4::read(&mut p).unwrap();
        assert_eq!(
            (body.subwallet_id, body.msg_seqno, body.valid_until),
            (698983191, 3, 1_700_000_000)
        );
        assert_eq!(body.msgs_modes, vec![DEFAULT_SEND_MODE]);
        assert_eq!(
            Cell::cell_hash(&body.msgs[0]),
            msg.to_cell().unwrap().cell_hash()
        );
        let internal = Message::from_cell(&body.msgs[0]).unwrap();
        let CommonMsgInfo::Int(info) = internal.info else {
            panic!("internal message expected")
        };
        assert_eq!(TonAddress::from_msg_address(info.dest).unwrap(), dest);
        assert!(info.bounce);
        let without_init = w
            .external_transfer(3, 1_700_000_000, &[msg], false)
            .unwrap();
        let ext = Message::from_boc(&without_init).unwrap();
        assert!(ext.init.is_none());
        assert!(w
            .external_transfer(0, 0, &vec![OutMsg::new(dest, 1, false); 5], false)
            .is_err());
    }
}
