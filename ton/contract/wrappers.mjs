// JavaScript reference encoders + @ton/core Contract wrappers for channel.tolk and
// anchor.tolk. These mirror README.md exactly; the Rust side implements the same layouts.
import {
    Address,
    beginCell,
    Cell,
    contractAddress,
    Dictionary,
    SendMode,
    toNano,
} from '@ton/core';
import { sign } from '@ton/crypto';

// ---------------------------------------------------------------------------
// Constants (must match channel.tolk / anchor.tolk)
// ---------------------------------------------------------------------------

export const Op = {
    open: 0x6f70656e,
    topUp: 0x746f7075,
    coopClose: 0x636c6f73,
    workerClose: 0x77636c6f,
    challenge: 0x6368616c,
    clientClose: 0x63636c6f,
    finalize: 0x66696e61,
    timeoutRefund: 0x746d6f75,
    anchor: 0x616e6368,
    // outgoing
    payout: 0x70617964,
    refund: 0x72656664,
};

export const Tag = {
    voucher: 0x636f7663,
    close: 0x636f636c,
};

export const Err = {
    badSignature: 100,
    wrongChannel: 101,
    staleVoucher: 102,
    wrongState: 103,
    notAuthorised: 104,
    amountAboveDeposit: 105,
    windowNotOver: 106,
    windowOver: 107,
    timeoutNotReached: 108,
    wrongTag: 109,
    insufficientValue: 110,
    channelClosed: 111,
    noSuchAnchor: 120,
    emptyBatch: 121,
    unknownOp: 0xffff,
};

export const Status = { unfunded: 0, open: 1, closing: 2, closed: 3 };

export const DEPOSIT_RESERVE = toNano('0.05');
export const ANCHOR_MIN_VALUE = toNano('0.01');

// ---------------------------------------------------------------------------
// Cells
// ---------------------------------------------------------------------------

const toBigKey = (k) => (typeof k === 'bigint' ? k : BigInt('0x' + Buffer.from(k).toString('hex')));

/** Initial (or any) channel data cell. Keys: 32-byte Buffers or bigints. */
export function channelData(c) {
    const keys = beginCell().storeUint(toBigKey(c.clientKey), 256).storeUint(toBigKey(c.workerKey), 256).endCell();
    const parties = beginCell().storeAddress(c.clientAddress).storeAddress(c.workerPayout).endCell();
    return beginCell()
        .storeUint(c.channelId, 64)
        .storeUint(c.status ?? 0, 2)
        .storeCoins(c.deposit ?? 0n)
        .storeCoins(c.settledAmount ?? 0n)
        .storeUint(c.settledSeq ?? 0n, 64)
        .storeUint(c.closeStartedAt ?? 0, 32)
        .storeUint(c.openedAt ?? 0, 32)
        .storeUint(c.challengePeriod, 32)
        .storeUint(c.workerTimeout, 32)
        .storeRef(keys)
        .storeRef(parties)
        .endCell();
}

/** Account id (hash part of the address) as bigint, what vouchers must name. */
export const accountId = (address) => BigInt('0x' + address.hash.toString('hex'));

/** Voucher cell: tag:uint32 channel:uint256 cumulative:coins seq:uint64. */
export function voucherCell(channel, cumulative, seq, tag = Tag.voucher) {
    return beginCell().storeUint(tag, 32).storeUint(channel, 256).storeCoins(cumulative).storeUint(seq, 64).endCell();
}

/** Cooperative close cell: tag:uint32 channel:uint256 amount:coins seq:uint64. */
export function closeCell(channel, amount, seq, tag = Tag.close) {
    return beginCell().storeUint(tag, 32).storeUint(channel, 256).storeCoins(amount).storeUint(seq, 64).endCell();
}

/** ed25519 signature (64 bytes) over cell.hash(). */
export const signCell = (cell, secretKey) => sign(cell.hash(), secretKey);

// Message bodies --------------------------------------------------------------

export const simpleBody = (op, queryId = 0n) => beginCell().storeUint(op, 32).storeUint(queryId, 64).endCell();

export function voucherBody(op, voucher, clientSig, queryId = 0n) {
    return beginCell().storeUint(op, 32).storeUint(queryId, 64).storeBuffer(clientSig, 64).storeRef(voucher).endCell();
}

export function coopCloseBody(close, clientSig, workerSig, queryId = 0n) {
    return beginCell()
        .storeUint(Op.coopClose, 32)
        .storeUint(queryId, 64)
        .storeBuffer(clientSig, 64)
        .storeRef(close)
        .storeRef(beginCell().storeBuffer(workerSig, 64).endCell())
        .endCell();
}

export function anchorBody(root, batchSize, queryId = 0n) {
    return beginCell().storeUint(Op.anchor, 32).storeUint(queryId, 64).storeUint(root, 256).storeUint(batchSize, 32).endCell();
}

export function anchorData(owner = null) {
    return beginCell().storeAddress(owner).storeUint(0, 32).storeDict(null).endCell();
}

// ---------------------------------------------------------------------------
// Contract wrappers (for blockchain.openContract)
// ---------------------------------------------------------------------------

class Base {
    constructor(address, init) {
        this.address = address;
        this.init = init;
    }

    /** Sends `body` with `value`; the state init is attached while the account is not active. */
    async sendBody(provider, via, value, body) {
        await provider.internal(via, { value, sendMode: SendMode.PAY_GAS_SEPARATELY, body });
    }
}

export class Channel extends Base {
    static fromConfig(config, code, workchain = 0) {
        const data = channelData(config);
        const init = { code, data };
        return new Channel(contractAddress(workchain, init), init);
    }

    async sendOpen(provider, via, value) { await this.sendBody(provider, via, value, simpleBody(Op.open)); }
    async sendTopUp(provider, via, value) { await this.sendBody(provider, via, value, simpleBody(Op.topUp)); }
    async sendClientClose(provider, via, value = toNano('0.05')) { await this.sendBody(provider, via, value, simpleBody(Op.clientClose)); }
    async sendFinalize(provider, via, value = toNano('0.05')) { await this.sendBody(provider, via, value, simpleBody(Op.finalize)); }
    async sendTimeoutRefund(provider, via, value = toNano('0.05')) { await this.sendBody(provider, via, value, simpleBody(Op.timeoutRefund)); }

    async sendWorkerClose(provider, via, voucher, clientSig, value = toNano('0.05')) {
        await this.sendBody(provider, via, value, voucherBody(Op.workerClose, voucher, clientSig));
    }

    async sendChallenge(provider, via, voucher, clientSig, value = toNano('0.05')) {
        await this.sendBody(provider, via, value, voucherBody(Op.challenge, voucher, clientSig));
    }

    async sendCoopClose(provider, via, close, clientSig, workerSig, value = toNano('0.05')) {
        await this.sendBody(provider, via, value, coopCloseBody(close, clientSig, workerSig));
    }

    async getChannel(provider) {
        const { stack } = await provider.get('get_channel', []);
        return {
            channelId: stack.readBigNumber(),
            status: stack.readNumber(),
            deposit: stack.readBigNumber(),
            settledAmount: stack.readBigNumber(),
            settledSeq: stack.readBigNumber(),
            closeStartedAt: stack.readNumber(),
            openedAt: stack.readNumber(),
            challengePeriod: stack.readNumber(),
            workerTimeout: stack.readNumber(),
            clientKey: stack.readBigNumber(),
            workerKey: stack.readBigNumber(),
        };
    }

    async getParties(provider) {
        const { stack } = await provider.get('get_parties', []);
        return { clientAddress: stack.readAddress(), workerPayout: stack.readAddress() };
    }

    async getVoucherHash(provider, cumulative, seq) {
        const { stack } = await provider.get('get_voucher_hash', [
            { type: 'int', value: cumulative },
            { type: 'int', value: BigInt(seq) },
        ]);
        return stack.readBigNumber();
    }

    async getCloseHash(provider, amount, seq) {
        const { stack } = await provider.get('get_close_hash', [
            { type: 'int', value: amount },
            { type: 'int', value: BigInt(seq) },
        ]);
        return stack.readBigNumber();
    }
}

export class Anchor extends Base {
    static fromConfig({ owner = null } = {}, code, workchain = 0) {
        const init = { code, data: anchorData(owner) };
        return new Anchor(contractAddress(workchain, init), init);
    }

    async sendAnchor(provider, via, root, batchSize, value = ANCHOR_MIN_VALUE) {
        await this.sendBody(provider, via, value, anchorBody(root, batchSize));
    }

    async getCount(provider) {
        return (await provider.get('get_count', [])).stack.readNumber();
    }

    async getRoot(provider, index) {
        const { stack } = await provider.get('get_root', [{ type: 'int', value: BigInt(index) }]);
        return { root: stack.readBigNumber(), batchSize: stack.readNumber(), postedAt: stack.readNumber() };
    }

    async getPoster(provider, index) {
        return (await provider.get('get_poster', [{ type: 'int', value: BigInt(index) }])).stack.readAddress();
    }

    async getOwner(provider) {
        return (await provider.get('get_owner', [])).stack.readAddressOpt();
    }
}

/** Parses the anchor data cell (for tests / tooling). */
export function parseAnchorData(cell) {
    const s = cell.beginParse();
    const owner = s.loadAddressAny();
    const count = s.loadUint(32);
    const dict = s.loadDict(Dictionary.Keys.Uint(32), {
        serialize: () => { throw new Error('read only'); },
        parse: (v) => ({ root: v.loadUintBig(256), batchSize: v.loadUint(32), postedAt: v.loadUint(32), poster: v.loadAddress() }),
    });
    return { owner, count, dict };
}

// ---------------------------------------------------------------------------
// Transaction helpers for node:test (no jest matchers)
// ---------------------------------------------------------------------------

/** Transactions executed on `address` (in order). */
export function txsOn(result, address) {
    return result.transactions.filter((tx) => tx.inMessage?.info.dest instanceof Address && tx.inMessage.info.dest.equals(address));
}

/** The first transaction on `address`; throws if there is none. */
export function txOn(result, address) {
    const tx = txsOn(result, address)[0];
    if (!tx) throw new Error(`no transaction on ${address}`);
    return tx;
}

/** Compute phase exit code (or null if the compute phase was skipped). */
export function exitCode(tx) {
    const cp = tx.description.computePhase;
    return cp.type === 'vm' ? cp.exitCode : null;
}

export function gasUsed(tx) {
    const cp = tx.description.computePhase;
    return cp.type === 'vm' ? cp.gasUsed : 0n;
}

/** True if compute and action phases both succeeded. */
export function succeeded(tx) {
    const d = tx.description;
    return d.computePhase.type === 'vm' && d.computePhase.success && (!d.actionPhase || d.actionPhase.success) && !d.aborted;
}

/** Value carried by the transaction's outgoing internal messages to `dest`. */
export function valueSentTo(tx, dest) {
    let total = 0n;
    for (const m of tx.outMessages.values()) {
        if (m.info.type === 'internal' && m.info.dest.equals(dest)) total += m.info.value.coins;
    }
    return total;
}

export { Cell };
