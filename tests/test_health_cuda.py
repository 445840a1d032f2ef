"""The monitor on a GPU: no host synchronization on the training step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sweeper.health import HealthMonitor

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: the step path is run under torch.cuda.set_sync_debug_mode('error')")


@pytest.mark.parametrize("mode", ["norm passed", "norm read by the optimizer hook", "nothing handed"])
def test_monitored_steps_do_not_synchronize_with_the_host(mode: str) -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv1d(16, 4, 1)).to(device)  # probed
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = HealthMonitor(check_every=64)  # no check inside the 40 steps below: that read is the one sync
    monitor.watch(model, None if mode == "nothing handed" else opt)
    x = torch.randn(32, 8, 50, device=device)
    for _ in range(40):
        loss = model(x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.get_total_norm([p.grad for p in model.parameters()]) if mode == "norm passed" else None
        torch.cuda.set_sync_debug_mode("error")  # any host sync in here raises
        try:
            monitor.after_backward(loss, norm)
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    with torch.no_grad():
        model.eval()
        model(x)  # a validation batch: the probes measure it
    monitor.after_eval(0, {"loss": float(loss)})  # one read for the 40 steps and the probes
    assert monitor.checks == 1 and monitor.verdict is None and monitor.steps_seen == 40
