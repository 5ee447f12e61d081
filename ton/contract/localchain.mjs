#!/usr/bin/env node
// localchain: the real TVM emulator (@ton/sandbox) behind a subset of the toncenter v2 HTTP
// API, so the Rust side talks to testnet/mainnet and to a local chain with one HTTP client.
// See README.md, section "Local chain (localchain.mjs)", for the endpoints and encodings.
//
//   node localchain.mjs [--host 127.0.0.1] [--port 0] [--state FILE] [--now UNIX] [--ignore-stdin]
//
// Prints exactly one line to stdout when ready (`localchain listening http://HOST:PORT`), then
// logs only to stderr. Exits with code 0 on stdin EOF (unless --ignore-stdin), SIGTERM, SIGINT.

// Everything the sandbox (or anything else) prints goes to stderr: stdout carries only the
// ready line.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

import http from 'node:http';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Address, beginCell, Cell, Dictionary, loadMessage, loadTransaction, storeStateInit } from '@ton/core';
import { Blockchain, GetMethodError, snapshotFromSerializable, snapshotToSerializable } from '@ton/sandbox';

const MAX_BODY = 1024 * 1024; // bytes of a POST body
const MAX_COINS = (1n << 120n) - 1n; // VarUInteger 16
const FAUCET_SEED = 'cocoon-localchain-faucet';
const FAUCET_FLOAT = 1_000_000_000_000_000n; // 1M TON kept on the faucet above any request
const STATE_FORMAT = 'cocoon-localchain/1';
const ZERO_HASH = Buffer.alloc(32).toString('base64');

class HttpError extends Error {
    constructor(status, message) {
        super(message);
        this.status = status;
    }
}
const bad = (message) => new HttpError(400, message);

const log = (...args) => console.error('[localchain]', ...args);

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

const USAGE = 'usage: node localchain.mjs [--host 127.0.0.1] [--port 0] [--state FILE] [--now UNIX] [--ignore-stdin]';

function parseArgs(argv) {
    const opts = { host: '127.0.0.1', port: 0, state: null, now: null, ignoreStdin: false };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const eq = a.indexOf('=');
        const [flag, inline] = a.startsWith('--') && eq > 0 ? [a.slice(0, eq), a.slice(eq + 1)] : [a, undefined];
        const value = () => {
            if (inline !== undefined) return inline;
            if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
            return argv[++i];
        };
        switch (flag) {
            case '--host': opts.host = value(); break;
            case '--port': {
                const v = value();
                if (!/^\d+$/.test(v) || Number(v) > 65535) throw new Error(`--port: expected 0..65535, got '${v}'`);
                opts.port = Number(v);
                break;
            }
            case '--state': opts.state = resolve(value()); break;
            case '--now': {
                const v = value();
                if (!/^\d+$/.test(v) || Number(v) >= 2 ** 32) throw new Error(`--now: expected a unix time, got '${v}'`);
                opts.now = Number(v);
                break;
            }
            case '--ignore-stdin': opts.ignoreStdin = true; break;
            case '-h': case '--help': process.stderr.write(USAGE + '\n'); process.exit(0); break;
            default: throw new Error(`unknown argument '${a}'`);
        }
    }
    return opts;
}

// ---------------------------------------------------------------------------
// Encodings
// ---------------------------------------------------------------------------

const rawAddr = (a) => a.toRawString(); // "0:<64 hex>", lowercase
const b64 = (cell) => cell.toBoc().toString('base64'); // BoC without index, with CRC32C
const hashB64 = (big) => Buffer.from(big.toString(16).padStart(64, '0'), 'hex').toString('base64');
const hex32 = (n) => '0x' + n.toString(16).padStart(8, '0');
const numHex = (v) => (v < 0n ? '-0x' + (-v).toString(16) : '0x' + v.toString(16));

function parseAddress(value, field = 'address') {
    if (value === undefined || value === null || value === '') throw bad(`missing parameter '${field}'`);
    if (typeof value !== 'string') throw bad(`'${field}' must be a string`);
    let a;
    try {
        a = Address.parse(value.trim());
    } catch {
        throw bad(`invalid address '${value}' in '${field}': expected raw 0:<64 hex> or a user-friendly base64/base64url address`);
    }
    if (a.workChain !== 0 && a.workChain !== -1) throw bad(`address '${value}' in '${field}': workchain ${a.workChain} does not exist (0 or -1)`);
    return a;
}

/** Non-negative integer amount of nanoton from a decimal string (or a safe JS integer). */
function parseCoins(value, field) {
    let v;
    if (typeof value === 'string' && /^\d+$/.test(value.trim())) v = BigInt(value.trim());
    else if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) v = BigInt(value);
    else throw bad(`'${field}' must be a decimal string of nanoton, got ${JSON.stringify(value)}`);
    if (v > MAX_COINS) throw bad(`'${field}' is too large`);
    return v;
}

/** Signed integer from toncenter's stack notation: "123", "-5", "0x7b", "-0x5" (or a safe JS integer). */
function parseStackInt(v, where) {
    if (typeof v === 'number' && Number.isSafeInteger(v)) return BigInt(v);
    if (typeof v !== 'string') throw bad(`${where}: integer expected, got ${JSON.stringify(v)}`);
    const m = /^(-?)(0x[0-9a-f]+|\d+)$/i.exec(v.trim());
    if (!m) throw bad(`${where}: integer expected, got ${JSON.stringify(v)}`);
    const n = BigInt(m[2]);
    return m[1] ? -n : n;
}

function parseBocCell(s, where) {
    if (s && typeof s === 'object' && typeof s.bytes === 'string') s = s.bytes;
    if (typeof s !== 'string' || s === '') throw bad(`${where}: base64 BoC expected`);
    let cells;
    try {
        cells = Cell.fromBoc(Buffer.from(s, 'base64'));
    } catch (e) {
        throw bad(`${where}: invalid BoC (${e.message})`);
    }
    if (cells.length !== 1) throw bad(`${where}: BoC must have exactly one root, has ${cells.length}`);
    return cells[0];
}

/** toncenter stack entry -> @ton/core TupleItem. */
function parseStackEntry(e, where, depth = 0) {
    if (depth > 16) throw bad(`${where}: tuples nested too deep`);
    if (!Array.isArray(e) || e.length < 1 || e.length > 2 || typeof e[0] !== 'string') {
        throw bad(`${where}: expected [type, value], e.g. ["num","0x7b"]`);
    }
    const [type, value] = e;
    switch (type) {
        case 'num': case 'int': case 'number':
            return { type: 'int', value: parseStackInt(value, where) };
        case 'cell': case 'tvm.Cell':
            return { type: 'cell', cell: parseBocCell(value, where) };
        case 'slice': case 'tvm.Slice':
            return { type: 'slice', cell: parseBocCell(value, where) };
        case 'null':
            return { type: 'null' };
        case 'tuple': case 'list': {
            const elements = Array.isArray(value) ? value : value?.elements;
            if (!Array.isArray(elements)) throw bad(`${where}: tuple expects {"elements":[...]}`);
            if (elements.length > 255) throw bad(`${where}: tuple too long`);
            return { type: 'tuple', items: elements.map((x, i) => parseStackEntry(x, `${where}.elements[${i}]`, depth + 1)) };
        }
        default:
            throw bad(`${where}: unsupported stack entry type '${type}' (num, cell, slice, null, tuple)`);
    }
}

/** @ton/core TupleItem -> toncenter stack entry. */
function encodeStackEntry(item) {
    switch (item.type) {
        case 'int': return ['num', numHex(item.value)];
        case 'nan': return ['num', 'NaN'];
        case 'null': return ['null', null];
        case 'cell': case 'slice': case 'builder': return ['cell', { bytes: b64(item.cell) }];
        case 'tuple': return ['tuple', { elements: item.items.map(encodeStackEntry) }];
        default: return ['unknown', null];
    }
}

function bodyOp(body) {
    return body && body.bits.length >= 32 ? body.beginParse().preloadUint(32) : null;
}

function encodeMessage(cell) {
    const m = loadMessage(cell.beginParse());
    const i = m.info;
    const src = i.type === 'external-in' ? '' : i.src ? rawAddr(i.src) : '';
    const dest = i.type === 'external-out' ? '' : rawAddr(i.dest);
    return {
        '@type': 'raw.message',
        hash: cell.hash().toString('base64'),
        source: src,
        destination: dest,
        value: i.type === 'internal' ? i.value.coins.toString() : '0',
        fwd_fee: i.type === 'internal' ? i.forwardFee.toString() : '0',
        ihr_fee: i.type === 'internal' ? i.ihrFee.toString() : '0',
        created_lt: i.type === 'external-in' ? '0' : i.createdLt.toString(),
        bounce: i.type === 'internal' ? i.bounce : false,
        bounced: i.type === 'internal' ? i.bounced : false,
        op: i.type === 'external-in' ? null : bodyOp(m.body), // local extension
        msg_data: { '@type': 'msg.dataRaw', body: b64(m.body), init_state: m.init ? b64(beginCell().store(storeStateInit(m.init)).endCell()) : '' },
    };
}

/** The exact in_msg / out_msgs cells of a transaction, read from its raw cell. */
function txMessageCells(tx) {
    const s = tx.raw.refs[0].beginParse();
    const inMsg = s.loadBit() ? s.loadRef() : null;
    const out = s.loadDict(Dictionary.Keys.Uint(15), Dictionary.Values.Cell());
    const outs = [...out.keys()].sort((a, b) => a - b).map((k) => out.get(k));
    return { inMsg, outs };
}

function exitCodeOf(tx) {
    const cp = tx.description.computePhase;
    return cp && cp.type === 'vm' ? cp.exitCode : null;
}

function succeeded(tx) {
    const d = tx.description;
    return !!(d.computePhase && d.computePhase.type === 'vm' && d.computePhase.success && (!d.actionPhase || d.actionPhase.success) && !d.aborted);
}

function encodeTransaction(tx, account) {
    const { inMsg, outs } = txMessageCells(tx);
    return {
        '@type': 'raw.transaction',
        address: { '@type': 'accountAddress', account_address: rawAddr(account) },
        utime: tx.now,
        data: b64(tx.raw),
        transaction_id: { '@type': 'internal.transactionId', lt: tx.lt.toString(), hash: tx.hash().toString('base64') },
        fee: tx.totalFees.coins.toString(),
        storage_fee: (tx.description.storagePhase?.storageFeesCollected ?? 0n).toString(),
        in_msg: inMsg ? encodeMessage(inMsg) : null,
        out_msgs: outs.map(encodeMessage),
        // local extensions
        compute_exit_code: exitCodeOf(tx),
        aborted: !!tx.description.aborted,
        success: succeeded(tx),
    };
}

/** Account of a transaction: the destination of its inbound message. */
function txAccount(tx) {
    const dest = tx.inMessage?.info?.dest;
    return Address.isAddress(dest) ? dest : null;
}

/** Key of a transaction in /local/stats.by_op. */
function opKey(tx) {
    const m = tx.inMessage;
    if (!m) return 'empty';
    if (m.info.type === 'external-in') return 'external';
    const op = bodyOp(m.body);
    return op === null ? 'empty' : hex32(op);
}

// ---------------------------------------------------------------------------
// The chain
// ---------------------------------------------------------------------------

class LocalChain {
    constructor(opts) {
        this.opts = opts;
        this.fixedNow = null; // null: wall clock
        this.lastTxNow = 0; // utime of the newest transaction (time never goes back before it)
        this.stats = { transactions: 0, external_messages: 0, fees: 0n, by_op: {} };
        this.queue = Promise.resolve();
    }

    async init() {
        this.blockchain = await Blockchain.create();
        this.blockchain.verbosity = { print: true, blockchainLogs: false, vmLogs: 'none', debugLogs: true };
        const file = this.opts.state;
        if (file && existsSync(file)) {
            this.restore(JSON.parse(readFileSync(file, 'utf-8')));
            await this.blockchain.loadFrom(this.restoredSnapshot);
            delete this.restoredSnapshot;
            log(`restored ${file}: ${this.blockchain.transactions.length} transactions, time ${this.fixedNow === null ? 'wall clock' : `fixed at ${this.fixedNow}`}`);
        }
        if (this.opts.now !== null) {
            if (this.opts.now < this.lastTxNow) throw new Error(`--now ${this.opts.now} is before the last transaction of the restored chain (${this.lastTxNow})`);
            this.fixedNow = this.opts.now;
        }
        this.applyTime();
        this.faucet = await this.blockchain.treasury(FAUCET_SEED, { balance: FAUCET_FLOAT });
        this.noteTxs(this.blockchain.transactions, false);
        if (file) this.save();
        log(`faucet ${rawAddr(this.faucet.address)}`);
    }

    /** Runs `fn` after every earlier request: the sandbox is not safe for interleaved use. */
    exclusive(fn) {
        const p = this.queue.then(fn);
        this.queue = p.catch(() => {});
        return p;
    }

    now() {
        return this.fixedNow ?? Math.max(Math.floor(Date.now() / 1000), this.lastTxNow);
    }

    applyTime() {
        this.blockchain.now = this.now();
    }

    noteTxs(txs, count = true) {
        for (const tx of txs) {
            if (tx.now > this.lastTxNow) this.lastTxNow = tx.now;
            if (!count) continue;
            const fee = tx.totalFees.coins;
            this.stats.transactions += 1;
            this.stats.fees += fee;
            const key = opKey(tx);
            const e = (this.stats.by_op[key] ??= { count: 0, fees: 0n });
            e.count += 1;
            e.fees += fee;
            if (key === 'external') this.stats.external_messages += 1;
        }
    }

    statsJson() {
        const by_op = {};
        for (const k of Object.keys(this.stats.by_op).sort()) {
            by_op[k] = { count: this.stats.by_op[k].count, fees: this.stats.by_op[k].fees.toString() };
        }
        return { transactions: this.stats.transactions, external_messages: this.stats.external_messages, fees: this.stats.fees.toString(), by_op };
    }

    // --- persistence -------------------------------------------------------

    save() {
        const file = this.opts.state;
        if (!file) return;
        const snap = this.blockchain.snapshot();
        const state = {
            format: STATE_FORMAT,
            saved_at: Math.floor(Date.now() / 1000),
            fixed_now: this.fixedNow,
            stats: this.statsJson(),
            // accounts, config, lt, ... through the sandbox's own serialiser
            chain: snapshotToSerializable({ ...snap, transactions: [] }),
            // transactions as their exact raw cells (the sandbox serialiser re-encodes them, which
            // can change their hashes), oldest first
            transactions: snap.transactions.map((tx) => ({ boc: b64(tx.raw), mode: tx.mode ?? null })),
        };
        const tmp = file + '.tmp';
        const fd = openSync(tmp, 'w');
        try {
            writeSync(fd, JSON.stringify(state));
            fsyncSync(fd);
        } finally {
            closeSync(fd);
        }
        renameSync(tmp, file);
        try {
            const dfd = openSync(dirname(file), 'r');
            try { fsyncSync(dfd); } finally { closeSync(dfd); }
        } catch { /* directory fsync is best effort */ }
    }

    restore(state) {
        if (state?.format !== STATE_FORMAT) throw new Error(`not a ${STATE_FORMAT} state file`);
        const snap = snapshotFromSerializable(state.chain);
        snap.transactions = state.transactions.map((t) => ({
            ...loadTransaction(Cell.fromBase64(t.boc).beginParse()),
            blockchainLogs: '',
            vmLogs: '',
            debugLogs: '',
            events: [],
            externals: [],
            children: [],
            mode: t.mode ?? undefined,
        }));
        this.restoredSnapshot = snap;
        this.fixedNow = state.fixed_now ?? null;
        const s = state.stats ?? {};
        this.stats = {
            transactions: s.transactions ?? 0,
            external_messages: s.external_messages ?? 0,
            fees: BigInt(s.fees ?? 0),
            by_op: Object.fromEntries(Object.entries(s.by_op ?? {}).map(([k, v]) => [k, { count: v.count, fees: BigInt(v.fees) }])),
        };
        this.lastTxNow = snap.transactions.reduce((m, tx) => Math.max(m, tx.now), 0);
    }

    /** Saves after a change; a failed save is an error of the request (the chain did change). */
    commit() {
        try {
            this.save();
        } catch (e) {
            log(`saving ${this.opts.state} failed: ${e.stack ?? e}`);
            throw new HttpError(500, `the chain changed but the state file could not be saved: ${e.message}`);
        }
    }

    // --- accounts ----------------------------------------------------------

    async account(addr) {
        const c = await this.blockchain.getContract(addr);
        const st = c.accountState;
        const state = st?.type === 'active' ? 'active' : st?.type === 'frozen' ? 'frozen' : 'uninitialized';
        return {
            contract: c,
            state,
            balance: c.balance,
            code: st?.type === 'active' && st.state.code ? b64(st.state.code) : '',
            data: st?.type === 'active' && st.state.data ? b64(st.state.data) : '',
            lastTx: { '@type': 'internal.transactionId', lt: (c.lastTransactionLt ?? 0n).toString(), hash: c.lastTransactionHash ? hashB64(c.lastTransactionHash) : ZERO_HASH },
        };
    }

    async getAddressInformation(q) {
        const a = await this.account(parseAddress(q.get('address')));
        return {
            '@type': 'raw.fullAccountState',
            balance: a.balance.toString(),
            state: a.state,
            code: a.code,
            data: a.data,
            last_transaction_id: a.lastTx,
            frozen_hash: '',
            sync_utime: this.now(),
        };
    }

    async getAddressBalance(q) {
        return (await this.account(parseAddress(q.get('address')))).balance.toString();
    }

    async getWalletInformation(q) {
        const addr = parseAddress(q.get('address'));
        const a = await this.account(addr);
        let seqno = null;
        let walletId;
        if (a.state === 'active') {
            this.applyTime();
            seqno = await this.getterInt(addr, 'seqno');
            if (seqno !== null) walletId = await this.getterInt(addr, 'get_subwallet_id');
        }
        const out = { wallet: seqno !== null, balance: a.balance.toString(), account_state: a.state, seqno, last_transaction_id: a.lastTx };
        if (walletId !== undefined && walletId !== null) out.wallet_id = walletId;
        return out;
    }

    /** A getter returning one small integer, or null when it does not exist / fails. */
    async getterInt(addr, method) {
        try {
            const r = await this.blockchain.runGetMethod(addr, method, []);
            const top = r.stack[0];
            return r.exitCode === 0 && top?.type === 'int' && top.value >= 0n && top.value < 2n ** 53n ? Number(top.value) : null;
        } catch {
            return null;
        }
    }

    async getTransactions(q) {
        const addr = parseAddress(q.get('address'));
        let limit = 10;
        if (q.has('limit')) {
            const l = q.get('limit');
            if (!/^\d+$/.test(l) || Number(l) < 1) throw bad(`'limit' must be a positive integer, got '${l}'`);
            limit = Math.min(Number(l), 100);
        }
        const lt = q.has('lt') ? parseStackInt(q.get('lt'), "'lt'") : null;
        const toLt = q.has('to_lt') ? parseStackInt(q.get('to_lt'), "'to_lt'") : 0n;
        const hash = q.get('hash');
        const all = this.blockchain.transactions;
        const out = [];
        let anchored = lt === null || !hash;
        for (let i = all.length - 1; i >= 0 && out.length < limit; i--) {
            const tx = all[i];
            const acc = txAccount(tx);
            if (!acc || !acc.equals(addr)) continue;
            if (lt !== null && tx.lt > lt) continue;
            if (!anchored) {
                const h = tx.hash();
                if (tx.lt !== lt || (h.toString('base64') !== hash && h.toString('hex') !== hash.toLowerCase())) {
                    throw new HttpError(404, `no transaction of ${rawAddr(addr)} with lt ${lt} and hash ${hash}`);
                }
                anchored = true;
            }
            if (tx.lt <= toLt) break;
            out.push(encodeTransaction(tx, acc));
        }
        return out;
    }

    async runGetMethod(body) {
        const addr = parseAddress(body.address);
        let method = body.method;
        if (typeof method === 'string' && /^-?\d+$/.test(method.trim())) method = Number(method.trim());
        if (typeof method === 'number') {
            if (!Number.isInteger(method) || method < -(2 ** 31) || method >= 2 ** 31) throw bad(`'method' id out of range`);
        } else if (typeof method !== 'string' || method === '' || method.length > 128) {
            throw bad(`'method' must be a get-method name or id`);
        }
        const raw = body.stack ?? [];
        if (!Array.isArray(raw)) throw bad(`'stack' must be an array of [type, value] entries`);
        if (raw.length > 255) throw bad(`'stack' has too many entries`);
        const stack = raw.map((e, i) => parseStackEntry(e, `stack[${i}]`));
        const a = await this.account(addr);
        if (a.state !== 'active') {
            throw new HttpError(500, `cannot run get-method '${method}': account ${rawAddr(addr)} is ${a.state} (no code)`);
        }
        this.applyTime();
        try {
            const r = await this.blockchain.runGetMethod(addr, method, stack);
            return { '@type': 'smc.runResult', gas_used: Number(r.gasUsed), exit_code: r.exitCode, stack: r.stack.map(encodeStackEntry), last_transaction_id: a.lastTx };
        } catch (e) {
            if (e instanceof GetMethodError) {
                return { '@type': 'smc.runResult', gas_used: Number(e.gasUsed), exit_code: e.exitCode, stack: [], last_transaction_id: a.lastTx };
            }
            throw new HttpError(500, `get-method '${method}' failed to run on ${rawAddr(addr)}: ${firstLine(e)}`);
        }
    }

    // --- sending -----------------------------------------------------------

    /** Executes one external-in message and its whole message tree; returns the message cell. */
    async sendBoc(body) {
        if (typeof body.boc !== 'string') throw bad(`missing 'boc' (base64 BoC of an external-in message)`);
        const cell = parseBocCell(body.boc, "'boc'");
        let msg;
        try {
            msg = loadMessage(cell.beginParse());
        } catch (e) {
            throw bad(`'boc' is not a message: ${e.message}`);
        }
        if (msg.info.type !== 'external-in') throw bad(`'boc' must be an external-in message, got ${msg.info.type}`);
        const dest = msg.info.dest;
        this.applyTime();
        const txs = [];
        let failure = null;
        try {
            const it = await this.blockchain.sendMessageIter(cell, { allowParallel: true });
            for await (const tx of it) txs.push(tx);
        } catch (e) {
            failure = e;
        }
        if (txs.length) {
            this.noteTxs(txs);
            this.commit();
        }
        if (failure) {
            if (txs.length === 0) {
                const code = failure.exitCode !== undefined ? `, exitcode=${failure.exitCode}` : '';
                throw new HttpError(500, `cannot apply external message to current state : ${firstLine(failure)} (destination ${rawAddr(dest)})${code}`);
            }
            log(`message tree aborted: ${failure.stack ?? failure}`);
            throw new HttpError(500, `message tree aborted after ${txs.length} transactions: ${firstLine(failure)}`);
        }
        const root = txs[0];
        const cp = root?.description?.computePhase;
        if (cp && cp.type === 'vm' && !cp.success) {
            throw new HttpError(500, `external message accepted but its transaction failed (recorded, fees charged; lt ${root.lt}): exitcode=${cp.exitCode}`);
        }
        return cell;
    }

    async fund(body) {
        const addr = parseAddress(body.address);
        const amount = parseCoins(body.amount, 'amount');
        if (amount === 0n) throw bad(`'amount' must be positive`);
        const faucet = await this.blockchain.getContract(this.faucet.address);
        if (faucet.balance < amount + FAUCET_FLOAT / 2n) faucet.balance = amount + FAUCET_FLOAT;
        this.applyTime();
        let r;
        try {
            r = await this.faucet.send({ to: addr, value: amount, bounce: false });
        } catch (e) {
            throw new HttpError(500, `funding ${rawAddr(addr)} failed: ${firstLine(e)}`);
        }
        this.noteTxs(r.transactions);
        this.commit();
        return { balance: (await this.blockchain.getContract(addr)).balance.toString() };
    }

    timeJson() {
        return { now: this.now(), fixed: this.fixedNow !== null };
    }

    setTime(body) {
        const keys = Object.keys(body);
        if (keys.length !== 1 || !['now', 'advance'].includes(keys[0])) {
            throw bad(`expected exactly one of {"now":UNIX}, {"now":null}, {"advance":SECONDS}`);
        }
        let next;
        if (keys[0] === 'now') {
            if (body.now === null) next = null;
            else if (Number.isSafeInteger(body.now) && body.now >= 0 && body.now < 2 ** 32) next = body.now;
            else throw bad(`'now' must be a unix time (integer) or null`);
        } else {
            if (!Number.isSafeInteger(body.advance)) throw bad(`'advance' must be an integer number of seconds`);
            next = this.now() + body.advance;
            if (next < 0 || next >= 2 ** 32) throw bad(`'advance' leads out of the unix time range`);
        }
        if (next !== null && next < this.lastTxNow) {
            throw bad(`time cannot go back before the last transaction (${this.lastTxNow}), asked for ${next}`);
        }
        this.fixedNow = next;
        this.applyTime();
        this.commit();
        return this.timeJson();
    }
}

function firstLine(e) {
    const msg = e?.error ?? e?.message ?? String(e);
    return String(msg).split('\n')[0];
}

/** TEP-467 normalized hash of an external-in message: src addr_none, import_fee 0, no init, body in a ref. */
function normalizedHash(cell) {
    const m = loadMessage(cell.beginParse());
    return beginCell()
        .storeUint(2, 2)
        .storeUint(0, 2)
        .storeAddress(m.info.dest)
        .storeCoins(0)
        .storeBit(false)
        .storeBit(true)
        .storeRef(m.body)
        .endCell()
        .hash()
        .toString('base64');
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

function readBody(req) {
    return new Promise((resolveBody, reject) => {
        const declared = Number(req.headers['content-length']);
        if (Number.isFinite(declared) && declared > MAX_BODY) {
            reject(new HttpError(413, `request body larger than ${MAX_BODY} bytes`));
            return;
        }
        const chunks = [];
        let size = 0;
        let done = false;
        req.on('data', (c) => {
            if (done) return;
            size += c.length;
            if (size > MAX_BODY) {
                done = true;
                reject(new HttpError(413, `request body larger than ${MAX_BODY} bytes`));
                return;
            }
            chunks.push(c);
        });
        req.on('end', () => {
            if (!done) {
                done = true;
                resolveBody(Buffer.concat(chunks));
            }
        });
        req.on('error', (e) => {
            if (!done) {
                done = true;
                reject(new HttpError(400, `reading the request failed: ${e.message}`));
            }
        });
    });
}

async function jsonBody(req) {
    const buf = await readBody(req);
    let v;
    try {
        v = JSON.parse(buf.toString('utf-8'));
    } catch {
        throw bad('request body must be a JSON object');
    }
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw bad('request body must be a JSON object');
    return v;
}

function routes(chain) {
    const get = (fn) => ({ method: 'GET', fn: (req, q) => chain.exclusive(() => fn(q)) });
    const post = (fn) => ({ method: 'POST', fn: async (req) => { const b = await jsonBody(req); return chain.exclusive(() => fn(b)); } });
    return {
        '/api/v2/getAddressInformation': get((q) => chain.getAddressInformation(q)),
        '/api/v2/getAddressBalance': get((q) => chain.getAddressBalance(q)),
        '/api/v2/getWalletInformation': get((q) => chain.getWalletInformation(q)),
        '/api/v2/getTransactions': get((q) => chain.getTransactions(q)),
        '/api/v2/runGetMethod': post((b) => chain.runGetMethod(b)),
        '/api/v2/sendBoc': post(async (b) => {
            await chain.sendBoc(b);
            return { '@type': 'ok' };
        }),
        '/api/v2/sendBocReturnHash': post(async (b) => {
            const cell = await chain.sendBoc(b);
            return { '@type': 'ext.message.info', hash: cell.hash().toString('base64'), hash_norm: normalizedHash(cell) };
        }),
        '/local/fund': post((b) => chain.fund(b)),
        '/local/time': {
            method: 'GET, POST',
            fn: async (req) => {
                if (req.method === 'GET') return chain.exclusive(() => chain.timeJson());
                const b = await jsonBody(req);
                return chain.exclusive(() => chain.setTime(b));
            },
        },
        '/local/stats': get(() => chain.statsJson()),
    };
}

function send(res, status, payload, extraHeaders = {}) {
    if (res.headersSent) return;
    const text = JSON.stringify(payload, (k, v) => (typeof v === 'bigint' ? v.toString() : v));
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), ...extraHeaders });
    res.end(text);
}

function makeServer(chain) {
    const table = routes(chain);
    return http.createServer(async (req, res) => {
        const t0 = Date.now();
        let status = 200;
        let path = req.url ?? '';
        try {
            let url;
            try {
                url = new URL(req.url ?? '/', 'http://localchain');
            } catch {
                throw bad('malformed request URL');
            }
            path = url.pathname.replace(/\/+$/, '') || '/';
            const route = table[path];
            if (!route) throw new HttpError(404, `unknown path ${path}`);
            if (!route.method.split(', ').includes(req.method)) {
                throw Object.assign(new HttpError(405, `${req.method} not allowed on ${path} (use ${route.method})`), { allow: route.method });
            }
            const result = await route.fn(req, url.searchParams);
            send(res, 200, { ok: true, result });
        } catch (e) {
            status = e instanceof HttpError ? e.status : 500;
            if (!(e instanceof HttpError)) log(`internal error on ${path}: ${e.stack ?? e}`);
            const headers = {};
            if (e.allow) headers.allow = e.allow;
            if (status === 413) {
                headers.connection = 'close';
                req.resume(); // discard the rest of the body
            }
            send(res, status, { ok: false, error: e instanceof HttpError ? e.message : `internal error: ${firstLine(e)}`, code: status }, headers);
        }
        log(`${req.method} ${path} -> ${status} (${Date.now() - t0} ms)`);
    });
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

async function main() {
    let opts;
    try {
        opts = parseArgs(process.argv.slice(2));
    } catch (e) {
        process.stderr.write(`localchain: ${e.message}\n${USAGE}\n`);
        process.exit(2);
    }
    const chain = new LocalChain(opts);
    try {
        await chain.init();
    } catch (e) {
        process.stderr.write(`localchain: cannot start: ${e.stack ?? e}\n`);
        process.exit(1);
    }
    const server = makeServer(chain);
    server.on('clientError', (err, socket) => {
        if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
        else socket.destroy();
    });

    let stopping = false;
    const stop = (why) => {
        if (stopping) return;
        stopping = true;
        log(`stopping (${why})`);
        server.close();
        server.closeIdleConnections?.();
        // let a request that is executing finish (and save) first
        chain.queue.finally(() => process.exit(0));
        setTimeout(() => process.exit(0), 5000).unref();
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    if (!opts.ignoreStdin) {
        process.stdin.on('end', () => stop('stdin closed'));
        process.stdin.on('close', () => stop('stdin closed'));
        process.stdin.on('error', () => stop('stdin error'));
        process.stdin.resume();
    }
    process.stdout.on('error', () => {}); // parent stopped reading: keep serving
    process.on('uncaughtException', (e) => log(`uncaught: ${e.stack ?? e}`));
    process.on('unhandledRejection', (e) => log(`unhandled rejection: ${e?.stack ?? e}`));

    server.on('error', (e) => {
        process.stderr.write(`localchain: cannot listen on ${opts.host}:${opts.port}: ${e.message}\n`);
        process.exit(1);
    });
    server.listen(opts.port, opts.host, () => {
        const { address, port } = server.address();
        const host = address.includes(':') ? `[${address}]` : address;
        process.stdout.write(`localchain listening http://${host}:${port}\n`);
        log(`chain time ${chain.now()} (${chain.fixedNow === null ? 'wall clock' : 'fixed'})${opts.state ? `, state ${opts.state}` : ''}`);
    });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
    main();
}

export { LocalChain, parseStackEntry, encodeStackEntry, normalizedHash };
