// Golden vectors for the Rust implementation (tonlib-core + ed25519): if the JS reference
// encoders and the Rust encoders agree on these, they agree byte-for-byte. Also in README.md.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { Address, toNano } from '@ton/core';
import { channelData, voucherCell, closeCell, signCell, voucherBody, Op } from '../wrappers.mjs';
import { clientKeys, workerKeys } from '../testkit.mjs';

const V = {
    clientPub: 'd04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737', // seed = 32 x 0x11
    workerPub: 'a09aa5f47a6759802ff955f8dc2d2a14a5c99d23be97f864127ff9383455a4f0', // seed = 32 x 0x22
    dataHash: '0d3b99a47ecbf9ebe76ea490383f0722397ba5a9f1d51732cba72536c1bcd2d9',
    voucherBits: '636F76635555555555555555555555555555555555555555555555555555555555555555459682F00000000000000002A',
    voucherHash: '7f3eb69df48c3a24caefc08b6c65815d3808ba6ce639f149f9a53874e541d0e0',
    voucherSig: '8a1f0fe16ba1760bf86e459a2bd173bb8bc20c631919dcd67eb64a97f1cf6c4e5232b9a5bfc21638f9f8218c810e7409887de92b4d7606342e1140f33f0bdd0b',
    closeHash: 'c54a2078336a185b25e5d859bbaba97d605ee4175fd44cd251aa332ed9fb89bd',
    closeClientSig: '1046c6b0fc0545840e97ae266aa46a26a9fb35a5a0bb7deffb4ab3cbc9021644fb00f41cce42dc056aa03441d0fbb3597536e6798c123b4faccfb01e6c694509',
    closeWorkerSig: 'b33193941d9da8fc89487106e6bc65dec8f9a53748780c024de1c6c324d70d57377b8f9b994d3b782689073fd5c116703f5dc88d0c451b01d1ec536077cf340e',
    workerCloseBodyHash: '4324fc15039242f8ec91bb63c5531155c38a4a3303401f6c37295357d6445522',
};

it('golden vectors: keys, storage, voucher, close statement, message body', () => {
    assert.equal(clientKeys.publicKey.toString('hex'), V.clientPub);
    assert.equal(workerKeys.publicKey.toString('hex'), V.workerPub);

    // channelId 42, client 0:11..11, payout 0:22..22, challenge 3600 s, timeout 604800 s, status 0
    const data = channelData({
        channelId: 42n,
        clientKey: clientKeys.publicKey,
        workerKey: workerKeys.publicKey,
        clientAddress: Address.parseRaw('0:' + '11'.repeat(32)),
        workerPayout: Address.parseRaw('0:' + '22'.repeat(32)),
        challengePeriod: 3600,
        workerTimeout: 604800,
    });
    assert.equal(data.hash().toString('hex'), V.dataHash);

    // voucher for channel 0x55..55, cumulative 1.5 TON, seq 42
    const ch = BigInt('0x' + '55'.repeat(32));
    const v = voucherCell(ch, toNano('1.5'), 42n);
    assert.equal(v.bits.toString(), V.voucherBits);
    assert.equal(v.hash().toString('hex'), V.voucherHash);
    const sig = signCell(v, clientKeys.secretKey);
    assert.equal(sig.toString('hex'), V.voucherSig);

    // close statement for channel 0x55..55, amount 2 TON, seq 7
    const c = closeCell(ch, toNano('2'), 7n);
    assert.equal(c.hash().toString('hex'), V.closeHash);
    assert.equal(signCell(c, clientKeys.secretKey).toString('hex'), V.closeClientSig);
    assert.equal(signCell(c, workerKeys.secretKey).toString('hex'), V.closeWorkerSig);

    // OP_WORKER_CLOSE body, query_id 0
    assert.equal(voucherBody(Op.workerClose, v, sig).hash().toString('hex'), V.workerCloseBodyHash);
});
