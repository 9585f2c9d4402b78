"""The client script of tests/test_nvflare_sim.py: receive the global model, move it a little
(each site its own way), send it back with its step count."""

import nvflare.client as flare
import torch

flare.init()
site = flare.get_site_name()
shift = 0.01 * (1 + int(site.rsplit("-", 1)[-1]))
while flare.is_running():
    model = flare.receive()
    params = {k: torch.as_tensor(v) + shift for k, v in model.params.items()}
    flare.send(flare.FLModel(params=params, meta={"NUM_STEPS_CURRENT_ROUND": 2}))
