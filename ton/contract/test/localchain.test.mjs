// localchain.mjs end to end: a child process, spoken to over HTTP only, with a real wallet v4r2
// (built here from its public code) deploying and opening a channel from code/channel.hex.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { Address, beginCell, Cell, contractAddress, external, internal, storeMessage, storeMessageRelaxed, toNano } from '@ton/core';
import { keyPairFromSeed, sign } from '@ton/crypto';
import { Channel, Op, DEPOSIT_RESERVE, simpleBody, voucherCell } from '../wrappers.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..');
const T0 = 1_750_000_000;

// Wallet v4r2 code as deployed on mainnet (code hash feb5ff68...5c0); the same BoC is embedded
// by tonweb / ton-kotlin / tonutils wallets.
const WALLET_V4R2_CODE = Cell.fromBase64(
    'te6cckECFAEAAtQAART/APSkE/S88sgLAQIBIAIDAgFIBAUE+PKDCNcYINMf0x/THwL4I7vyZO1E0NMf0x/T//QE0VFDuvKhUVG68qIF+QFUEGT5EPKj+AAkpMjLH1JAyx9SMMv/UhD0AMntVPgPAdMHIcAAn2xRkyDXSpbTB9QC+wDoMOAhwAHjACHAAuMAAcADkTDjDQOkyMsfEssfy/8QERITAubQAdDTAyFxsJJfBOAi10nBIJJfBOAC0x8hghBwbHVnvSKCEGRzdHK9sJJfBeAD+kAwIPpEAcjKB8v/ydDtRNCBAUDXIfQEMFyBAQj0Cm+hMbOSXwfgBdM/yCWCEHBsdWe6kjgw4w0DghBkc3RyupJfBuMNBgcCASAICQB4AfoA9AQw+CdvIjBQCqEhvvLgUIIQcGx1Z4MesXCAGFAEywUmzxZY+gIZ9ADLaRfLH1Jgyz8gyYBA+wAGAIpQBIEBCPRZMO1E0IEBQNcgyAHPFvQAye1UAXKwjiOCEGRzdHKDHrFwgBhQBcsFUAPPFiP6AhPLassfyz/JgED7AJJfA+ICASAKCwBZvSQrb2omhAgKBrkPoCGEcNQICEekk30pkQzmkD6f+YN4EoAbeBAUiYcVnzGEAgFYDA0AEbjJftRNDXCx+AA9sp37UTQgQFA1yH0BDACyMoHy//J0AGBAQj0Cm+hMYAIBIA4PABmtznaiaEAga5Drhf/AABmvHfaiaEAQa5DrhY/AAG7SB/oA1NQi+QAFyMoHFcv/ydB3dIAYyMsFywIizxZQBfoCFMtrEszMyXP7AMhAFIEBCPRR8qcCAHCBAQjXGPoA0z/IVCBHgQEI9FHyp4IQbm90ZXB0gBjIywXLAlAGzxZQBPoCFMtqEssfyz/Jc/sAAgBsgQEI1xj6ANM/MFIkgQEI9Fnyp4IQZHN0cnB0gBjIywXLAlAFzxZQA/oCE8tqyx8Syz/Jc/sAAAr0AMntVGliJeU=',
);
const SUBWALLET_ID = 698983191;

/** A wallet v4r2 (seqno, subwallet_id, public_key, empty plugin dict) and its external transfers. */
function walletV4(keys) {
    const data = beginCell().storeUint(0, 32).storeUint(SUBWALLET_ID, 32).storeBuffer(keys.publicKey, 32).storeBit(false).endCell();
    const init = { code: WALLET_V4R2_CODE, data };
    const address = contractAddress(0, init);
    /** base64 BoC of an external message: simple transfer (op 0) of `messages` ([{mode, message}]). */
    const transfer = (seqno, messages, { signWith = keys, validUntil = 0xffffffff } = {}) => {
        const signing = beginCell().storeUint(SUBWALLET_ID, 32).storeUint(validUntil, 32).storeUint(seqno, 32).storeUint(0, 8);
        for (const { mode, message } of messages) signing.storeUint(mode, 8).storeRef(beginCell().store(storeMessageRelaxed(message)));
        const signature = sign(signing.endCell().hash(), signWith.secretKey);
        const body = beginCell().storeBuffer(signature, 64).storeBuilder(signing).endCell();
        const ext = external({ to: address, init: seqno === 0 ? init : undefined, body });
        return beginCell().store(storeMessage(ext)).endCell().toBoc().toString('base64');
    };
    return { address, init, transfer };
}

/** Starts localchain.mjs; resolves when its ready line arrives. */
function startChain(args) {
    const child = spawn(process.execPath, [join(ROOT, 'localchain.mjs'), '--port', '0', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { stderr += d; });
    const exited = new Promise((res) => child.on('exit', (code, signal) => res({ code, signal })));
    const ready = new Promise((res, rej) => {
        const rl = createInterface({ input: child.stdout });
        rl.once('line', (line) => {
            const m = /^localchain listening (http:\/\/\S+)$/.exec(line);
            if (m) res(m[1]);
            else rej(new Error(`unexpected first line: ${line}`));
        });
        exited.then(({ code }) => rej(new Error(`localchain exited (${code}) before ready:\n${stderr}`)));
    });
    return { child, ready, exited, stderr: () => stderr };
}

const clientKeys = keyPairFromSeed(Buffer.alloc(32, 0x11));
const workerKeys = keyPairFromSeed(Buffer.alloc(32, 0x22));
const wallet = walletV4(clientKeys);
const channelCode = Cell.fromBoc(Buffer.from(readFileSync(join(ROOT, 'code', 'channel.hex'), 'utf-8').trim(), 'hex'))[0];
const channel = Channel.fromConfig(
    {
        channelId: 7n,
        clientKey: clientKeys.publicKey,
        workerKey: workerKeys.publicKey,
        clientAddress: wallet.address,
        workerPayout: Address.parse('0:' + '22'.repeat(32)),
        challengePeriod: 3600,
        workerTimeout: 7 * 86400,
    },
    channelCode,
);
const CH = channel.address.toRawString();
const W = wallet.address.toRawString();

describe('localchain.mjs over HTTP', () => {
    const dir = mkdtempSync(join(tmpdir(), 'localchain-test-'));
    const stateFile = join(dir, 'chain.json');
    let proc;
    let base;

    const call = async (method, path, body, expectStatus = 200) => {
        const r = await fetch(base + path, body === undefined ? { method } : { method, body: typeof body === 'string' ? body : JSON.stringify(body) });
        const j = await r.json();
        assert.equal(r.status, expectStatus, `${method} ${path}: ${JSON.stringify(j)}`);
        assert.equal(j.ok, expectStatus === 200);
        if (!j.ok) assert.equal(j.code, expectStatus);
        return j.ok ? j.result : j;
    };
    const get = (path, status) => call('GET', path, undefined, status);
    const post = (path, body, status) => call('POST', path, body, status);
    const getChannel = async () => {
        const r = await post('/api/v2/runGetMethod', { address: CH, method: 'get_channel', stack: [] });
        assert.equal(r.exit_code, 0);
        return r.stack.map(([t, v]) => (assert.equal(t, 'num'), BigInt(v)));
    };

    before(async () => {
        proc = startChain(['--now', String(T0), '--state', stateFile]);
        base = await proc.ready;
    });
    after(() => {
        if (proc && proc.child.exitCode === null) proc.child.kill('SIGKILL');
        rmSync(dir, { recursive: true, force: true });
    });

    it('unknown account, funding, wallet info', async () => {
        const info = await get(`/api/v2/getAddressInformation?address=${W}`);
        assert.equal(info.state, 'uninitialized');
        assert.equal(info.balance, '0');
        assert.equal(info.last_transaction_id.lt, '0');
        assert.equal(info.sync_utime, T0);
        assert.deepEqual(await post('/local/fund', { address: W, amount: toNano('100').toString() }), { balance: toNano('100').toString() });
        // any standard address form is accepted
        const friendly = wallet.address.toString({ bounceable: false, urlSafe: true });
        assert.equal(await get(`/api/v2/getAddressBalance?address=${friendly}`), toNano('100').toString());
        const wi = await get(`/api/v2/getWalletInformation?address=${encodeURIComponent(wallet.address.toString())}`);
        assert.equal(wi.wallet, false);
        assert.equal(wi.seqno, null);
        assert.equal(wi.account_state, 'uninitialized');
    });

    it('sendBoc: wallet deploy + channel deploy/open; getters', async () => {
        const open = internal({ to: channel.address, value: toNano('10'), bounce: true, init: channel.init, body: simpleBody(Op.open) });
        assert.deepEqual(await post('/api/v2/sendBoc', { boc: wallet.transfer(0, [{ mode: 3, message: open }]) }), { '@type': 'ok' });
        const wi = await get(`/api/v2/getWalletInformation?address=${W}`);
        assert.equal(wi.wallet, true);
        assert.equal(wi.seqno, 1);
        assert.equal(wi.account_state, 'active');
        assert.equal(wi.wallet_id, SUBWALLET_ID);

        const s = await getChannel();
        assert.equal(s[0], 7n); // channel_id
        assert.equal(s[1], 1n); // status open
        assert.equal(s[2], toNano('10') - DEPOSIT_RESERVE); // deposit
        assert.equal(s[6], BigInt(T0)); // opened_at
        const info = await get(`/api/v2/getAddressInformation?address=${CH}`);
        assert.equal(info.state, 'active');
        assert.ok(Cell.fromBase64(info.code).equals(channelCode));

        // arguments in, cells out
        const vh = await post('/api/v2/runGetMethod', { address: CH, method: 'get_voucher_hash', stack: [['num', '0x' + toNano('1.5').toString(16)], ['num', '42']] });
        assert.equal(BigInt(vh.stack[0][1]), BigInt('0x' + voucherCell(BigInt('0x' + channel.address.hash.toString('hex')), toNano('1.5'), 42n).hash().toString('hex')));
        const parties = await post('/api/v2/runGetMethod', { address: CH, method: 'get_parties', stack: [] });
        assert.equal(parties.stack[0][0], 'cell');
        assert.ok(Cell.fromBase64(parties.stack[0][1].bytes).beginParse().loadAddress().equals(wallet.address));
        // a getter that throws: ok, with its exit code
        const missing = await post('/api/v2/runGetMethod', { address: CH, method: 'no_such_getter', stack: [] });
        assert.equal(missing.exit_code, 11);
        assert.deepEqual(missing.stack, []);
    });

    it('rejected externals answer 500 with the exit code', async () => {
        const msg = { mode: 3, message: internal({ to: channel.address, value: toNano('1'), body: simpleBody(Op.topUp) }) };
        const badSig = await post('/api/v2/sendBoc', { boc: wallet.transfer(1, [msg], { signWith: workerKeys }) }, 500);
        assert.match(badSig.error, /exitcode=35/);
        const oldSeqno = await post('/api/v2/sendBoc', { boc: wallet.transfer(0, [msg]) }, 500);
        assert.match(oldSeqno.error, /exitcode=33/);
        // internal messages are not accepted by sendBoc
        const int = beginCell().store(storeMessage(internal({ to: channel.address, value: 1n }))).endCell().toBoc().toString('base64');
        await post('/api/v2/sendBoc', { boc: int }, 400);
        assert.equal((await get(`/api/v2/getWalletInformation?address=${W}`)).seqno, 1);
    });

    it('time, a failing internal message, transactions, stats', async () => {
        assert.deepEqual(await get('/local/time'), { now: T0, fixed: true });
        assert.deepEqual(await post('/local/time', { advance: 3600 }), { now: T0 + 3600, fixed: true });
        await post('/local/time', { now: T0 - 1 }, 400); // before the last transaction

        // top-up of 0.01 TON <= reserve: the channel refuses (110) and bounces; sendBoc is still ok
        const topUp = internal({ to: channel.address, value: toNano('0.01'), bounce: true, body: simpleBody(Op.topUp) });
        const boc = wallet.transfer(1, [{ mode: 3, message: topUp }]);
        const r = await post('/api/v2/sendBocReturnHash', { boc });
        assert.equal(r['@type'], 'ext.message.info');
        assert.equal(r.hash, Cell.fromBase64(boc).hash().toString('base64'));

        const txs = await get(`/api/v2/getTransactions?address=${CH}&limit=5`);
        assert.equal(txs.length, 2);
        const [failed, opened] = txs; // newest first
        assert.equal(failed.utime, T0 + 3600);
        assert.equal(failed.compute_exit_code, 110);
        assert.equal(failed.success, false);
        assert.equal(failed.in_msg.op, Op.topUp);
        assert.equal(failed.in_msg.source, W);
        assert.equal(failed.out_msgs.length, 1); // the bounce
        assert.equal(failed.out_msgs[0].destination, W);
        assert.equal(failed.out_msgs[0].bounced, true);
        assert.equal(opened.utime, T0);
        assert.equal(opened.compute_exit_code, 0);
        assert.equal(opened.success, true);
        assert.equal(opened.in_msg.op, Op.open);
        assert.equal(opened.in_msg.value, toNano('10').toString());
        assert.ok(BigInt(opened.fee) > 0n);
        assert.ok(BigInt(opened.transaction_id.lt) < BigInt(failed.transaction_id.lt));

        // wallet: the bounce (newest), then the external that caused it
        const wtx = await get(`/api/v2/getTransactions?address=${W}&limit=2`);
        assert.equal(wtx.length, 2);
        assert.equal(wtx[0].in_msg.bounced, true);
        assert.equal(wtx[0].in_msg.source, CH);
        assert.equal(wtx[1].in_msg.source, '');
        assert.equal(wtx[1].in_msg.hash, r.hash); // the external, as sent
        assert.equal(wtx[1].in_msg.op, null);
        // paging: lt + hash of the second one, inclusive
        const { lt, hash } = wtx[1].transaction_id;
        const page = await get(`/api/v2/getTransactions?address=${W}&limit=1&lt=${lt}&hash=${encodeURIComponent(hash)}`);
        assert.deepEqual(page, [wtx[1]]);

        const st = await get('/local/stats');
        // fund: faucet + wallet; open: wallet + channel; top-up: wallet + channel + bounce
        assert.equal(st.transactions, 7);
        assert.equal(st.external_messages, 3);
        assert.equal(st.by_op.external.count, 3);
        assert.equal(st.by_op['0x6f70656e'].count, 1);
        assert.equal(st.by_op['0x6f70656e'].fees, opened.fee);
        assert.equal(st.by_op['0x746f7075'].count, 1);
        assert.equal(st.by_op['0xffffffff'].count, 1);
        assert.equal(st.by_op.empty.count, 1);
        assert.equal(Object.values(st.by_op).reduce((a, e) => a + BigInt(e.fees), 0n), BigInt(st.fees));
    });

    it('bad requests', async () => {
        await get('/api/v2/nope', 404);
        await get('/api/v2/getAddressBalance?address=xyz', 400);
        await get('/api/v2/getAddressBalance', 400);
        await post('/api/v2/sendBoc', '{not json', 400);
        await post('/api/v2/sendBoc', { boc: 'AAAA' }, 400);
        await post('/api/v2/runGetMethod', { address: CH, method: 'get_channel', stack: [['num', 'x']] }, 400);
        await post('/api/v2/runGetMethod', { address: '0:' + '33'.repeat(32), method: 'seqno' }, 500);
        await post('/local/fund', { address: W, amount: '-1' }, 400);
        await post('/local/fund', { address: W, amount: '1', x: 1 + 'a'.repeat(1 << 20) }, 413);
        await get('/local/stats'); // still alive
    });

    it('state survives a restart; stdin EOF ends the process', async () => {
        const before = {
            wallet: await get(`/api/v2/getAddressInformation?address=${W}`),
            channel: await get(`/api/v2/getAddressInformation?address=${CH}`),
            txs: await get(`/api/v2/getTransactions?address=${CH}`),
            stats: await get('/local/stats'),
            getter: await getChannel(),
        };
        proc.child.stdin.end();
        assert.deepEqual(await proc.exited, { code: 0, signal: null });
        assert.ok(existsSync(stateFile) && !existsSync(stateFile + '.tmp'));

        proc = startChain(['--state', stateFile]);
        base = await proc.ready;
        assert.deepEqual(await get('/local/time'), { now: T0 + 3600, fixed: true });
        assert.deepEqual(await get(`/api/v2/getAddressInformation?address=${W}`), before.wallet);
        assert.deepEqual(await get(`/api/v2/getAddressInformation?address=${CH}`), before.channel);
        assert.deepEqual(await get(`/api/v2/getTransactions?address=${CH}`), before.txs);
        assert.deepEqual(await get('/local/stats'), before.stats);
        assert.deepEqual(await getChannel(), before.getter);

        // the restored chain keeps executing: seqno 2 tops up 1 TON
        const topUp = internal({ to: channel.address, value: toNano('1'), bounce: true, body: simpleBody(Op.topUp) });
        await post('/api/v2/sendBoc', { boc: wallet.transfer(2, [{ mode: 3, message: topUp }]) });
        assert.equal((await getChannel())[2], before.getter[2] + toNano('1') - DEPOSIT_RESERVE);
        proc.child.stdin.end();
        assert.deepEqual(await proc.exited, { code: 0, signal: null });
    });
});
