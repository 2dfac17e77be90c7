"""A conditional fit on 2 gloo processes: the contexts are sharded with their rows."""

import os
import socket
import traceback

import torch
import torch.multiprocessing as mp

from jko_plugin import JKOTrainer, make_flow

HS = [0.5, 1.0]
OPTS = dict(iterations=60, batch_size=128, lr=5e-3, progress=False, seed=0)


def data(n, seed):
    # Two classes far apart: a model that saw the rows with the wrong labels could not fit either.
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = (
        torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.4
        + torch.tensor([[3.0, 0.0], [-3.0, 1.0]]).double()[y]
    )
    return x, y


def new_flow():
    torch.manual_seed(0)
    return make_flow(2, 2, block="spline", hidden=8, bins=8, num_classes=2).double()


def _worker(rank, world, port, out):
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    res = {}
    try:
        (x, y), (xv, yv) = data(2000, 0), data(500, 1)
        flow = new_flow()
        hist = JKOTrainer(flow, HS, dist_timeout=60, **OPTS).fit(x, xv, context=y, context_val=yv)
        res["state"] = {k: v.clone() for k, v in flow.state_dict().items()}
        res["hist"] = hist.to_dict()
    except BaseException:
        res["error"] = traceback.format_exc()
    torch.save(res, f"{out}/rank{rank}.pt")


def test_two_processes_train_the_same_conditional_model_as_one(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(
        _worker, args=(2, port, str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    for p in ctx.processes:
        p.join(240)
    alive = [p for p in ctx.processes if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung"
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert "error" not in r0 and "error" not in r1, r0.get("error") or r1.get("error")
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["hist"] == r1["hist"]
    # the same conditional fit in one process: held-out conditional NLLs agree within training noise
    (x, y), (xv, yv) = data(2000, 0), data(500, 1)
    one = JKOTrainer(new_flow(), HS, **OPTS).fit(x, xv, context=y, context_val=yv)
    two_nll, one_nll = r0["hist"]["blocks"][-1]["nll"], one.blocks[-1].nll
    assert abs(two_nll - one_nll) < 0.1, (one_nll, two_nll)
    flow = new_flow()
    flow.load_state_dict(r0["state"])
    with torch.no_grad():
        wrong = float(-flow.log_prob(xv, 1 - yv).mean())
    assert wrong > two_nll + 5  # the labels carry the class: swapping them costs many nats
