"""What server and clients share: the data split, the model, the hospitals' keys.

Hospitals hold the Wisconsin breast cancer data (scikit-learn) split non-IID; the model is
logistic regression. Keys are derived from the partition id so the server knows every
participant's address in advance (a real consortium registers its members' addresses).
"""

from __future__ import annotations

import functools

from eth_account import Account

from bcfl_engine.demo import data, train
from bcfl_engine.updates import keccak256

SEED = 0


@functools.cache
def federated(num_partitions: int) -> data.FederatedData:
    return data.load("breast_cancer", num_partitions, seed=SEED)


def trainer(num_partitions: int) -> train.Trainer:
    fed = federated(num_partitions)
    return train.Trainer(fed.n_features, fed.task)


def hospital_key(partition_id: int) -> bytes:
    """The demo key of a hospital (never derive real keys like this)."""
    return keccak256(f"bcfl flower example hospital {partition_id}".encode())


def hospital_addresses(num_partitions: int) -> list[str]:
    return [Account.from_key(hospital_key(i)).address for i in range(num_partitions)]
