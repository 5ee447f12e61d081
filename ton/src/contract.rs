//! The payment-channel and receipt-anchor contracts (`ton/contract`) as Rust builds and
//! reads them: code, initial data, addresses, message bodies and getter results, byte for
//! byte as `ton/contract/README.md` specifies (its golden vectors are the unit tests).
//!
//! The code cells are the committed BoCs `ton/contract/code/{channel,anchor}.hex`, written
//! by `node ton/contract/compile.mjs`; the contract tests check they match the sources.
//! Everything here is pure: [`client`](crate::client) sends what this module builds.

use std::sync::{Arc, LazyLock};

use cocoon_ledger::journal::ChannelTerms;
use cocoon_ledger::voucher::{CloseStatement, SignedVoucher, Voucher, CLOSE_TAG, VOUCHER_TAG};
use num_bigint::BigUint;
use tonlib_core::cell::{ArcCell, BagOfCells, Cell, CellBuilder, TonCellError};
use tonlib_core::tlb_types::block::state_init::StateInit;
use tonlib_core::tlb_types::tlb::TLB;
use tonlib_core::TonAddress;

use crate::chain::{ChainError, StackEntry, StackReader};

/// Op codes of incoming messages (`op:uint32` at the start of every body).
pub mod op {
    /// Fund and open the channel (client; the first one deploys it): "open".
    pub const OPEN: u32 = 0x6f70656e;
    /// Add to the deposit (client): "topu".
    pub const TOP_UP: u32 = 0x746f7075;
    /// Close with a statement signed by both parties: "clos".
    pub const COOP_CLOSE: u32 = 0x636c6f73;
    /// Start a unilateral close with the worker's best voucher: "wclo".
    pub const WORKER_CLOSE: u32 = 0x77636c6f;
    /// Replace the settled voucher with a newer one during the window: "chal".
    pub const CHALLENGE: u32 = 0x6368616c;
    /// Start a unilateral close as the client: "cclo".
    pub const CLIENT_CLOSE: u32 = 0x63636c6f;
    /// Pay out after the challenge window (anyone): "fina".
    pub const FINALIZE: u32 = 0x66696e61;
    /// Take the whole deposit back after the worker timeout (client): "tmou".
    pub const TIMEOUT_REFUND: u32 = 0x746d6f75;
    /// Post a Merkle root to the anchor contract: "anch".
    pub const ANCHOR: u32 = 0x616e6368;
    /// Outgoing: the worker's payout at finalize or coop close: "payd".
    pub const PAYOUT: u32 = 0x70617964;
    /// Outgoing: the client's refund of the rest: "refd".
    pub const REFUND: u32 = 0x72656664;
}

/// Compute-phase exit codes of the contracts (README "Error codes").
pub mod exit {
    /// ed25519 signature does not verify.
    pub const BAD_SIGNATURE: i32 = 100;
    /// The statement names another channel.
    pub const WRONG_CHANNEL: i32 = 101;
    /// Challenge voucher not newer than the settled one.
    pub const STALE_VOUCHER: i32 = 102;
    /// Op not allowed in this status.
    pub const WRONG_STATE: i32 = 103;
    /// Sender is not the client.
    pub const NOT_AUTHORISED: i32 = 104;
    /// Amount above the deposit.
    pub const AMOUNT_ABOVE_DEPOSIT: i32 = 105;
    /// Finalize before the challenge window ended.
    pub const WINDOW_NOT_OVER: i32 = 106;
    /// Challenge after the window ended.
    pub const WINDOW_OVER: i32 = 107;
    /// Timeout refund before `opened_at + worker_timeout`.
    pub const TIMEOUT_NOT_REACHED: i32 = 108;
    /// Statement without its tag.
    pub const WRONG_TAG: i32 = 109;
    /// Too little value attached.
    pub const INSUFFICIENT_VALUE: i32 = 110;
    /// Any message to a closed channel.
    pub const CHANNEL_CLOSED: i32 = 111;
    /// Anchor getter: no such index.
    pub const NO_SUCH_ANCHOR: i32 = 120;
    /// Anchor post with `batch_size = 0`.
    pub const EMPTY_BATCH: i32 = 121;
    /// Unknown op.
    pub const UNKNOWN_OP: i32 = 0xFFFF;
}

/// Held back from every funding message (open, top-up) to pay gas, payout fees and storage:
/// 0.05 TON. Whatever is left of it goes back to the client at the close.
pub const DEPOSIT_RESERVE: u128 = 50_000_000;
/// Least value of an anchor post (kept by the anchor to pay its storage): 0.01 TON.
pub const ANCHOR_MIN_VALUE: u128 = 10_000_000;
/// Value attached to closing messages (worker/client close, challenge, finalize, coop close,
/// timeout refund): 0.05 TON; the part the gas does not burn comes back.
pub const CLOSE_VALUE: u128 = 50_000_000;

fn code(hex: &str) -> ArcCell {
    BagOfCells::parse_hex(hex.trim())
        .and_then(BagOfCells::single_root)
        .expect("the committed contract code is a one-root BoC")
}

static CHANNEL_CODE: LazyLock<ArcCell> =
    LazyLock::new(|| code(include_str!("../contract/code/channel.hex")));
static ANCHOR_CODE: LazyLock<ArcCell> =
    LazyLock::new(|| code(include_str!("../contract/code/anchor.hex")));

/// The channel contract's code cell.
pub fn channel_code() -> ArcCell {
    CHANNEL_CODE.clone()
}

/// The anchor contract's code cell.
pub fn anchor_code() -> ArcCell {
    ANCHOR_CODE.clone()
}

/// A contract instance before or after deployment: its address and the StateInit that
/// deploys it there.
#[derive(Clone, Debug, PartialEq)]
pub struct Contract {
    /// `0:SHA-256(StateInit)`.
    pub address: TonAddress,
    /// `StateInit = b{00110} ^code ^data`.
    pub state_init: ArcCell,
}

impl Contract {
    /// The basechain instance of `code` with initial `data`.
    pub fn new(code: ArcCell, data: Cell) -> Result<Self, TonCellError> {
        let state_init = StateInit::new(code, Arc::new(data)).to_cell()?;
        Ok(Self {
            address: TonAddress::new(0, state_init.cell_hash()),
            state_init: Arc::new(state_init),
        })
    }

    /// The account id (the address without the workchain): what vouchers name.
    pub fn account_id(&self) -> [u8; 32] {
        self.address.hash_part.clone().into()
    }
}

/// The immutable parameters of a channel; they (and so the address) are fixed at deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelParams {
    /// Distinguishes channels of the same pair; never reuse one (README "Off-chain rules").
    pub channel_id: u64,
    /// The client's ed25519 public key (signs vouchers and close statements).
    pub client_key: [u8; 32],
    /// The worker's ed25519 public key (co-signs close statements).
    pub worker_key: [u8; 32],
    /// The client's wallet: the only sender of open, top-up, client close and timeout refund,
    /// and where refunds go.
    pub client_address: TonAddress,
    /// Where the worker's payout goes.
    pub worker_payout: TonAddress,
    /// Seconds a unilateral close can be challenged.
    pub challenge_period: u32,
    /// Seconds after the open when the client may take everything back.
    pub worker_timeout: u32,
}

impl ChannelParams {
    /// The initial storage: status unfunded, all amounts and times 0.
    pub fn initial_data(&self) -> Result<Cell, TonCellError> {
        let keys = CellBuilder::new()
            .store_slice(&self.client_key)?
            .store_slice(&self.worker_key)?
            .build()?;
        let parties = CellBuilder::new()
            .store_raw_address(&self.client_address)?
            .store_raw_address(&self.worker_payout)?
            .build()?;
        CellBuilder::new()
            .store_u64(64, self.channel_id)?
            .store_u8(2, 0)? // status
            .store_u8(4, 0)? // deposit (Coins 0)
            .store_u8(4, 0)? // settled_amount
            .store_u64(64, 0)? // settled_seq
            .store_u32(32, 0)? // close_started_at
            .store_u32(32, 0)? // opened_at
            .store_u32(32, self.challenge_period)?
            .store_u32(32, self.worker_timeout)?
            .store_child(keys)?
            .store_child(parties)?
            .build()
    }

    /// The channel's address and deploying StateInit.
    pub fn contract(&self) -> Result<Contract, TonCellError> {
        Contract::new(channel_code(), self.initial_data()?)
    }
}

impl From<&ChannelTerms> for ChannelParams {
    /// The contract parameters of journaled terms (both wallets on the basechain).
    fn from(terms: &ChannelTerms) -> Self {
        ChannelParams {
            channel_id: terms.channel_id,
            client_key: terms.client_key,
            worker_key: terms.worker_key,
            client_address: TonAddress::new(0, terms.client_address.into()),
            worker_payout: TonAddress::new(0, terms.worker_payout.into()),
            challenge_period: terms.challenge_period,
            worker_timeout: terms.worker_timeout,
        }
    }
}

/// The contract side of the terms the payment cores journal: `terms.params()` to deploy or
/// open the channel they name. (Their address, [`ChannelTerms::address`], is the core's: it
/// equals `terms.params().contract()?.account_id()`, as the tests check.)
pub trait TermsExt {
    /// The contract parameters of these terms (both wallets on the basechain).
    fn params(&self) -> ChannelParams;
}

impl TermsExt for ChannelTerms {
    fn params(&self) -> ChannelParams {
        self.into()
    }
}

/// The anchor contract with this (informational) owner; `None` is `addr_none`.
pub fn anchor_contract(owner: Option<&TonAddress>) -> Result<Contract, TonCellError> {
    let mut data = CellBuilder::new();
    match owner {
        Some(owner) => data.store_raw_address(owner)?,
        None => data.store_u8(2, 0)?,
    };
    data.store_u32(32, 0)?.store_bit(false)?; // count 0, empty dictionary
    Contract::new(anchor_code(), data.build()?)
}

fn statement_cell(
    tag: u32,
    channel: &[u8; 32],
    amount: u64,
    seq: u64,
) -> Result<Cell, TonCellError> {
    CellBuilder::new()
        .store_u32(32, tag)?
        .store_slice(channel)?
        .store_coins(&BigUint::from(amount))?
        .store_u64(64, seq)?
        .build()
}

/// The voucher as a cell; its hash is [`Voucher::hash`].
pub fn voucher_cell(v: &Voucher) -> Result<Cell, TonCellError> {
    statement_cell(VOUCHER_TAG, &v.channel, v.cumulative, v.seq)
}

/// The close statement as a cell; its hash is [`CloseStatement::hash`].
pub fn close_cell(c: &CloseStatement) -> Result<Cell, TonCellError> {
    statement_cell(CLOSE_TAG, &c.channel, c.amount, c.seq)
}

/// A message to the channel contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelMsg {
    /// Fund and open (deploys the contract).
    Open,
    /// Add to the deposit.
    TopUp,
    /// Start a unilateral close as the client.
    ClientClose,
    /// Pay out after the challenge window.
    Finalize,
    /// Take everything back after the worker timeout.
    TimeoutRefund,
    /// Start a unilateral close with a client-signed voucher.
    WorkerClose(SignedVoucher),
    /// Answer a close with a newer voucher.
    Challenge(SignedVoucher),
    /// Close at once with a statement signed by both parties.
    CoopClose {
        /// The statement.
        close: CloseStatement,
        /// The client's signature of its hash.
        client_sig: [u8; 64],
        /// The worker's signature of its hash.
        worker_sig: [u8; 64],
    },
}

fn header(op: u32, query_id: u64) -> Result<CellBuilder, TonCellError> {
    let mut b = CellBuilder::new();
    b.store_u32(32, op)?.store_u64(64, query_id)?;
    Ok(b)
}

impl ChannelMsg {
    /// Its op code.
    pub fn op(&self) -> u32 {
        match self {
            ChannelMsg::Open => op::OPEN,
            ChannelMsg::TopUp => op::TOP_UP,
            ChannelMsg::ClientClose => op::CLIENT_CLOSE,
            ChannelMsg::Finalize => op::FINALIZE,
            ChannelMsg::TimeoutRefund => op::TIMEOUT_REFUND,
            ChannelMsg::WorkerClose(_) => op::WORKER_CLOSE,
            ChannelMsg::Challenge(_) => op::CHALLENGE,
            ChannelMsg::CoopClose { .. } => op::COOP_CLOSE,
        }
    }

    /// The body `op:uint32 query_id:uint64 ...` (README "Incoming messages").
    pub fn body(&self, query_id: u64) -> Result<Cell, TonCellError> {
        let mut b = header(self.op(), query_id)?;
        match self {
            ChannelMsg::WorkerClose(v) | ChannelMsg::Challenge(v) => {
                b.store_slice(&v.signature)?
                    .store_child(voucher_cell(&v.voucher)?)?;
            }
            ChannelMsg::CoopClose {
                close,
                client_sig,
                worker_sig,
            } => {
                let worker = CellBuilder::new().store_slice(worker_sig)?.build()?;
                b.store_slice(client_sig)?
                    .store_child(close_cell(close)?)?
                    .store_child(worker)?;
            }
            _ => {}
        }
        b.build()
    }
}

/// The anchor post body: `anchor#616e6368 query_id:uint64 root:uint256 batch_size:uint32`.
pub fn anchor_body(root: &[u8; 32], batch_size: u32, query_id: u64) -> Result<Cell, TonCellError> {
    header(op::ANCHOR, query_id)?
        .store_slice(root)?
        .store_u32(32, batch_size)?
        .build()
}

/// A channel's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelStatus {
    /// Deployed (or about to be) but not opened.
    Unfunded,
    /// Open: vouchers are good.
    Open,
    /// A unilateral close is running; challenges are accepted until the window ends.
    Closing,
    /// Paid out; terminal.
    Closed,
}

/// What `get_channel()` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelState {
    /// The channel id.
    pub channel_id: u64,
    /// The status.
    pub status: ChannelStatus,
    /// Credited deposit, nanoTON.
    pub deposit: u128,
    /// Amount proven or paid to the worker, nanoTON.
    pub settled_amount: u128,
    /// Seq of the settled voucher or close statement.
    pub settled_seq: u64,
    /// When the unilateral close started (0 = never).
    pub close_started_at: u32,
    /// When the channel was opened (0 while unfunded).
    pub opened_at: u32,
    /// Seconds.
    pub challenge_period: u32,
    /// Seconds.
    pub worker_timeout: u32,
    /// The client's key.
    pub client_key: [u8; 32],
    /// The worker's key.
    pub worker_key: [u8; 32],
}

impl ChannelState {
    /// When a running close's challenge window ends (unixtime): finalize from then on.
    pub fn window_ends(&self) -> u64 {
        self.close_started_at as u64 + self.challenge_period as u64
    }

    /// Parses the 11 integers of `get_channel()`.
    pub fn from_stack(stack: &[StackEntry]) -> Result<Self, ChainError> {
        let mut r = StackReader::new(stack);
        Ok(Self {
            channel_id: r.uint("channel_id")?,
            status: match r.uint::<u8>("status")? {
                0 => ChannelStatus::Unfunded,
                1 => ChannelStatus::Open,
                2 => ChannelStatus::Closing,
                3 => ChannelStatus::Closed,
                s => return Err(ChainError::decode(format!("unknown channel status {s}"))),
            },
            deposit: r.uint("deposit")?,
            settled_amount: r.uint("settled_amount")?,
            settled_seq: r.uint("settled_seq")?,
            close_started_at: r.uint("close_started_at")?,
            opened_at: r.uint("opened_at")?,
            challenge_period: r.uint("challenge_period")?,
            worker_timeout: r.uint("worker_timeout")?,
            client_key: r.u256("client_key")?,
            worker_key: r.u256("worker_key")?,
        })
    }
}

/// One anchored batch, as `get_root(index)` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorEntry {
    /// The Merkle root of the batch.
    pub root: [u8; 32],
    /// Number of receipts.
    pub batch_size: u32,
    /// Unixtime of the post.
    pub posted_at: u32,
}

impl AnchorEntry {
    /// Parses `(root, batch_size, posted_at)`.
    pub fn from_stack(stack: &[StackEntry]) -> Result<Self, ChainError> {
        let mut r = StackReader::new(stack);
        Ok(Self {
            root: r.u256("root")?,
            batch_size: r.uint("batch_size")?,
            posted_at: r.uint("posted_at")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use cocoon_ledger::address::{CHANNEL_CODE_DEPTH, CHANNEL_CODE_HASH};
    use ed25519_dalek::SigningKey;

    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn golden_params() -> ChannelParams {
        ChannelParams {
            channel_id: 42,
            client_key: SigningKey::from_bytes(&[0x11; 32])
                .verifying_key()
                .to_bytes(),
            worker_key: SigningKey::from_bytes(&[0x22; 32])
                .verifying_key()
                .to_bytes(),
            client_address: TonAddress::new(0, [0x11; 32].into()),
            worker_payout: TonAddress::new(0, [0x22; 32].into()),
            challenge_period: 3600,
            worker_timeout: 604800,
        }
    }

    #[test]
    fn initial_data_matches_the_golden_vector() {
        let data = golden_params().initial_data().unwrap();
        assert_eq!(
            data.cell_hash().to_hex(),
            "0d3b99a47ecbf9ebe76ea490383f0722397ba5a9f1d51732cba72536c1bcd2d9"
        );
        let c = golden_params().contract().unwrap();
        assert_eq!(c.address.workchain, 0);
        assert_eq!(
            c.account_id(),
            <[u8; 32]>::from(Cell::cell_hash(&c.state_init))
        );
        let other = ChannelParams {
            channel_id: 43,
            ..golden_params()
        };
        assert_ne!(other.contract().unwrap().address, c.address);
    }

    #[test]
    fn the_core_knows_the_channel_code() {
        let code = channel_code();
        let (hash, depth) = (Cell::cell_hash(&code), code.cell_depth());
        assert_eq!(
            (<[u8; 32]>::from(hash.clone()), depth),
            (CHANNEL_CODE_HASH, CHANNEL_CODE_DEPTH),
            "code/channel.hex changed: set cocoon_ledger::address::CHANNEL_CODE_HASH to {} \
             and CHANNEL_CODE_DEPTH to {depth}",
            hash.to_hex()
        );
    }

    proptest::proptest! {
        /// The core derives every channel's address (and initial data) without tonlib-core,
        /// exactly as the contract deploys it.
        #[test]
        fn the_cores_address_is_the_contracts(
            channel_id: u64,
            client_key: [u8; 32],
            worker_key: [u8; 32],
            client_address: [u8; 32],
            worker_payout: [u8; 32],
            challenge_period: u32,
            worker_timeout: u32,
        ) {
            let terms = ChannelTerms {
                channel_id,
                client_key,
                worker_key,
                client_address,
                worker_payout,
                challenge_period,
                worker_timeout,
            };
            let params = terms.params();
            proptest::prop_assert_eq!(
                terms.initial_data().unwrap().hash,
                <[u8; 32]>::from(params.initial_data().unwrap().cell_hash())
            );
            proptest::prop_assert_eq!(
                terms.address().unwrap(),
                params.contract().unwrap().account_id()
            );
        }
    }

    #[test]
    fn statements_hash_as_the_voucher_module_does() {
        let v = Voucher {
            channel: [0x55; 32],
            cumulative: 1_500_000_000,
            seq: 42,
        };
        assert_eq!(
            <[u8; 32]>::from(voucher_cell(&v).unwrap().cell_hash()),
            v.hash()
        );
        let c = CloseStatement {
            channel: [0x55; 32],
            amount: 2_000_000_000,
            seq: 7,
        };
        assert_eq!(
            <[u8; 32]>::from(close_cell(&c).unwrap().cell_hash()),
            c.hash()
        );
    }

    #[test]
    fn worker_close_body_matches_the_golden_vector() {
        let signed = Voucher {
            channel: [0x55; 32],
            cumulative: 1_500_000_000,
            seq: 42,
        }
        .sign(&SigningKey::from_bytes(&[0x11; 32]));
        let body = ChannelMsg::WorkerClose(signed).body(0).unwrap();
        assert_eq!(
            body.cell_hash().to_hex(),
            "4324fc15039242f8ec91bb63c5531155c38a4a3303401f6c37295357d6445522"
        );
    }

    #[test]
    fn bodies_have_the_documented_layout() {
        for (msg, op) in [
            (ChannelMsg::Open, op::OPEN),
            (ChannelMsg::TopUp, op::TOP_UP),
            (ChannelMsg::ClientClose, op::CLIENT_CLOSE),
            (ChannelMsg::Finalize, op::FINALIZE),
            (ChannelMsg::TimeoutRefund, op::TIMEOUT_REFUND),
        ] {
            let body = msg.body(7).unwrap();
            assert_eq!((body.bit_len(), body.references().len()), (96, 0));
            let mut p = body.parser();
            assert_eq!((p.load_u32(32).unwrap(), p.load_u64(64).unwrap()), (op, 7));
        }
        let close = CloseStatement {
            channel: [1; 32],
            amount: 5,
            seq: 3,
        };
        let body = ChannelMsg::CoopClose {
            close,
            client_sig: [0xaa; 64],
            worker_sig: [0xbb; 64],
        }
        .body(0)
        .unwrap();
        assert_eq!((body.bit_len(), body.references().len()), (96 + 512, 2));
        assert_eq!(
            <[u8; 32]>::from(Cell::cell_hash(&body.references()[0])),
            close.hash()
        );
        assert_eq!(body.references()[1].data(), &[0xbb; 64][..]);
        let anchor = anchor_body(&[9; 32], 5, 1).unwrap();
        assert_eq!(anchor.bit_len(), 96 + 256 + 32);
        assert_eq!(&anchor.data()[..4], &op::ANCHOR.to_be_bytes());
    }

    #[test]
    fn code_cells_load_and_anchor_data_is_as_documented() {
        assert!(!channel_code().references().is_empty());
        assert_ne!(
            Cell::cell_hash(&channel_code()),
            Cell::cell_hash(&anchor_code())
        );
        let none = anchor_contract(None).unwrap();
        let owned = anchor_contract(Some(&TonAddress::new(0, [3; 32].into()))).unwrap();
        assert_ne!(none.address, owned.address);
        let data = none.state_init.references()[1].clone();
        assert_eq!(
            (data.bit_len(), data.data()),
            (2 + 32 + 1, &[0u8, 0, 0, 0, 0][..])
        );
    }

    #[test]
    fn get_channel_stack_parses_and_rejects_garbage() {
        let key = hex32("d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737");
        let int = |v: u64| StackEntry::from(v);
        let key_entry = StackEntry::Int(num_bigint::BigInt::from_bytes_be(
            num_bigint::Sign::Plus,
            &key,
        ));
        let mut stack = vec![
            int(42),
            int(2),
            int(9_950_000_000),
            int(1_500_000_000),
            int(3),
            int(1000),
            int(900),
            int(3600),
            int(604800),
            key_entry.clone(),
            key_entry,
        ];
        let s = ChannelState::from_stack(&stack).unwrap();
        assert_eq!(s.status, ChannelStatus::Closing);
        assert_eq!(
            (s.deposit, s.settled_seq, s.client_key),
            (9_950_000_000, 3, key)
        );
        stack[1] = int(7);
        assert!(ChannelState::from_stack(&stack).is_err());
        stack[1] = StackEntry::Int((-1).into());
        assert!(ChannelState::from_stack(&stack).is_err());
        assert!(ChannelState::from_stack(&stack[..10]).is_err());
        let entry = AnchorEntry::from_stack(&[int(5), int(3), int(77)]).unwrap();
        assert_eq!(entry.root[31], 5);
        assert!(AnchorEntry::from_stack(&[StackEntry::Null, int(3), int(77)]).is_err());
    }
}
