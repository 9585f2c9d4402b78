"""The hospitals: train locally, sign the reply, and (when told to) misbehave."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from bcfl_engine.chain import PayloadDomain
from bcfl_engine.demo import attacks
from bcfl_engine.integrations.flower import RECORD_KEY, ROUND_KEY, sign_reply

from .task import federated, hospital_key, trainer


def make_client_app(byzantine: frozenset[int] = frozenset()) -> ClientApp:
    """A ClientApp whose partitions in ``byzantine`` send sign-flipped models."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        n = int(context.node_config["num-partitions"])
        x, y = federated(n).clients[pid]
        tr = trainer(n)
        config = msg.content["config"]
        server_round = int(config["server-round"])
        params = tr.spec.flatten(msg.content["arrays"].to_torch_state_dict())
        delta = tr.update(params, x, y, seed=1000 * server_round + pid)
        if pid in byzantine:
            delta = attacks.sign_flip(delta)
        state = tr.spec.unflatten(params + delta)
        arrays = ArrayRecord(state)
        reply = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": len(y)})})
        if "bcfl-registry" in config:  # the server commits rounds: sign what we send
            domain = PayloadDomain(int(config["bcfl-chain-id"]), str(config["bcfl-registry"]))
            ndarrays = [a.numpy() for a in arrays.values()]
            # The registry round the server collects (it lags the server round once a server
            # round committed nothing); the weight is signed with the arrays.
            chain_round = int(config.get(ROUND_KEY, server_round))
            reply[RECORD_KEY] = sign_reply(
                ndarrays, hospital_key(pid), int(config["bcfl-task"]), chain_round, domain, len(y)
            )
        return Message(reply, reply_to=msg)

    return app
