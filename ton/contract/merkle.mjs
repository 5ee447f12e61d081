// Reference Merkle construction for receipt batches (the Rust side implements the same):
//   leaf  = SHA-256(0x00 || receipt_bytes)
//   node  = SHA-256(0x01 || left || right)
//   a level with an odd number of nodes promotes its last node unchanged to the next level
//   root of a single receipt = its leaf hash; empty batches are never anchored.
// The 32-byte root is posted to anchor.tolk as `root: uint256` (big-endian).
import { createHash } from 'node:crypto';

const sha256 = (...parts) => {
    const h = createHash('sha256');
    for (const p of parts) h.update(p);
    return h.digest();
};
const LEAF = Buffer.from([0x00]);
const NODE = Buffer.from([0x01]);

export const leafHash = (receipt) => sha256(LEAF, receipt);
export const nodeHash = (left, right) => sha256(NODE, left, right);

/** Root (32-byte Buffer) of a non-empty list of receipts (Buffers). */
export function merkleRoot(receipts) {
    if (receipts.length === 0) throw new Error('empty batch');
    let level = receipts.map(leafHash);
    while (level.length > 1) {
        const next = [];
        for (let i = 0; i + 1 < level.length; i += 2) next.push(nodeHash(level[i], level[i + 1]));
        if (level.length % 2 === 1) next.push(level[level.length - 1]); // odd node promoted
        level = next;
    }
    return level[0];
}

/** Inclusion proof for receipts[index]: list of { sibling, left } from the leaf level up
 *  (`left` = the sibling is on the left). Promoted levels contribute no step. */
export function merkleProof(receipts, index) {
    let level = receipts.map(leafHash);
    const proof = [];
    let i = index;
    while (level.length > 1) {
        const sib = i % 2 === 0 ? i + 1 : i - 1;
        if (sib < level.length) proof.push({ sibling: level[sib], left: sib < i });
        const next = [];
        for (let j = 0; j + 1 < level.length; j += 2) next.push(nodeHash(level[j], level[j + 1]));
        if (level.length % 2 === 1) next.push(level[level.length - 1]);
        level = next;
        i = Math.floor(i / 2);
    }
    return proof;
}

export function verifyProof(receipt, proof, root) {
    let h = leafHash(receipt);
    for (const { sibling, left } of proof) h = left ? nodeHash(sibling, h) : nodeHash(h, sibling);
    return h.equals(root);
}
