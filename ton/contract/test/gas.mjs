// Gas / fee table for every channel operation and the anchor post, measured in the sandbox
// (which uses a mainnet config snapshot, so the prices are mainnet basechain prices).
//
//   node test/gas.mjs            prints the markdown table
//   node test/gas.mjs --readme   also rewrites the table in README.md (between the markers)
// `npm test` runs this file too (node --test runs every .mjs in test/), asserting that each
// measured operation succeeded and stays within a gas budget.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { toNano, fromNano } from '@ton/core';
import { txOn, gasUsed, succeeded } from '../wrappers.mjs';
import { setupChannel, openChannel, setupAnchor, T0, CHALLENGE_PERIOD, WORKER_TIMEOUT } from '../testkit.mjs';

const GAS_BUDGET = 15000n; // generous upper bound per op; a regression guard, not a spec

function row(name, result, address, note = '') {
    const tx = txOn(result, address);
    assert.ok(succeeded(tx), `${name} failed`);
    // Everything burnt by the whole message chain (sender wallet, contract, recipients): each
    // transaction's total fees (storage + gas + the sender's share of forward fees) plus the
    // remaining forward fee carried by every internal message.
    let all = 0n;
    for (const t of result.transactions) {
        all += t.totalFees.coins;
        for (const m of t.outMessages.values()) if (m.info.type === 'internal') all += m.info.forwardFee;
    }
    return { name, gas: gasUsed(tx), fees: tx.totalFees.coins, all, note };
}

export async function measure() {
    const rows = [];
    {
        const f = await setupChannel();
        rows.push(row('open (deploy + OP_OPEN, 10 TON)', await openChannel(f, toNano('10')), f.channel.address, 'first message also deploys the code'));
        rows.push(row('top-up (OP_TOP_UP)', await f.channel.sendTopUp(f.client.getSender(), toNano('5')), f.channel.address));
        const v = f.voucher(toNano('3'), 5n);
        rows.push(row('worker close (OP_WORKER_CLOSE)', await f.channel.sendWorkerClose(f.worker.getSender(), v.cell, v.sig), f.channel.address, 'returns excess'));
        const v2 = f.voucher(toNano('4'), 6n);
        rows.push(row('challenge (OP_CHALLENGE)', await f.channel.sendChallenge(f.worker.getSender(), v2.cell, v2.sig), f.channel.address, 'returns excess'));
        f.blockchain.now = T0 + CHALLENGE_PERIOD;
        rows.push(row('finalize (OP_FINALIZE)', await f.channel.sendFinalize(f.worker.getSender()), f.channel.address, '2 payouts'));
    }
    {
        const f = await setupChannel();
        await openChannel(f);
        const c = f.coop(toNano('2.5'), 9n);
        rows.push(row('coop close (OP_COOP_CLOSE)', await f.channel.sendCoopClose(f.worker.getSender(), c.cell, c.clientSig, c.workerSig), f.channel.address, '2 signatures, 2 payouts'));
    }
    {
        const f = await setupChannel();
        await openChannel(f);
        rows.push(row('client close (OP_CLIENT_CLOSE)', await f.channel.sendClientClose(f.client.getSender()), f.channel.address, 'returns excess'));
    }
    {
        const f = await setupChannel();
        await openChannel(f);
        f.blockchain.now = T0 + WORKER_TIMEOUT;
        rows.push(row('timeout refund (OP_TIMEOUT_REFUND)', await f.channel.sendTimeoutRefund(f.client.getSender()), f.channel.address, '1 refund'));
    }
    {
        const f = await setupAnchor();
        rows.push(row('anchor post (OP_ANCHOR, first: deploy)', await f.anchor.sendAnchor(f.poster.getSender(), 1n, 10), f.anchor.address));
        for (let i = 0; i < 98; i++) await f.anchor.sendAnchor(f.poster.getSender(), BigInt(i + 2), 10);
        rows.push(row('anchor post (OP_ANCHOR, 100th entry)', await f.anchor.sendAnchor(f.poster.getSender(), 1000n, 10), f.anchor.address, 'dict grows O(log n)'));
    }
    return rows;
}

const ton = (n) => Number(fromNano(n)).toFixed(6);

export function table(rows) {
    const lines = [
        '| operation | gas used | total fees of the contract tx (TON) | fees of the whole chain (TON) | note |',
        '| --- | ---: | ---: | ---: | --- |',
        ...rows.map((r) => `| ${r.name} | ${r.gas} | ${ton(r.fees)} | ${ton(r.all)} | ${r.note} |`),
    ];
    return lines.join('\n');
}

const isMain = process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1];

test('gas table', async () => {
    const rows = await measure();
    for (const r of rows) assert.ok(r.gas > 0n && r.gas < GAS_BUDGET, `${r.name}: ${r.gas} gas`);
    const md = table(rows);
    console.log(md);
    if (isMain && process.argv.includes('--readme')) {
        const readme = join(dirname(fileURLToPath(import.meta.url)), '..', 'README.md');
        const text = readFileSync(readme, 'utf-8');
        const start = '<!-- gas-table:start -->';
        const end = '<!-- gas-table:end -->';
        const i = text.indexOf(start);
        const j = text.indexOf(end);
        assert.ok(i >= 0 && j > i, 'README.md lacks the gas-table markers');
        writeFileSync(readme, text.slice(0, i + start.length) + '\n' + md + '\n' + text.slice(j));
        console.log('README.md updated');
    }
});
