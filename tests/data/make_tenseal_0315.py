"""Makes tests/data/tenseal_0315.npz with TenSEAL 0.3.15 (the version nvflare[he] pins on
Python < 3.13): 3 clients' vectors of 1000 reals as ``CKKSVector.serialize()`` bytes (zstd)
under a small CKKS context (N=2048, primes [27, 27], scale 2^20), and TenSEAL 0.3.15's own
homomorphic sum of them. The context is left out: TenSEAL 0.3.18 refuses to load it, and the
engine's codec needs only its parameters (the tests take them from a 0.3.18 context of the same
parameters: SEAL picks the same primes and parms_id). Run with that TenSEAL:

    python -m venv v015 && v015/bin/pip install tenseal==0.3.15
    v015/bin/python tests/data/make_tenseal_0315.py
"""

import sys
from pathlib import Path

import numpy as np
import tenseal as ts

assert ts.__version__ == "0.3.15", ts.__version__
ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=2048, coeff_mod_bit_sizes=[27, 27])
ctx.global_scale = 2**20
rng = np.random.default_rng(15)
xs = rng.uniform(-1, 1, (3, 1000))
vecs = [ts.ckks_vector(ctx, x.tolist()) for x in xs]
total = vecs[0] + vecs[1]
total += vecs[2]
out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("tenseal_0315.npz"))
np.savez_compressed(
    out,
    **{f"client{i}": np.frombuffer(v.serialize(), np.uint8) for i, v in enumerate(vecs)},
    total=np.frombuffer(total.serialize(), np.uint8),
)
print(out, out.stat().st_size)
