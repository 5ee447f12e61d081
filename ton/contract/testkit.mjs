// Shared sandbox fixtures for the tests in test/ (kept outside test/ because
// `node --test test/` runs every .mjs file in that folder).
import assert from 'node:assert/strict';
import { Blockchain } from '@ton/sandbox';
import { keyPairFromSeed } from '@ton/crypto';
import { toNano } from '@ton/core';
import { compile } from './compile.mjs';
import { Channel, Anchor, accountId, voucherCell, closeCell, signCell, txOn, exitCode, succeeded } from './wrappers.mjs';

export const T0 = 1_750_000_000; // fixed unixtime the tests start at
export const CHALLENGE_PERIOD = 3600; // 1 h
export const WORKER_TIMEOUT = 7 * 86400; // 7 days

const codeCache = new Map();
/** Compiles once per process. */
export function code(name) {
    if (!codeCache.has(name)) codeCache.set(name, compile(name));
    return codeCache.get(name);
}

export const clientKeys = keyPairFromSeed(Buffer.alloc(32, 0x11));
export const workerKeys = keyPairFromSeed(Buffer.alloc(32, 0x22));
export const strangerKeys = keyPairFromSeed(Buffer.alloc(32, 0x33));

/** A fresh blockchain with a client, a worker, the worker's payout wallet, a stranger and one unfunded channel. */
export async function setupChannel({ channelId = 1n, challengePeriod = CHALLENGE_PERIOD, workerTimeout = WORKER_TIMEOUT } = {}) {
    const blockchain = await Blockchain.create();
    blockchain.now = T0;
    const channelCode = await code('channel');
    const client = await blockchain.treasury('client');
    const worker = await blockchain.treasury('worker');
    const workerPayout = await blockchain.treasury('workerPayout');
    const stranger = await blockchain.treasury('stranger');
    const config = {
        channelId,
        clientKey: clientKeys.publicKey,
        workerKey: workerKeys.publicKey,
        clientAddress: client.address,
        workerPayout: workerPayout.address,
        challengePeriod,
        workerTimeout,
    };
    const channel = blockchain.openContract(Channel.fromConfig(config, channelCode));
    const id = accountId(channel.address);

    /** A client-signed voucher for this channel (override channel/tag/keys to forge bad ones). */
    const voucher = (cumulative, seq, { channel: ch = id, tag, keys = clientKeys } = {}) => {
        const cell = voucherCell(ch, cumulative, seq, tag);
        return { cell, sig: signCell(cell, keys.secretKey) };
    };
    /** A close statement signed by client and worker. */
    const coop = (amount, seq, { channel: ch = id, tag, cKeys = clientKeys, wKeys = workerKeys } = {}) => {
        const cell = closeCell(ch, amount, seq, tag);
        return { cell, clientSig: signCell(cell, cKeys.secretKey), workerSig: signCell(cell, wKeys.secretKey) };
    };

    return { blockchain, channelCode, client, worker, workerPayout, stranger, config, channel, id, voucher, coop };
}

/** Deploys + opens the channel from the client with `value`; asserts success. */
export async function openChannel(f, value = toNano('10')) {
    const r = await f.channel.sendOpen(f.client.getSender(), value);
    expectOk(r, f.channel.address);
    return r;
}

export async function setupAnchor({ owner = null } = {}) {
    const blockchain = await Blockchain.create();
    blockchain.now = T0;
    const anchorCode = await code('anchor');
    const poster = await blockchain.treasury('poster');
    const other = await blockchain.treasury('other');
    const anchor = blockchain.openContract(Anchor.fromConfig({ owner }, anchorCode));
    return { blockchain, anchorCode, poster, other, anchor };
}

/** Asserts the (first) transaction on `address` fully succeeded; returns it. */
export function expectOk(result, address) {
    const tx = txOn(result, address);
    assert.ok(succeeded(tx), `expected success, got exit code ${exitCode(tx)} (action ${tx.description.actionPhase?.resultCode})`);
    return tx;
}

/** Asserts the (first) transaction on `address` failed with `code`; returns it. */
export function expectExit(result, address, code) {
    const tx = txOn(result, address);
    assert.equal(exitCode(tx), code, `expected exit code ${code}, got ${exitCode(tx)}`);
    return tx;
}

export const balanceOf = async (blockchain, address) => (await blockchain.getContract(address)).balance;

/** |a - b| <= tol */
export function assertNear(actual, expected, tol, msg = '') {
    const d = actual > expected ? actual - expected : expected - actual;
    assert.ok(d <= tol, `${msg} expected ${expected} ± ${tol}, got ${actual} (off by ${d})`);
}
