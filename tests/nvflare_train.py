"""The client script of tests/test_nvflare_sim.py: receive the global model, move it a little
(each site its own way: a shift and seeded noise), send it back with its step count."""

import nvflare.client as flare
import torch

flare.init()
site = int(flare.get_site_name().rsplit("-", 1)[-1])
g = torch.Generator().manual_seed(site)
while flare.is_running():
    model = flare.receive()
    params = {
        k: torch.as_tensor(v)
        + 0.01 * site
        + 0.01 * torch.randn(torch.as_tensor(v).shape, generator=g)
        for k, v in model.params.items()
    }
    flare.send(flare.FLModel(params=params, meta={"NUM_STEPS_CURRENT_ROUND": 2}))
