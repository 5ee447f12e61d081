//! The durable payment journal of a node (redb: ACID, fsync on commit, crash-safe).
//!
//! Rules the callers follow, which make "nothing lost, nothing paid twice" hold across
//! `kill -9`:
//! - the client journals a voucher ([`Journal::record_client`]) *before* sending it, so a
//!   restarted client never signs the same seq twice or forgets what it promised;
//! - the worker journals its best voucher and what it delivered
//!   ([`Journal::record_worker`]) *before* streaming tokens beyond what the previous voucher
//!   paid for, so a restarted worker settles with the best voucher it ever acknowledged.
//!
//! Records are JSON values in two tables keyed by channel. A write that would lower a
//! channel's promised or paid total is refused ([`JournalError::Regression`]): the journal
//! itself guards the monotonicity the channel cores promise.
//!
//! Opening checks the file before trusting it ([`Journal::open`]): a damaged journal is
//! refused with [`JournalError::Corrupt`] and left exactly as it was, for the operator to
//! restore from a backup. The check runs redb's integrity check (every page checksum of the
//! committed trees) and decodes every record, on a scratch view of the file whose writes stay
//! in memory (`Scratch`), so that neither a repair nor a panic inside redb can touch the
//! file; only a journal that passes is then opened for real.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::backends::FileBackend;
use redb::{
    Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageBackend,
    StorageError, TableDefinition, TableError, TableHandle,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::channel::WorkerState;
use crate::settle::Receipt;
use crate::voucher::SignedVoucher;

const CLIENT: TableDefinition<&[u8], &[u8]> = TableDefinition::new("client_channels");
const WORKER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("worker_channels");
/// Job receipts by sequence number (from 1).
const RECEIPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("receipts");
/// Anchored batches by index (from 0).
const ANCHORS: TableDefinition<u64, &[u8]> = TableDefinition::new("anchors");
/// Closes a worker sent, by channel: a restarted worker does not send one twice.
const CLOSES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("closes_sent");

/// A unilateral close the worker sent (journalled before sending it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseSent {
    /// The voucher's seq it closes with.
    pub seq: u64,
    /// When it was sent (unix seconds).
    pub at: u64,
}

/// A batch of receipts whose Merkle root was posted to the anchor contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorRecord {
    /// The Merkle root posted.
    pub root: [u8; 32],
    /// The first receipt's sequence number.
    pub first: u64,
    /// The last receipt's sequence number (the batch is `first..=last`).
    pub last: u64,
    /// When it was posted (unix seconds).
    pub posted_at: u64,
}

/// The parameters a channel contract is deployed with (its address derives from them and
/// the contract code: [`ChannelTerms::address`]), as both sides journal them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelTerms {
    /// The contract's `channel_id`.
    pub channel_id: u64,
    /// The client's voucher key.
    pub client_key: [u8; 32],
    /// The worker's key.
    pub worker_key: [u8; 32],
    /// The client's wallet (basechain account id).
    pub client_address: [u8; 32],
    /// The worker's payout wallet (basechain account id).
    pub worker_payout: [u8; 32],
    /// Challenge window, seconds.
    pub challenge_period: u32,
    /// Seconds after opening when the client may take an unclaimed deposit back.
    pub worker_timeout: u32,
}

/// What a client keeps per channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The channel's parameters (`None` in records written before they were kept).
    #[serde(default)]
    pub terms: Option<ChannelTerms>,
    /// Deposit, nanoTON.
    pub deposit: u64,
    /// Total promised (the last voucher's cumulative amount).
    pub paid: u64,
    /// The last seq signed.
    pub seq: u64,
    /// The last voucher, to resend if the worker missed it.
    pub last: Option<SignedVoucher>,
    /// A job on the channel has not ended cleanly: set before its request is sent, cleared
    /// with the final voucher after its `Done`. While it is clear, the worker cannot have
    /// delivered more than the client signed; while set (the client crashed or the job
    /// broke) by at most one credit window.
    #[serde(default)]
    pub job_open: bool,
}

/// What a worker keeps per channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// The channel's parameters (`None` in records written before they were kept).
    #[serde(default)]
    pub terms: Option<ChannelTerms>,
    /// Deposit, nanoTON.
    pub deposit: u64,
    /// The client's ed25519 key.
    pub client_key: [u8; 32],
    /// Best voucher and delivered value.
    pub state: WorkerState,
    /// When the channel last carried a job (unix seconds; 0 = unknown).
    #[serde(default)]
    pub last_activity: u64,
}

/// Journal failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The database failed (I/O, corruption).
    #[error("journal: {0}")]
    Db(String),
    /// Another process has the journal open.
    #[error("journal {0} is in use by another process")]
    InUse(String),
    /// The file is not a sound journal (damaged, truncated, or not a journal at all). It was
    /// not modified.
    #[error(
        "journal {} is corrupt: {reason}. cocoon does not modify it: move it aside and \
         restore the journal from a backup (starting without it forgets the channels and \
         vouchers it records)",
        path.display()
    )]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A record could not be (de)serialised.
    #[error("journal record: {0}")]
    Record(#[from] serde_json::Error),
    /// A write would lower a total already journalled.
    #[error("journal refuses to lower channel {channel} from {have} to {got}")]
    Regression {
        /// The channel (hex).
        channel: String,
        /// Journalled amount.
        have: u64,
        /// Attempted amount.
        got: u64,
    },
}

fn dberr<E: std::fmt::Display>(e: E) -> JournalError {
    JournalError::Db(e.to_string())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decodes a record as the journal stores it (JSON). Never panics, whatever the bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JournalError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// A node's payment journal.
#[derive(Debug)]
pub struct Journal {
    db: Database,
    commits: std::sync::atomic::AtomicU64,
    found_empty: bool,
}

/// The text of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Whether a redb error says the file's content is bad (rather than, say, a permission).
fn is_damage(e: &DatabaseError) -> bool {
    match e {
        DatabaseError::Storage(StorageError::Corrupted(_)) => true,
        DatabaseError::Storage(StorageError::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

impl Journal {
    /// Opens (or creates) the journal at `path`.
    ///
    /// An existing journal is checked first, without being modified: a damaged one is
    /// refused ([`JournalError::Corrupt`]). An empty file is taken as a new journal, with a
    /// warning, since it may be a journal lost in a failed copy or restore; see
    /// [`Journal::found_empty`].
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let at = |e: &dyn std::fmt::Display| JournalError::Db(format!("{}: {e}", path.display()));
        let len = match std::fs::metadata(path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(at(&e)),
        };
        let found_empty = len == Some(0);
        match len {
            None => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| at(&e))?;
                }
            }
            Some(0) => tracing::warn!(
                path = %path.display(),
                "the journal file is empty: starting a new journal in it. An empty journal \
                 may be a lost one (a failed copy or restore): if this data dir had payment \
                 channels, stop and restore the journal from a backup"
            ),
            Some(_) => verify(path)?,
        }
        let opened = catch_unwind(|| -> Result<Database, JournalError> {
            let db = Database::create(path).map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen => {
                    JournalError::InUse(path.display().to_string())
                }
                e => at(&e),
            })?;
            let tx = db.begin_write().map_err(|e| at(&e))?;
            tx.open_table(CLIENT).map_err(|e| at(&e))?;
            tx.open_table(WORKER).map_err(|e| at(&e))?;
            tx.open_table(RECEIPTS).map_err(|e| at(&e))?;
            tx.open_table(ANCHORS).map_err(|e| at(&e))?;
            tx.open_table(CLOSES).map_err(|e| at(&e))?;
            tx.commit().map_err(|e| at(&e))?;
            Ok(db)
        });
        let db = match opened {
            Ok(db) => db?,
            // The file passed the check: a panic now is redb's, or the file changed since.
            Err(panic) => {
                return Err(at(&format!(
                    "redb failed opening it after it passed the check ({})",
                    panic_text(&*panic)
                )))
            }
        };
        Ok(Self {
            db,
            commits: Default::default(),
            found_empty,
        })
    }

    /// Whether the journal file existed but was empty when opened: it was taken as a new
    /// journal, and the open logged a warning, since it may be a lost one.
    pub fn found_empty(&self) -> bool {
        self.found_empty
    }

    /// Commits `tx` (one fsync) and counts it.
    fn commit(&self, tx: redb::WriteTransaction) -> Result<(), JournalError> {
        tx.commit().map_err(dberr)?;
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Write transactions committed since the journal was opened (each one fsync).
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Applies `writes` in one transaction: one commit, one fsync, however many jobs wrote.
    /// Each write is checked as its single form is (a refused one is left out, the others
    /// are kept); the outer error is a failed commit, which keeps none.
    pub fn write_batch(
        &self,
        writes: &[Write],
    ) -> Result<Vec<Result<(), JournalError>>, JournalError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        let results = writes
            .iter()
            .map(|w| match w {
                Write::Client(channel, r) => put_client(&tx, channel, r),
                Write::Worker(channel, r) => put_worker(&tx, channel, r),
                Write::Receipt(receipt) => receipt_in(&tx, receipt).map(|_| ()),
            })
            .collect();
        self.commit(tx)?;
        Ok(results)
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&[u8], &[u8]>,
        channel: &[u8; 32],
    ) -> Result<Option<T>, JournalError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(table).map_err(dberr)?;
        match t.get(channel.as_slice()).map_err(dberr)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Durably records what the client promised on `channel` (before sending the voucher).
    pub fn record_client(&self, channel: &[u8; 32], r: &ClientRecord) -> Result<(), JournalError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        put_client(&tx, channel, r)?;
        self.commit(tx)
    }

    /// The client's record of `channel`.
    pub fn client(&self, channel: &[u8; 32]) -> Result<Option<ClientRecord>, JournalError> {
        self.get(CLIENT, channel)
    }

    /// Durably records the worker's best voucher and delivery on `channel` (before streaming
    /// past what the previous voucher paid for).
    pub fn record_worker(&self, channel: &[u8; 32], r: &WorkerRecord) -> Result<(), JournalError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        put_worker(&tx, channel, r)?;
        self.commit(tx)
    }

    /// The worker's record of `channel`.
    pub fn worker(&self, channel: &[u8; 32]) -> Result<Option<WorkerRecord>, JournalError> {
        self.get(WORKER, channel)
    }

    /// Durably notes a close about to be sent on `channel` (a later one replaces it).
    pub fn record_close(&self, channel: &[u8; 32], close: &CloseSent) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(close)?;
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = tx.open_table(CLOSES).map_err(dberr)?;
            t.insert(channel.as_slice(), bytes.as_slice())
                .map_err(dberr)?;
        }
        self.commit(tx)
    }

    /// The last close sent on `channel`.
    pub fn close_sent(&self, channel: &[u8; 32]) -> Result<Option<CloseSent>, JournalError> {
        self.get(CLOSES, channel)
    }

    /// Every channel the worker has a record of (to settle on shutdown or restart).
    pub fn worker_channels(&self) -> Result<Vec<([u8; 32], WorkerRecord)>, JournalError> {
        self.all(WORKER)
    }

    /// Every channel the client has a record of.
    pub fn client_channels(&self) -> Result<Vec<([u8; 32], ClientRecord)>, JournalError> {
        self.all(CLIENT)
    }

    /// Appends a job receipt; returns its sequence number.
    pub fn add_receipt(&self, receipt: &Receipt) -> Result<u64, JournalError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        let seq = receipt_in(&tx, receipt)?;
        self.commit(tx)?;
        Ok(seq)
    }

    /// The receipts not yet in an anchored batch, oldest first.
    pub fn pending_receipts(&self) -> Result<Vec<(u64, Receipt)>, JournalError> {
        let after = self.anchors()?.last().map_or(0, |a| a.last);
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(RECEIPTS).map_err(dberr)?;
        let mut out = Vec::new();
        for row in t.range(after + 1..).map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            out.push((k.value(), decode(v.value())?));
        }
        Ok(out)
    }

    /// The receipts `first..=last` (an anchored batch, to prove one of them).
    pub fn receipts(&self, first: u64, last: u64) -> Result<Vec<Receipt>, JournalError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(RECEIPTS).map_err(dberr)?;
        let mut out = Vec::new();
        for row in t.range(first..=last).map_err(dberr)? {
            out.push(decode(row.map_err(dberr)?.1.value())?);
        }
        Ok(out)
    }

    /// Records a posted batch (after the chain took it).
    pub fn record_anchor(&self, anchor: &AnchorRecord) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(anchor)?;
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = tx.open_table(ANCHORS).map_err(dberr)?;
            let next = t.last().map_err(dberr)?.map_or(0, |(k, _)| k.value() + 1);
            t.insert(next, bytes.as_slice()).map_err(dberr)?;
        }
        self.commit(tx)
    }

    /// Every anchored batch, in order.
    pub fn anchors(&self) -> Result<Vec<AnchorRecord>, JournalError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(ANCHORS).map_err(dberr)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(dberr)? {
            out.push(decode(row.map_err(dberr)?.1.value())?);
        }
        Ok(out)
    }

    fn all<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&[u8], &[u8]>,
    ) -> Result<Vec<([u8; 32], T)>, JournalError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(table).map_err(dberr)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            if let Ok(key) = <[u8; 32]>::try_from(k.value()) {
                out.push((key, decode(v.value())?));
            }
        }
        Ok(out)
    }
}

/// The first bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Checks the journal at `path` (an existing, non-empty file) without modifying it: redb's
/// magic number, then redb's integrity check and every record, on a [`Scratch`] view.
fn verify(path: &Path) -> Result<(), JournalError> {
    let at = |e: &dyn std::fmt::Display| JournalError::Db(format!("{}: {e}", path.display()));
    let corrupt = |reason: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    // Read and write access for redb's locks; nothing is ever written through it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| at(&e))?;
    let mut magic = [0u8; REDB_MAGIC.len()];
    match std::io::Read::read_exact(&mut &file, &mut magic) {
        Ok(()) if magic == REDB_MAGIC => {}
        Ok(()) => return Err(corrupt("it does not start with redb's magic number".into())),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(corrupt("it is shorter than a redb header".into()))
        }
        Err(e) => return Err(at(&e)),
    }
    let backend = Scratch::new(file).map_err(|e| at(&e))?;
    let checked = catch_unwind(AssertUnwindSafe(|| -> Result<(), JournalError> {
        let db = Builder::new()
            .set_check_integrity_on_open(true)
            .create_with_backend(backend)
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen => {
                    JournalError::InUse(path.display().to_string())
                }
                e if is_damage(&e) => corrupt(e.to_string()),
                e => at(&e),
            })?;
        let tx = db.begin_read().map_err(|e| at(&e))?;
        let bad = |table: &str, e: &dyn std::fmt::Display| corrupt(format!("table {table}: {e}"));
        for table in [CLIENT, WORKER, CLOSES] {
            let name = table.name().to_string();
            let t = match tx.open_table(table) {
                Ok(t) => t,
                // Journals of older versions lack newer tables.
                Err(TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(bad(&name, &e)),
            };
            for row in t.iter().map_err(|e| bad(&name, &e))? {
                let (k, v) = row.map_err(|e| bad(&name, &e))?;
                let v = v.value();
                let ok = match table.name() {
                    "client_channels" => decode::<ClientRecord>(v).map(drop),
                    "worker_channels" => decode::<WorkerRecord>(v).map(drop),
                    _ => decode::<CloseSent>(v).map(drop),
                };
                ok.map_err(|e| bad(&name, &format!("the record of {}: {e}", hex(k.value()))))?;
            }
        }
        for table in [RECEIPTS, ANCHORS] {
            let name = table.name().to_string();
            let t = match tx.open_table(table) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(bad(&name, &e)),
            };
            for row in t.iter().map_err(|e| bad(&name, &e))? {
                let (k, v) = row.map_err(|e| bad(&name, &e))?;
                let ok = if table.name() == "receipts" {
                    decode::<Receipt>(v.value()).map(drop)
                } else {
                    decode::<AnchorRecord>(v.value()).map(drop)
                };
                ok.map_err(|e| bad(&name, &format!("record {}: {e}", k.value())))?;
            }
        }
        Ok(())
    }));
    match checked {
        Ok(result) => result,
        Err(panic) => Err(corrupt(format!(
            "redb failed on it ({})",
            panic_text(&*panic)
        ))),
    }
}

/// Bytes per block of a [`Scratch`]'s in-memory writes.
const BLOCK: u64 = 4096;

/// A redb storage backend over a file that takes redb's locks on it and reads it, but keeps
/// every write (and length change) in memory: the file is never modified. Opening a
/// database on it runs redb's recovery and integrity check with no effect on disk.
#[derive(Debug)]
struct Scratch {
    file: FileBackend,
    state: Mutex<ScratchState>,
}

#[derive(Debug)]
struct ScratchState {
    /// Bytes below this are the file's (unless overwritten); above it, zeros.
    file_len: u64,
    /// The length redb sees.
    len: u64,
    /// Written blocks, by index.
    blocks: BTreeMap<u64, Box<[u8]>>,
}

impl Scratch {
    fn new(file: std::fs::File) -> std::io::Result<Self> {
        let file_len = file.metadata()?.len();
        let file = FileBackend::new(file).map_err(std::io::Error::other)?;
        Ok(Self {
            file,
            state: Mutex::new(ScratchState {
                file_len,
                len: file_len,
                blocks: BTreeMap::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ScratchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills `out` from offset `at`, all below `state.len`.
    fn read_in(&self, state: &ScratchState, at: u64, out: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < out.len() {
            let pos = at + done as u64;
            let block = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = (BLOCK as usize - within).min(out.len() - done);
            let dst = &mut out[done..done + n];
            match state.blocks.get(&block) {
                Some(b) => dst.copy_from_slice(&b[within..within + n]),
                None => {
                    let from_file = state.file_len.saturating_sub(pos).min(n as u64) as usize;
                    if from_file > 0 {
                        self.file.read(pos, &mut dst[..from_file])?;
                    }
                    dst[from_file..].fill(0);
                }
            }
            done += n;
        }
        Ok(())
    }
}

impl StorageBackend for Scratch {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.state().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let state = self.state();
        if offset.saturating_add(out.len() as u64) > state.len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.read_in(&state, offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut state = self.state();
        if len < state.len {
            // Bytes cut off read as zeros if the storage grows again.
            state.file_len = state.file_len.min(len);
            state.blocks.split_off(&len.div_ceil(BLOCK));
            if !len.is_multiple_of(BLOCK) {
                if let Some(b) = state.blocks.get_mut(&(len / BLOCK)) {
                    b[(len % BLOCK) as usize..].fill(0);
                }
            }
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut state = self.state();
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        state.len = state.len.max(end);
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let block = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = (BLOCK as usize - within).min(data.len() - done);
            if !state.blocks.contains_key(&block) {
                let mut fresh = vec![0u8; BLOCK as usize].into_boxed_slice();
                let start = block * BLOCK;
                let readable = state.len.saturating_sub(start).min(BLOCK) as usize;
                self.read_in(&state, start, &mut fresh[..readable])?;
                state.blocks.insert(block, fresh);
            }
            let b = state.blocks.get_mut(&block).expect("inserted above");
            b[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.file.close()
    }

    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// One write of a batch ([`Journal::write_batch`], [`JournalWriter`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// [`Journal::record_client`].
    Client([u8; 32], ClientRecord),
    /// [`Journal::record_worker`].
    Worker([u8; 32], WorkerRecord),
    /// [`Journal::add_receipt`].
    Receipt(Receipt),
}

fn worker_paid(s: &WorkerState) -> u64 {
    s.best.map_or(0, |b| b.voucher.cumulative)
}

/// A client record, refused if it lowers the promised total.
fn put_client(
    tx: &redb::WriteTransaction,
    channel: &[u8; 32],
    r: &ClientRecord,
) -> Result<(), JournalError> {
    let total = |b: &[u8]| Ok(decode::<ClientRecord>(b)?.paid);
    put_in(tx, CLIENT, channel, r, total, r.paid)
}

/// A worker record, refused if it lowers the best voucher's total.
fn put_worker(
    tx: &redb::WriteTransaction,
    channel: &[u8; 32],
    r: &WorkerRecord,
) -> Result<(), JournalError> {
    let total = |b: &[u8]| Ok(worker_paid(&decode::<WorkerRecord>(b)?.state));
    put_in(tx, WORKER, channel, r, total, worker_paid(&r.state))
}

fn put_in<T: Serialize>(
    tx: &redb::WriteTransaction,
    table: TableDefinition<&[u8], &[u8]>,
    channel: &[u8; 32],
    record: &T,
    total: impl Fn(&[u8]) -> Result<u64, JournalError>,
    new_total: u64,
) -> Result<(), JournalError> {
    let bytes = serde_json::to_vec(record)?;
    let mut t = tx.open_table(table).map_err(dberr)?;
    if let Some(old) = t.get(channel.as_slice()).map_err(dberr)? {
        let have = total(old.value())?;
        if new_total < have {
            return Err(JournalError::Regression {
                channel: hex(channel),
                have,
                got: new_total,
            });
        }
    }
    t.insert(channel.as_slice(), bytes.as_slice())
        .map_err(dberr)?;
    Ok(())
}

fn receipt_in(tx: &redb::WriteTransaction, receipt: &Receipt) -> Result<u64, JournalError> {
    let bytes = serde_json::to_vec(receipt)?;
    let mut t = tx.open_table(RECEIPTS).map_err(dberr)?;
    let next = t.last().map_err(dberr)?.map_or(1, |(k, _)| k.value() + 1);
    t.insert(next, bytes.as_slice()).map_err(dberr)?;
    Ok(next)
}

/// Writes waiting for the journal thread at most; a full queue makes writers wait.
pub const WRITE_QUEUE: usize = 1024;
/// Most writes committed together.
pub const MAX_BATCH: usize = 256;

type Pending = (
    Write,
    tokio::sync::oneshot::Sender<Result<(), JournalError>>,
);

/// The journal's owner thread: async callers hand it writes and wait for their commit;
/// it commits whatever has queued up meanwhile in one transaction (group commit), so
/// concurrent jobs share each fsync instead of queueing behind one lock, and no fsync ever
/// runs on an async runtime's thread. Dropping every handle stops the thread.
#[derive(Clone, Debug)]
pub struct JournalWriter {
    journal: std::sync::Arc<Journal>,
    queue: tokio::sync::mpsc::Sender<Pending>,
}

impl JournalWriter {
    /// Starts the owner thread of `journal`, committing up to [`MAX_BATCH`] writes together.
    pub fn start(journal: std::sync::Arc<Journal>) -> Result<Self, JournalError> {
        Self::start_batched(journal, MAX_BATCH)
    }

    /// Starts the owner thread of `journal`, committing up to `max_batch` writes together
    /// (1: one commit per write, as a journal without group commit; for comparisons).
    pub fn start_batched(
        journal: std::sync::Arc<Journal>,
        max_batch: usize,
    ) -> Result<Self, JournalError> {
        let max_batch = max_batch.max(1);
        let (queue, mut rx) = tokio::sync::mpsc::channel::<Pending>(WRITE_QUEUE);
        let owner = journal.clone();
        std::thread::Builder::new()
            .name("cocoon-journal".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < max_batch {
                        match rx.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                    let (writes, replies): (Vec<Write>, Vec<_>) = batch.into_iter().unzip();
                    match owner.write_batch(&writes) {
                        Ok(results) => {
                            for (reply, result) in replies.into_iter().zip(results) {
                                let _ = reply.send(result);
                            }
                        }
                        Err(e) => {
                            let why = e.to_string();
                            for reply in replies {
                                let _ = reply.send(Err(JournalError::Db(why.clone())));
                            }
                        }
                    }
                }
            })
            .map_err(dberr)?;
        Ok(Self { journal, queue })
    }

    /// Writes `w` durably; returns once it is committed (or refused).
    pub async fn write(&self, w: Write) -> Result<(), JournalError> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.queue
            .send((w, reply))
            .await
            .map_err(|_| JournalError::Db("the journal thread stopped".into()))?;
        done.await
            .map_err(|_| JournalError::Db("the journal thread stopped".into()))?
    }

    /// The journal, to read.
    pub fn journal(&self) -> &std::sync::Arc<Journal> {
        &self.journal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{ClientChannel, WorkerChannel};
    use ed25519_dalek::SigningKey;
    use std::io::{BufRead, BufReader, Write};

    const CH: [u8; 32] = [4; 32];

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3; 32])
    }

    fn worker_record(paid: u64, delivered: u64) -> WorkerRecord {
        let v = crate::voucher::Voucher {
            channel: CH,
            cumulative: paid,
            seq: paid,
        }
        .sign(&key());
        WorkerRecord {
            terms: None,
            deposit: 1_000_000,
            client_key: key().verifying_key().to_bytes(),
            state: WorkerState {
                best: Some(v),
                delivered,
            },
            last_activity: 0,
        }
    }

    /// Concurrent writers share commits; a refused write in a batch leaves the others.
    #[test]
    fn the_journal_thread_commits_concurrent_writes_together() {
        let dir = tempfile::tempdir().unwrap();
        let journal = std::sync::Arc::new(Journal::open(&dir.path().join("j.redb")).unwrap());
        journal
            .record_worker(&CH, &worker_record(500, 500))
            .unwrap();
        let results = journal
            .write_batch(&[
                super::Write::Worker(CH, worker_record(400, 400)),
                super::Write::Worker([5; 32], worker_record(10, 10)),
            ])
            .unwrap();
        assert!(matches!(results[0], Err(JournalError::Regression { .. })));
        assert!(results[1].is_ok());
        assert_eq!(
            journal.worker(&[5; 32]).unwrap(),
            Some(worker_record(10, 10))
        );
        assert_eq!(journal.worker(&CH).unwrap(), Some(worker_record(500, 500)));

        let writer = JournalWriter::start(journal.clone()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..16u8)
                .map(|i| {
                    let w = writer.clone();
                    tokio::spawn(async move {
                        for n in 1..=20u64 {
                            let mut r = worker_record(n, n);
                            r.last_activity = u64::from(i);
                            w.write(super::Write::Worker([100 + i; 32], r))
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let refused = writer
                .write(super::Write::Worker([100; 32], worker_record(1, 1)))
                .await;
            assert!(matches!(refused, Err(JournalError::Regression { .. })));
        });
        for i in 0..16u8 {
            let r = journal.worker(&[100 + i; 32]).unwrap().unwrap();
            assert_eq!(r.state.delivered, 20);
        }
    }

    #[test]
    fn records_survive_reopening_and_never_go_down() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let mut client = ClientChannel::new(CH, 1_000, key());
        let v = client.pay_up_to(300).unwrap().unwrap();
        {
            let j = Journal::open(&path).unwrap();
            let rec = ClientRecord {
                terms: None,
                deposit: 1_000,
                paid: client.paid(),
                seq: client.seq(),
                last: Some(v),
                job_open: false,
            };
            j.record_client(&CH, &rec).unwrap();
            let lower = ClientRecord { paid: 100, ..rec };
            assert!(matches!(
                j.record_client(&CH, &lower),
                Err(JournalError::Regression {
                    have: 300,
                    got: 100,
                    ..
                })
            ));
            let mut worker = WorkerChannel::new(CH, 1_000, key().verifying_key(), 500);
            worker.accept(&v).unwrap();
            worker.deliver(350).unwrap();
            j.record_worker(
                &CH,
                &WorkerRecord {
                    terms: None,
                    deposit: 1_000,
                    client_key: key().verifying_key().to_bytes(),
                    state: worker.state(),
                    last_activity: 0,
                },
            )
            .unwrap();
        }
        let j = Journal::open(&path).unwrap();
        let c = j.client(&CH).unwrap().unwrap();
        assert_eq!((c.paid, c.seq), (300, 1));
        let w = j.worker(&CH).unwrap().unwrap();
        assert_eq!(w.state.best.unwrap().voucher.cumulative, 300);
        assert_eq!(w.state.delivered, 350);
        assert_eq!(j.worker_channels().unwrap().len(), 1);
        assert!(j.client(&[0; 32]).unwrap().is_none());

        // Receipts wait until their batch is anchored.
        let receipt = |job| Receipt {
            channel: CH,
            job,
            prompt_tokens: 3,
            completion_tokens: 4,
            cost: 5,
            finished_at: 6,
        };
        assert_eq!(j.add_receipt(&receipt(1)).unwrap(), 1);
        assert_eq!(j.add_receipt(&receipt(2)).unwrap(), 2);
        assert_eq!(j.pending_receipts().unwrap().len(), 2);
        j.record_anchor(&AnchorRecord {
            root: [9; 32],
            first: 1,
            last: 2,
            posted_at: 7,
        })
        .unwrap();
        j.add_receipt(&receipt(3)).unwrap();
        let pending = j.pending_receipts().unwrap();
        assert_eq!(pending, vec![(3, receipt(3))]);
        assert_eq!(j.receipts(1, 2).unwrap(), vec![receipt(1), receipt(2)]);
        assert_eq!(j.anchors().unwrap().len(), 1);
    }

    /// A journal with records in its tables, closed cleanly: its bytes, and the bytes it had
    /// while open (as a crash would leave them: redb must recover it).
    fn valid_journal(path: &Path) -> (Vec<u8>, Vec<u8>) {
        let j = Journal::open(path).unwrap();
        for i in 0..50u8 {
            j.record_worker(&[i; 32], &worker_record(u64::from(i) + 1, 1))
                .unwrap();
        }
        j.record_close(&CH, &CloseSent { seq: 1, at: 2 }).unwrap();
        let unclean = std::fs::read(path).unwrap();
        drop(j);
        (std::fs::read(path).unwrap(), unclean)
    }

    /// Deterministic noise (xorshift64).
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    /// Damaged files of every kind: each is refused with an error naming the file and
    /// what to do, without a panic, and left exactly as it was.
    #[test]
    fn a_corrupt_journal_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (good, unclean) = valid_journal(&dir.path().join("good.redb"));
        assert!(good.len() > 8 * 4096, "{} bytes", good.len());
        assert_ne!(good, unclean);
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("random bytes", noise(good.len(), 1)),
            ("short random bytes", noise(100, 2)),
        ];
        let mut header_kept = noise(good.len(), 3);
        header_kept[..4096].copy_from_slice(&good[..4096]);
        cases.push(("random pages behind a valid header", header_kept));
        cases.push(("truncated to half", good[..good.len() / 2].to_vec()));
        cases.push(("truncated into the header", good[..100].to_vec()));
        let flip = |bytes: &[u8]| {
            let mut flipped = bytes.to_vec();
            for page in flipped.chunks_mut(4096).skip(1) {
                for i in [0, 1, 7, 16, 64, 200, 1000, 4000] {
                    if let Some(b) = page.get_mut(i) {
                        *b ^= 0xff;
                    }
                }
            }
            flipped
        };
        cases.push(("bytes flipped in every page", flip(&good)));
        cases.push(("a crashed journal's bytes flipped", flip(&unclean)));
        let mut header_kept = noise(unclean.len(), 4);
        header_kept[..4096].copy_from_slice(&unclean[..4096]);
        cases.push(("a crashed journal's pages random", header_kept));
        cases.push((
            "a crashed journal truncated",
            unclean[..unclean.len() / 3].to_vec(),
        ));
        let mut header_flipped = good.clone();
        for b in &mut header_flipped[9..512] {
            *b ^= 0x55;
        }
        cases.push(("header flipped", header_flipped));
        for (what, bytes) in cases {
            let path = dir.path().join("journal.redb");
            std::fs::write(&path, &bytes).unwrap();
            let result = std::panic::catch_unwind(|| Journal::open(&path).map(|_| ()));
            let after = std::fs::read(&path).unwrap();
            assert!(after == bytes, "{what}: the file was modified");
            let err = match result {
                Err(_) => panic!("{what}: the open panicked"),
                Ok(Ok(())) => panic!("{what}: a corrupt journal was opened"),
                Ok(Err(e)) => e,
            };
            let text = err.to_string();
            assert!(
                text.contains(&path.display().to_string())
                    && text.contains("corrupt")
                    && text.contains("backup"),
                "{what}: {text}"
            );
        }
        // A sound journal still opens, its records intact, and so does a crashed one.
        for bytes in [&good, &unclean] {
            let path = dir.path().join("journal.redb");
            std::fs::write(&path, bytes).unwrap();
            let j = Journal::open(&path).unwrap();
            assert_eq!(j.worker_channels().unwrap().len(), 50);
            assert!(!j.found_empty());
            // The check does not mistake a journal in use for a damaged one.
            let again = Journal::open(&path).unwrap_err();
            assert!(matches!(again, JournalError::InUse(_)), "{again}");
        }
    }

    /// A sound redb file whose record is not ours is refused too, before anything runs.
    #[test]
    fn a_journal_with_an_undecodable_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        drop(Journal::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(WORKER)
                .unwrap()
                .insert(CH.as_slice(), b"{\"deposit\": 1".as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        let err = Journal::open(&path).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("worker_channels"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    /// An empty file is taken as a new journal, but flagged: it may be a lost one.
    #[test]
    fn an_empty_journal_file_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        assert!(!Journal::open(&path).unwrap().found_empty());
        let path = dir.path().join("empty.redb");
        std::fs::write(&path, b"").unwrap();
        let j = Journal::open(&path).unwrap();
        assert!(j.found_empty());
        j.record_close(&CH, &CloseSent { seq: 1, at: 2 }).unwrap();
        drop(j);
        assert!(!Journal::open(&path).unwrap().found_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever bytes a record holds, decoding it returns an error or a record: it never
        /// panics. Bytes near a real record reach deep into the decoders.
        #[test]
        fn record_decoding_never_panics(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            edits in proptest::collection::vec((0usize..2000, proptest::prelude::any::<u8>()), 0..8),
            cut in 0usize..2000,
            which in 0usize..5,
        ) {
            let receipt = Receipt {
                channel: CH,
                job: 1,
                prompt_tokens: 2,
                completion_tokens: 3,
                cost: 4,
                finished_at: 5,
            };
            let client = ClientRecord {
                terms: None,
                deposit: 1,
                paid: 2,
                seq: 3,
                last: worker_record(5, 5).state.best,
                job_open: true,
            };
            let real = [
                serde_json::to_vec(&client).unwrap(),
                serde_json::to_vec(&worker_record(5, 6)).unwrap(),
                serde_json::to_vec(&receipt).unwrap(),
                serde_json::to_vec(&AnchorRecord { root: [1; 32], first: 1, last: 2, posted_at: 3 }).unwrap(),
                serde_json::to_vec(&CloseSent { seq: 1, at: 2 }).unwrap(),
            ];
            let mut near = real[which].clone();
            for (at, b) in edits {
                let len = near.len();
                near[at % len] = b;
            }
            near.truncate(cut);
            for bytes in [raw, near] {
                let _ = decode::<ClientRecord>(&bytes);
                let _ = decode::<WorkerRecord>(&bytes);
                let _ = decode::<Receipt>(&bytes);
                let _ = decode::<AnchorRecord>(&bytes);
                let _ = decode::<CloseSent>(&bytes);
            }
        }

        /// A journal with bytes changed anywhere either opens or is refused as corrupt; the
        /// open never panics, and a refused file is left as it was.
        #[test]
        fn a_damaged_journal_never_panics_the_open(
            flips in proptest::collection::vec((0usize..1 << 20, 1u8..=255), 1..12),
            crashed in proptest::prelude::any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (good, unclean) = valid_journal(&dir.path().join("good.redb"));
            let mut bytes = if crashed { unclean } else { good };
            for (at, x) in flips {
                let len = bytes.len();
                bytes[at % len] ^= x;
            }
            let path = dir.path().join("journal.redb");
            std::fs::write(&path, &bytes).unwrap();
            let result = std::panic::catch_unwind(|| Journal::open(&path).map(drop));
            proptest::prop_assert!(result.is_ok(), "the open panicked");
            if let Ok(Err(e)) = result {
                proptest::prop_assert!(matches!(e, JournalError::Corrupt { .. }), "{}", e);
                proptest::prop_assert!(std::fs::read(&path).unwrap() == bytes, "modified");
            }
        }
    }

    /// The child side of the crash test: pays in a loop, journalling each voucher before
    /// acknowledging it on stdout, until killed.
    #[test]
    #[ignore = "run as a child process by crash_during_payments_loses_nothing_and_reuses_no_seq"]
    fn crash_child() {
        let Ok(path) = std::env::var("COCOON_JOURNAL_CHILD") else {
            return;
        };
        let j = Journal::open(Path::new(&path)).unwrap();
        let mut client = match j.client(&CH).unwrap() {
            Some(r) => ClientChannel::restore(CH, r.deposit, key(), r.paid, r.seq),
            None => ClientChannel::new(CH, u64::MAX / 2, key()),
        };
        let mut out = std::io::stdout();
        loop {
            let v = client.pay_up_to(client.paid() + 10).unwrap().unwrap();
            j.record_client(
                &CH,
                &ClientRecord {
                    terms: None,
                    deposit: u64::MAX / 2,
                    paid: client.paid(),
                    seq: client.seq(),
                    last: Some(v),
                    job_open: false,
                },
            )
            .unwrap();
            // Only now is the voucher "sent".
            writeln!(out, "sent {} {}", v.voucher.seq, v.voucher.cumulative).unwrap();
            out.flush().unwrap();
        }
    }

    #[test]
    fn crash_during_payments_loses_nothing_and_reuses_no_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let mut last_sent = (0u64, 0u64);
        for round in 0..2 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "journal::tests::crash_child",
                    "--ignored",
                    "--nocapture",
                ])
                .env("COCOON_JOURNAL_CHILD", &path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut sent = 0;
            while sent < 40 {
                let line = lines.next().expect("child output").unwrap();
                if let Some(rest) = line.strip_prefix("sent ") {
                    let mut it = rest.split(' ').map(|x| x.parse::<u64>().unwrap());
                    let seq = it.next().unwrap();
                    let total = it.next().unwrap();
                    // A restarted client continues after what it sent: no seq reused.
                    assert!(seq > last_sent.0, "round {round}: seq {seq} reused");
                    last_sent = (seq, total);
                    sent += 1;
                }
            }
            child.kill().unwrap(); // SIGKILL: no destructors, no flush
            child.wait().unwrap();
            let j = Journal::open(&path).unwrap();
            let rec = j.client(&CH).unwrap().unwrap();
            // Everything acknowledged as sent is in the journal.
            assert!(
                rec.seq >= last_sent.0 && rec.paid >= last_sent.1,
                "round {round}"
            );
            assert_eq!(rec.paid, rec.seq * 10, "records are whole");
            last_sent = (rec.seq, rec.paid);
        }
    }
}
