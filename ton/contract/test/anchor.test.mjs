// Receipt anchor tests in the real TVM emulator (@ton/sandbox), plus the reference Merkle construction.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { toNano, beginCell } from '@ton/core';
import { Err, ANCHOR_MIN_VALUE, parseAnchorData } from '../wrappers.mjs';
import { setupAnchor, expectOk, expectExit, T0 } from '../testkit.mjs';
import { merkleRoot, merkleProof, verifyProof, leafHash, nodeHash } from '../merkle.mjs';

const big = (buf) => BigInt('0x' + buf.toString('hex'));
const receipts = (n) => Array.from({ length: n }, (_, i) => Buffer.from(`receipt-${i}`));

describe('anchor contract', () => {
    it('anyone may post roots; they are indexed in order and readable by getters', async () => {
        const f = await setupAnchor();
        const rootA = merkleRoot(receipts(5));
        const rootB = merkleRoot(receipts(8));
        expectOk(await f.anchor.sendAnchor(f.poster.getSender(), big(rootA), 5), f.anchor.address); // deploys too
        assert.equal(await f.anchor.getCount(), 1);
        f.blockchain.now = T0 + 60;
        expectOk(await f.anchor.sendAnchor(f.other.getSender(), big(rootB), 8), f.anchor.address);
        assert.equal(await f.anchor.getCount(), 2);

        assert.deepEqual(await f.anchor.getRoot(0), { root: big(rootA), batchSize: 5, postedAt: T0 });
        assert.deepEqual(await f.anchor.getRoot(1), { root: big(rootB), batchSize: 8, postedAt: T0 + 60 });
        assert.ok((await f.anchor.getPoster(0)).equals(f.poster.address));
        assert.ok((await f.anchor.getPoster(1)).equals(f.other.address));
        assert.equal(await f.anchor.getOwner(), null);

        // the stored data matches the documented layout
        const contract = await f.blockchain.getContract(f.anchor.address);
        const data = parseAnchorData(contract.accountState.state.data);
        assert.equal(data.count, 2);
        assert.equal(data.dict.get(1).root, big(rootB));
        assert.ok(data.dict.get(1).poster.equals(f.other.address));
    });

    it('getters throw for a missing index', async () => {
        const f = await setupAnchor();
        expectOk(await f.anchor.sendAnchor(f.poster.getSender(), 1n, 1), f.anchor.address);
        await assert.rejects(() => f.anchor.getRoot(1), (e) => String(e.exitCode ?? e.message).includes(String(Err.noSuchAnchor)));
    });

    it('rejects posts below the minimum value, empty batches and unknown ops', async () => {
        const f = await setupAnchor({ owner: null });
        expectOk(await f.anchor.sendAnchor(f.poster.getSender(), 1n, 1), f.anchor.address);
        expectExit(await f.anchor.sendAnchor(f.poster.getSender(), 2n, 1, ANCHOR_MIN_VALUE - 1n), f.anchor.address, Err.insufficientValue);
        expectExit(await f.anchor.sendAnchor(f.poster.getSender(), 2n, 0), f.anchor.address, Err.emptyBatch);
        const r = await f.poster.send({ to: f.anchor.address, value: toNano('0.1'), body: beginCell().storeUint(0x12345678, 32).endCell() });
        expectExit(r, f.anchor.address, Err.unknownOp);
        assert.equal(await f.anchor.getCount(), 1);
    });

    it('stores an owner when one is configured', async () => {
        const probe = await setupAnchor();
        const f = await setupAnchor({ owner: probe.poster.address });
        expectOk(await f.anchor.sendAnchor(f.other.getSender(), 7n, 3), f.anchor.address);
        assert.ok((await f.anchor.getOwner()).equals(probe.poster.address));
    });
});

describe('merkle reference construction', () => {
    it('follows leaf/node domain separation and promotes the odd node', () => {
        const r = receipts(3);
        const l = r.map(leafHash);
        assert.ok(merkleRoot(r).equals(nodeHash(nodeHash(l[0], l[1]), l[2])));
        assert.ok(merkleRoot(r.slice(0, 1)).equals(l[0]));
        const r5 = receipts(5).map(leafHash);
        assert.ok(merkleRoot(receipts(5)).equals(nodeHash(nodeHash(nodeHash(r5[0], r5[1]), nodeHash(r5[2], r5[3])), r5[4])));
    });

    it('proofs verify for every leaf of several batch sizes', () => {
        for (const n of [1, 2, 3, 5, 8, 13]) {
            const r = receipts(n);
            const root = merkleRoot(r);
            for (let i = 0; i < n; i++) assert.ok(verifyProof(r[i], merkleProof(r, i), root), `n=${n} i=${i}`);
            assert.ok(!verifyProof(Buffer.from('forged'), merkleProof(r, 0), root));
        }
    });

    it('test vectors (for the Rust implementation, also in README.md)', () => {
        // receipts are the UTF-8 bytes "receipt-0" .. "receipt-(n-1)"; cross-checked with Python hashlib
        const expected = {
            1: '30ffcce68ded5ce2353dcb4cac3e9b97e8bfac59c144302ea341014fd0560f06',
            2: 'a4f3b7476224f66f0194174c22cf057cce957d94d8234b5fdf59420ba632f3bf',
            3: '65d69e1ec96e778d72ebcbcfe5dda0a60a7f1cbcc2059b6366816e1770d830c2',
            5: 'a54031cd5516fffc96135fdb6ac57ea940cf706e3acf0e6af457d43f8f1975f0',
        };
        for (const [n, hex] of Object.entries(expected)) assert.equal(merkleRoot(receipts(Number(n))).toString('hex'), hex, `n=${n}`);
    });
});
