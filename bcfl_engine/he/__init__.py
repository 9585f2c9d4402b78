"""CKKS secure aggregation through TenSEAL: keys, client encryption, the SEAL wire format, the homomorphic weighted sum."""
