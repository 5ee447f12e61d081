// Payment channel tests in the real TVM emulator (@ton/sandbox).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { toNano, beginCell } from '@ton/core';
import { Status, Err, DEPOSIT_RESERVE, Op, accountId, voucherCell, closeCell, txOn, txsOn, valueSentTo } from '../wrappers.mjs';
import {
    setupChannel,
    openChannel,
    expectOk,
    expectExit,
    balanceOf,
    assertNear,
    strangerKeys,
    workerKeys,
    T0,
    CHALLENGE_PERIOD,
    WORKER_TIMEOUT,
} from '../testkit.mjs';

const FEE_TOL = toNano('0.05'); // tolerance for gas/forwarding fees in balance checks
const CLOSE_VALUE = toNano('0.05'); // value the wrappers attach to close/finalize messages
// The final refund carries the whole remaining balance: everything the client sent minus the
// worker's amount (the reserve is part of what it sent), plus the value attached to the closing
// message itself, minus gas/forward fees. `rest` = client's total value sent - worker amount.
const refundOf = (rest) => rest + CLOSE_VALUE;
const REFUND_TOL = toNano('0.03');

describe('channel: open / top-up / getters', () => {
    it('opens: status 1, deposit = value - reserve, openedAt = now', async () => {
        const f = await setupChannel();
        await openChannel(f, toNano('10'));
        const s = await f.channel.getChannel();
        assert.equal(s.status, Status.open);
        assert.equal(s.deposit, toNano('10') - DEPOSIT_RESERVE);
        assert.equal(s.openedAt, T0);
        assert.equal(s.channelId, 1n);
        assert.equal(s.challengePeriod, CHALLENGE_PERIOD);
        assert.equal(s.workerTimeout, WORKER_TIMEOUT);
        assert.equal(s.settledAmount, 0n);
        assert.equal(s.clientKey, BigInt('0x' + f.config.clientKey.toString('hex')));
        assert.equal(s.workerKey, BigInt('0x' + f.config.workerKey.toString('hex')));
        const p = await f.channel.getParties();
        assert.ok(p.clientAddress.equals(f.client.address));
        assert.ok(p.workerPayout.equals(f.workerPayout.address));
    });

    it('getters hash vouchers/close statements exactly like the off-chain encoder', async () => {
        const f = await setupChannel();
        await openChannel(f);
        const v = voucherCell(f.id, toNano('1.5'), 42n);
        assert.equal(await f.channel.getVoucherHash(toNano('1.5'), 42n), BigInt('0x' + v.hash().toString('hex')));
        const c = closeCell(f.id, toNano('2'), 7n);
        assert.equal(await f.channel.getCloseHash(toNano('2'), 7n), BigInt('0x' + c.hash().toString('hex')));
    });

    it('top-up raises the deposit', async () => {
        const f = await setupChannel();
        await openChannel(f, toNano('10'));
        expectOk(await f.channel.sendTopUp(f.client.getSender(), toNano('5')), f.channel.address);
        const s = await f.channel.getChannel();
        assert.equal(s.deposit, toNano('15') - 2n * DEPOSIT_RESERVE);
        // a voucher above the original deposit but within the new one is now accepted
        const v = f.voucher(toNano('12'), 1n);
        expectOk(await f.channel.sendWorkerClose(f.worker.getSender(), v.cell, v.sig), f.channel.address);
    });

    it('unauthorised top-up is rejected and bounced back to the sender', async () => {
        const f = await setupChannel();
        await openChannel(f);
        const before = await balanceOf(f.blockchain, f.stranger.address);
        const r = await f.channel.sendTopUp(f.stranger.getSender(), toNano('5'));
        expectExit(r, f.channel.address, Err.notAuthorised);
        assert.equal((await f.channel.getChannel()).deposit, toNano('10') - DEPOSIT_RESERVE);
        assertNear(await balanceOf(f.blockchain, f.stranger.address), before, FEE_TOL, 'stranger got the bounce back');
    });

    it('open is client-only, once, and must exceed the reserve; unknown ops rejected', async () => {
        const f = await setupChannel();
        expectExit(await f.channel.sendOpen(f.stranger.getSender(), toNano('10')), f.channel.address, Err.notAuthorised);
        expectExit(await f.channel.sendOpen(f.client.getSender(), DEPOSIT_RESERVE), f.channel.address, Err.insufficientValue);
        // before opening, nothing but open works
        const v = f.voucher(toNano('1'), 1n);
        expectExit(await f.channel.sendWorkerClose(f.worker.getSender(), v.cell, v.sig), f.channel.address, Err.wrongState);
        expectExit(await f.channel.sendTopUp(f.client.getSender(), toNano('1')), f.channel.address, Err.wrongState);
        await openChannel(f);
        expectExit(await f.channel.sendOpen(f.client.getSender(), toNano('1')), f.channel.address, Err.wrongState);
        const r = await f.client.send({ to: f.channel.address, value: toNano('0.1'), body: beginCell().storeUint(0xdeadbeef, 32).storeUint(0, 64).endCell() });
        expectExit(r, f.channel.address, Err.unknownOp);
    });
});

describe('channel: unilateral close by the worker', () => {
    it('happy path: open, worker close, finalize after the window pays both sides', async () => {
        const f = await setupChannel();
        const clientBefore = await balanceOf(f.blockchain, f.client.address);
        const payoutBefore = await balanceOf(f.blockchain, f.workerPayout.address);
        await openChannel(f, toNano('10'));

        const v = f.voucher(toNano('3'), 5n);
        f.blockchain.now = T0 + 100;
        expectOk(await f.channel.sendWorkerClose(f.worker.getSender(), v.cell, v.sig), f.channel.address);
        let s = await f.channel.getChannel();
        assert.equal(s.status, Status.closing);
        assert.equal(s.settledAmount, toNano('3'));
        assert.equal(s.settledSeq, 5n);
        assert.equal(s.closeStartedAt, T0 + 100);

        f.blockchain.now = T0 + 100 + CHALLENGE_PERIOD;
        const r = await f.channel.sendFinalize(f.stranger.getSender(), toNano('0.05')); // anyone may finalize
        const tx = expectOk(r, f.channel.address);
        assert.equal(valueSentTo(tx, f.workerPayout.address), toNano('3'), 'worker payout message carries exactly the voucher amount');

        s = await f.channel.getChannel();
        assert.equal(s.status, Status.closed);
        assert.equal(s.settledAmount, toNano('3'));
        assert.equal(await balanceOf(f.blockchain, f.channel.address), 0n, 'nothing stranded on the channel');

        const payoutAfter = await balanceOf(f.blockchain, f.workerPayout.address);
        assertNear(payoutAfter - payoutBefore, toNano('3'), toNano('0.01'), 'worker payout');
        // client paid 10, got back 7 + unused reserve + the finalizer's 0.05, minus fees
        const clientAfter = await balanceOf(f.blockchain, f.client.address);
        assertNear(clientAfter - clientBefore, -toNano('3') + CLOSE_VALUE, toNano('0.03'), 'client net change');
        assert.ok(clientAfter - clientBefore < -toNano('3') + CLOSE_VALUE);
    });

    it('finalize too early is rejected', async () => {
        const f = await setupChannel();
        await openChannel(f);
        const v = f.voucher(toNano('1'), 1n);
        expectOk(await f.channel.sendWorkerClose(f.worker.getSender(), v.cell, v.sig), f.channel.address);
        f.blockchain.now = T0 + CHALLENGE_PERIOD - 1;
        expectExit(await f.channel.sendFinalize(f.worker.getSender()), f.channel.address, Err.windowNotOver);
        // finalize while still open is a state error
        const g = await setupChannel();
        await openChannel(g);
        expectExit(await g.channel.sendFinalize(g.worker.getSender()), g.channel.address, Err.wrongState);
    });

    it('a challenge with a newer voucher wins and the worker is paid the newer amount', async () => {
        const f = await setupChannel();
        await openChannel(f, toNano('10'));
        const old = f.voucher(toNano('3'), 5n);
        const newer = f.voucher(toNano('4'), 7n);
        expectOk(await f.channel.sendWorkerClose(f.worker.getSender(), old.cell, old.sig), f.channel.address);
        f.blockchain.now = T0 + CHALLENGE_PERIOD - 1;
        expectOk(await f.channel.sendChallenge(f.worker.getSender(), newer.cell, newer.sig), f.channel.address);
        const s = await f.channel.getChannel();
        assert.equal(s.settledAmount, toNano('4'));
        assert.equal(s.settledSeq, 7n);
        assert.equal(s.closeStartedAt, T0, 'a challenge does not extend the window');

        f.blockchain.now = T0 + CHALLENGE_PERIOD;
        const tx = expectOk(await f.channel.sendFinalize(f.worker.getSender()), f.channel.address);
        assert.equal(valueSentTo(tx, f.workerPayout.address), toNano('4'));
        assertNear(valueSentTo(tx, f.client.address), refundOf(toNano('6')), REFUND_TOL, 'client refund');
    });

    it('a stale voucher in a challenge is rejected', async () => {
        const f = await setupChannel();
        await openChannel(f);
        const cur = f.voucher(toNano('3'), 5n);
        expectOk(await f.channel.sendWorkerClose(f.worker.getSender(), cur.cell, cur.sig), f.channel.address);
        for (const [amount, seq] of [
            [toNano('3'), 5n], // same voucher again
            [toNano('2'), 6n], // newer seq, smaller amount
            [toNano('4'), 4n], // bigger amount, older seq
            [toNano('4'), 5n], // bigger amount, same seq
        ]) {
            const v = f.voucher(amount, seq);
            expectExit(await f.channel.sendChallenge(f.worker.getSender(), v.cell, v.sig), f.channel.address, Err.staleVoucher);
        }
        const s = await f.channel.getChannel();
        assert.equal(s.settledAmount, toNano('3'));
        assert.equal(s.settledSeq, 5n);
        // same amount with a higher seq is fine
        const same = f.voucher(toNano('3'), 6n);
        expectOk(await f.channel.sendChallenge(f.worker.getSender(), same.cell, same.sig), f.channel.address);
    });

    it('a challenge after the window is rejected', async () => {
        const f = await setupChannel();
        await openChannel(f);
        const cur = f.voucher(toNano('3'), 5n);
        expectOk(await f.channel.sendWorkerClose(f.worker.getSender(), cur.cell, cur.sig), f.channel.address);
        f.blockchain.now = T0 + CHALLENGE_PERIOD;
        const v = f.voucher(toNano('4'), 6n);
        expectExit(await f.channel.sendChallenge(f.worker.getSender(), v.cell, v.sig), f.channel.address, Err.windowOver);
        // a challenge while open (no close started) is a state error
        const g = await setupChannel();
        await openChannel(g);
        const w = g.voucher(toNano('1'), 1n);
        expectExit(await g.channel.sendChallenge(g.worker.getSender(), w.cell, w.sig), g.channel.address, Err.wrongState);
    });

    it('a voucher above the deposit is rejected', async () => {
        const f = await setupChannel();
        await openChannel(f, toNano('10'));
        const v = f.voucher(toNano('10') - DEPOSIT_RESERVE + 1n, 1n);
        expectExit(await f.channel.sendWorkerClose(f.worker.getSender(), v.cell, v.sig), f.channel.address, Err.amountAboveDeposit);
        const exact = f.voucher(toNano('10') - DEPOSIT_RESERVE, 1n);
        expectOk(await f.channel.sendWorkerClose(f.worker.getSender(), exact.cell, exact.sig), f.channel.address);
        f.blockchain.now = T0 + CHALLENGE_PERIOD;
        const tx = expectOk(await f.channel.sendFinalize(f.worker.getSender()), f.channel.address);
        assert.equal(valueSentTo(tx, f.workerPayout.address), toNano('10') - DEPOSIT_RESERVE);
    });
});

describe('channel: forged / misdirected statements', () => {
    it('a voucher for another channel is rejected', async () => {
        const f = await setupChannel({ channelId: 1n });
        const other = await setupChannel({ channelId: 2n }); // same parties and code, different id => different address
        assert.notEqual(other.id, f.id);
        await openChannel(f);
        // correctly signed by the client, but names the other channel
        const v = f.voucher(toNano('1'), 1n, { channel: other.id });
        expectExit(await f.channel.sendWorkerClose(f.worker.getSender(), v.cell, v.sig), f.channel.address, Err.wrongChannel);
        const c = f.coop(toNano('1'), 1n, { channel: other.id });
        expectExit(await f.channel.sendCoopClose(f.worker.getSender(), c.cell, c.clientSig, c.workerSig), f.channel.address, Err.wrongChannel);
        assert.equal((await f.channel.getChannel()).status, Status.open);
    });

    it('a bad signature is rejected', async () => {
        const f = await setupChannel();
        await openChannel(f);
        // signed by someone else
        const forged = f.voucher(toNano('1'), 1n, { keys: strangerKeys });
        expectExit(await f.channel.sendWorkerClose(f.worker.getSender(), forged.cell, forged.sig), f.channel.address, Err.badSignature);
        // signed by the worker instead of the client
        const selfSigned = f.voucher(toNano('1'), 1n, { keys: workerKeys });
        expectExit(await f.channel.sendWorkerClose(f.worker.getSender(), selfSigned.cell, selfSigned.sig), f.channel.address, Err.badSignature);
        // valid signature of a different voucher (amount tampered)
        const good = f.voucher(toNano('1'), 1n);
        const tampered = voucherCell(f.id, toNano('9'), 1n);
        expectExit(await f.channel.sendWorkerClose(f.worker.getSender(), tampered, good.sig), f.channel.address, Err.badSignature);
        // coop close with a forged worker signature
        const c = f.coop(toNano('1'), 1n, { wKeys: strangerKeys });
        expectExit(await f.channel.sendCoopClose(f.worker.getSender(), c.cell, c.clientSig, c.workerSig), f.channel.address, Err.badSignature);
        const d = f.coop(toNano('1'), 1n, { cKeys: strangerKeys });
        expectExit(await f.channel.sendCoopClose(f.worker.getSender(), d.cell, d.clientSig, d.workerSig), f.channel.address, Err.badSignature);
        assert.equal((await f.channel.getChannel()).status, Status.open);
    });

    it('a signed cell with the wrong tag is rejected', async () => {
        const f = await setupChannel();
        await openChannel(f);
        const v = f.voucher(toNano('1'), 1n, { tag: 0x636f636c }); // a close tag on a voucher
        expectExit(await f.channel.sendWorkerClose(f.worker.getSender(), v.cell, v.sig), f.channel.address, Err.wrongTag);
        const c = f.coop(toNano('1'), 1n, { tag: 0x636f7663 }); // a voucher tag on a close statement
        expectExit(await f.channel.sendCoopClose(f.worker.getSender(), c.cell, c.clientSig, c.workerSig), f.channel.address, Err.wrongTag);
    });
});

describe('channel: double close and closed state', () => {
    it('double close is rejected and the worker is never paid twice', async () => {
        const f = await setupChannel();
        await openChannel(f);
        const v = f.voucher(toNano('3'), 5n);
        expectOk(await f.channel.sendWorkerClose(f.worker.getSender(), v.cell, v.sig), f.channel.address);
        // second worker close while closing
        const v2 = f.voucher(toNano('4'), 6n);
        expectExit(await f.channel.sendWorkerClose(f.worker.getSender(), v2.cell, v2.sig), f.channel.address, Err.wrongState);
        // client close while closing
        expectExit(await f.channel.sendClientClose(f.client.getSender()), f.channel.address, Err.wrongState);
        // timeout refund while closing
        f.blockchain.now = T0 + WORKER_TIMEOUT;
        expectExit(await f.channel.sendTimeoutRefund(f.client.getSender()), f.channel.address, Err.wrongState);

        const tx = expectOk(await f.channel.sendFinalize(f.worker.getSender()), f.channel.address);
        assert.equal(valueSentTo(tx, f.workerPayout.address), toNano('3'));

        // everything after the close is rejected
        const payoutBefore = await balanceOf(f.blockchain, f.workerPayout.address);
        expectExit(await f.channel.sendFinalize(f.worker.getSender()), f.channel.address, Err.channelClosed);
        expectExit(await f.channel.sendWorkerClose(f.worker.getSender(), v2.cell, v2.sig), f.channel.address, Err.channelClosed);
        expectExit(await f.channel.sendChallenge(f.worker.getSender(), v2.cell, v2.sig), f.channel.address, Err.channelClosed);
        const c = f.coop(toNano('1'), 9n);
        expectExit(await f.channel.sendCoopClose(f.worker.getSender(), c.cell, c.clientSig, c.workerSig), f.channel.address, Err.channelClosed);
        expectExit(await f.channel.sendTopUp(f.client.getSender(), toNano('1')), f.channel.address, Err.channelClosed);
        expectExit(await f.channel.sendOpen(f.client.getSender(), toNano('1')), f.channel.address, Err.channelClosed);
        const plain = await f.client.send({ to: f.channel.address, value: toNano('1') });
        expectExit(plain, f.channel.address, Err.channelClosed);
        assert.equal(await balanceOf(f.blockchain, f.workerPayout.address), payoutBefore, 'no second payout');
        assert.equal(await balanceOf(f.blockchain, f.channel.address), 0n);
    });
});

describe('channel: cooperative close', () => {
    it('pays the agreed amount to the worker and refunds the rest at once', async () => {
        const f = await setupChannel();
        await openChannel(f, toNano('10'));
        const payoutBefore = await balanceOf(f.blockchain, f.workerPayout.address);
        const c = f.coop(toNano('2.5'), 9n);
        const r = await f.channel.sendCoopClose(f.stranger.getSender(), c.cell, c.clientSig, c.workerSig); // anyone may relay
        const tx = expectOk(r, f.channel.address);
        assert.equal(valueSentTo(tx, f.workerPayout.address), toNano('2.5'));
        assertNear(valueSentTo(tx, f.client.address), refundOf(toNano('7.5')), REFUND_TOL, 'client refund');
        const s = await f.channel.getChannel();
        assert.equal(s.status, Status.closed);
        assert.equal(s.settledAmount, toNano('2.5'));
        assert.equal(s.settledSeq, 9n);
        assertNear((await balanceOf(f.blockchain, f.workerPayout.address)) - payoutBefore, toNano('2.5'), toNano('0.01'));
        assert.equal(await balanceOf(f.blockchain, f.channel.address), 0n);
        // replaying the same close statement does nothing
        expectExit(await f.channel.sendCoopClose(f.stranger.getSender(), c.cell, c.clientSig, c.workerSig), f.channel.address, Err.channelClosed);
    });

    it('works during a unilateral close and checks the amount against the deposit', async () => {
        const f = await setupChannel();
        await openChannel(f, toNano('10'));
        const v = f.voucher(toNano('1'), 1n);
        expectOk(await f.channel.sendWorkerClose(f.worker.getSender(), v.cell, v.sig), f.channel.address);
        const tooMuch = f.coop(toNano('10'), 2n);
        expectExit(await f.channel.sendCoopClose(f.worker.getSender(), tooMuch.cell, tooMuch.clientSig, tooMuch.workerSig), f.channel.address, Err.amountAboveDeposit);
        const c = f.coop(toNano('2'), 2n);
        const tx = expectOk(await f.channel.sendCoopClose(f.worker.getSender(), c.cell, c.clientSig, c.workerSig), f.channel.address);
        assert.equal(valueSentTo(tx, f.workerPayout.address), toNano('2'));
    });

    it('a zero-amount coop close refunds everything without paying the worker', async () => {
        const f = await setupChannel();
        await openChannel(f, toNano('10'));
        const c = f.coop(0n, 1n);
        const tx = expectOk(await f.channel.sendCoopClose(f.client.getSender(), c.cell, c.clientSig, c.workerSig), f.channel.address);
        assert.equal(valueSentTo(tx, f.workerPayout.address), 0n);
        assert.equal(tx.outMessagesCount, 1);
    });
});

describe('channel: client close', () => {
    it('client close then the worker answers with a voucher', async () => {
        const f = await setupChannel();
        await openChannel(f, toNano('10'));
        f.blockchain.now = T0 + 500;
        expectOk(await f.channel.sendClientClose(f.client.getSender()), f.channel.address);
        let s = await f.channel.getChannel();
        assert.equal(s.status, Status.closing);
        assert.equal(s.settledAmount, 0n);
        assert.equal(s.closeStartedAt, T0 + 500);

        f.blockchain.now = T0 + 500 + CHALLENGE_PERIOD - 1;
        const v = f.voucher(toNano('2'), 1n); // the worker's first voucher on chain
        expectOk(await f.channel.sendChallenge(f.worker.getSender(), v.cell, v.sig), f.channel.address);
        s = await f.channel.getChannel();
        assert.equal(s.settledAmount, toNano('2'));

        f.blockchain.now = T0 + 500 + CHALLENGE_PERIOD;
        const tx = expectOk(await f.channel.sendFinalize(f.client.getSender()), f.channel.address);
        assert.equal(valueSentTo(tx, f.workerPayout.address), toNano('2'));
        assertNear(valueSentTo(tx, f.client.address), refundOf(toNano('8')), REFUND_TOL);
    });

    it('client close without an answer refunds everything', async () => {
        const f = await setupChannel();
        await openChannel(f, toNano('10'));
        expectOk(await f.channel.sendClientClose(f.client.getSender()), f.channel.address);
        f.blockchain.now = T0 + CHALLENGE_PERIOD;
        const tx = expectOk(await f.channel.sendFinalize(f.client.getSender()), f.channel.address);
        assert.equal(tx.outMessagesCount, 1, 'no worker payout message');
        assertNear(valueSentTo(tx, f.client.address), refundOf(toNano('10')), REFUND_TOL);
    });

    it('only the client may start a client close', async () => {
        const f = await setupChannel();
        await openChannel(f);
        expectExit(await f.channel.sendClientClose(f.worker.getSender()), f.channel.address, Err.notAuthorised);
    });
});

describe('channel: timeout refund', () => {
    it('refunds everything when the worker never shows up', async () => {
        const f = await setupChannel();
        const clientBefore = await balanceOf(f.blockchain, f.client.address);
        await openChannel(f, toNano('10'));
        f.blockchain.now = T0 + WORKER_TIMEOUT - 1;
        expectExit(await f.channel.sendTimeoutRefund(f.client.getSender()), f.channel.address, Err.timeoutNotReached);
        f.blockchain.now = T0 + WORKER_TIMEOUT;
        expectExit(await f.channel.sendTimeoutRefund(f.stranger.getSender()), f.channel.address, Err.notAuthorised);
        const tx = expectOk(await f.channel.sendTimeoutRefund(f.client.getSender()), f.channel.address);
        assert.equal(valueSentTo(tx, f.workerPayout.address), 0n);
        assertNear(valueSentTo(tx, f.client.address), refundOf(toNano('10')), REFUND_TOL);
        assert.equal((await f.channel.getChannel()).status, Status.closed);
        assert.equal(await balanceOf(f.blockchain, f.channel.address), 0n);
        assertNear(await balanceOf(f.blockchain, f.client.address), clientBefore, FEE_TOL, 'client got its money back');
        // and the worker can no longer close
        const v = f.voucher(toNano('1'), 1n);
        expectExit(await f.channel.sendWorkerClose(f.worker.getSender(), v.cell, v.sig), f.channel.address, Err.channelClosed);
    });
});

describe('channel: messages', () => {
    it('payout and refund messages are non-bounceable and tagged', async () => {
        const f = await setupChannel();
        await openChannel(f);
        const c = f.coop(toNano('1'), 1n);
        const r = await f.channel.sendCoopClose(f.worker.getSender(), c.cell, c.clientSig, c.workerSig);
        const tx = expectOk(r, f.channel.address);
        const out = [...tx.outMessages.values()];
        assert.equal(out.length, 2);
        for (const m of out) assert.equal(m.info.bounce, false);
        const ops = out.map((m) => m.body.beginParse().loadUint(32));
        assert.deepEqual(ops, [Op.payout, Op.refund]);
        assert.equal(out[0].body.beginParse().skip(32).loadUintBig(64), 1n, 'carries the channel id');
        // recipients processed them
        assert.equal(txsOn(r, f.workerPayout.address).length, 1);
        assert.ok(txOn(r, f.client.address));
        assert.equal(accountId(f.channel.address), f.id);
    });

    it('worker close / challenge / client close return the unused value to the sender', async () => {
        const f = await setupChannel();
        await openChannel(f);
        const before = await balanceOf(f.blockchain, f.channel.address);
        const v = f.voucher(toNano('1'), 1n);
        const r = await f.channel.sendWorkerClose(f.worker.getSender(), v.cell, v.sig, toNano('1'));
        const tx = expectOk(r, f.channel.address);
        const back = valueSentTo(tx, f.worker.address);
        assertNear(back, toNano('1'), toNano('0.01'), 'excess returned');
        const out = [...tx.outMessages.values()][0];
        assert.equal(out.body.beginParse().loadUint(32), 0xd53276db, 'excesses op');
        assertNear(await balanceOf(f.blockchain, f.channel.address), before, 1000n, 'channel balance unchanged');
        // a small value is enough; what the gas did not use still comes back
        const v2 = f.voucher(toNano('2'), 2n);
        const r2 = await f.channel.sendChallenge(f.worker.getSender(), v2.cell, v2.sig, toNano('0.01'));
        const tx2 = expectOk(r2, f.channel.address);
        const back2 = valueSentTo(tx2, f.worker.address);
        assert.ok(back2 > 0n && back2 < toNano('0.01'));
        assertNear(await balanceOf(f.blockchain, f.channel.address), before, 1000n, 'channel balance unchanged');
        assert.equal((await f.channel.getChannel()).settledAmount, toNano('2'));
    });
});
