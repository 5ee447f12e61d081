//! Merkle roots of receipt batches, as the anchor contract stores them and
//! `ton/contract/merkle.mjs` builds them: leaf = `SHA-256(0x00 || receipt)`, node =
//! `SHA-256(0x01 || left || right)`, and a level with an odd number of nodes promotes its last
//! node unchanged. Anyone holding a receipt and its proof can check it against the root
//! posted on chain.

use sha2::{Digest, Sha256};

/// One step of a proof: the sibling hash and whether it is on the left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProofStep {
    /// The sibling's hash.
    pub sibling: [u8; 32],
    /// The sibling is the left operand.
    pub left: bool,
}

fn leaf(receipt: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(receipt)
        .finalize()
        .into()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// Builds the tree bottom-up; `visit` sees each level (before it is reduced) with more than one
/// node. Returns the root, `None` for an empty batch.
fn reduce<R: AsRef<[u8]>>(receipts: &[R], mut visit: impl FnMut(&[[u8; 32]])) -> Option<[u8; 32]> {
    let mut level: Vec<[u8; 32]> = receipts.iter().map(|r| leaf(r.as_ref())).collect();
    while level.len() > 1 {
        visit(&level);
        level = level
            .chunks(2)
            .map(|pair| pair.get(1).map_or(pair[0], |right| node(&pair[0], right)))
            .collect();
    }
    level.first().copied()
}

/// The root of a batch; `None` when it is empty (empty batches are never anchored).
pub fn root<R: AsRef<[u8]>>(receipts: &[R]) -> Option<[u8; 32]> {
    reduce(receipts, |_| {})
}

/// The proof for `receipts[index]`, leaf level first; `None` if out of range. Levels where the
/// node is promoted add no step.
pub fn proof<R: AsRef<[u8]>>(receipts: &[R], index: usize) -> Option<Vec<ProofStep>> {
    if index >= receipts.len() {
        return None;
    }
    let mut steps = Vec::new();
    let mut i = index;
    reduce(receipts, |level| {
        let sibling = i ^ 1;
        if let Some(s) = level.get(sibling) {
            steps.push(ProofStep {
                sibling: *s,
                left: sibling < i,
            });
        }
        i /= 2;
    });
    Some(steps)
}

/// Whether `proof` links `receipt` to `root`.
pub fn verify(receipt: &[u8], proof: &[ProofStep], root: &[u8; 32]) -> bool {
    let top = proof.iter().fold(leaf(receipt), |h, step| {
        if step.left {
            node(&step.sibling, &h)
        } else {
            node(&h, &step.sibling)
        }
    });
    top == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipts(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("receipt-{i}").into_bytes())
            .collect()
    }

    /// README "Merkle construction" vectors.
    #[test]
    fn roots_match_the_readme_vectors() {
        for (n, want) in [
            (
                1,
                "30ffcce68ded5ce2353dcb4cac3e9b97e8bfac59c144302ea341014fd0560f06",
            ),
            (
                2,
                "a4f3b7476224f66f0194174c22cf057cce957d94d8234b5fdf59420ba632f3bf",
            ),
            (
                3,
                "65d69e1ec96e778d72ebcbcfe5dda0a60a7f1cbcc2059b6366816e1770d830c2",
            ),
            (
                5,
                "a54031cd5516fffc96135fdb6ac57ea940cf706e3acf0e6af457d43f8f1975f0",
            ),
        ] {
            assert_eq!(hex::encode(root(&receipts(n)).unwrap()), want, "n = {n}");
        }
        assert_eq!(root::<Vec<u8>>(&[]), None);
    }

    #[test]
    fn every_proof_verifies_and_tampering_fails() {
        for n in 1..=9 {
            let rs = receipts(n);
            let r = root(&rs).unwrap();
            for (i, receipt) in rs.iter().enumerate() {
                let p = proof(&rs, i).unwrap();
                assert!(verify(receipt, &p, &r), "n = {n}, i = {i}");
                assert!(!verify(b"forged", &p, &r));
                if let Some(first) = p.first() {
                    let mut flipped = p.clone();
                    flipped[0].left = !first.left;
                    assert!(!verify(receipt, &flipped, &r));
                }
            }
            assert_eq!(proof(&rs, n), None);
        }
        // 5 receipts: the last one is promoted twice, so its proof has a single step.
        assert_eq!(proof(&receipts(5), 4).unwrap().len(), 1);
    }
}
