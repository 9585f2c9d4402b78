"""On-chain round proofs: Merkle trees, the ledger client, the embedded chain."""
