"""JKOTrainer on 2 gloo processes (torch.multiprocessing, loopback only) against 1 process.

One spawn runs every 2-process scenario, so the ~10 s import of the package is paid once.
"""

import os
import socket
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from jko_plugin import make_flow
from jko_plugin.training.budget import IterationCosts, TimeBudget
from jko_plugin.training.distributed import DistributedContext, DistributedError, setup, shard
from jko_plugin.training.trainer import JKOTrainer

from .flowcheck import moons as _moons

HS = [0.5, 1.0]
OPTS = dict(iterations=100, batch_size=128, lr=5e-3, progress=False, seed=0)
# Held-out NLL spread over seeds 0-3 of the 1-process run is 0.008 nats (2.6635-2.6716);
# 2 processes draw other batches, so they agree within a few times that.
NLL_TOL = 0.03


def moons(n, seed=0):
    return _moons(n, seed).double()


def new_flow(init_seed):
    torch.manual_seed(init_seed)
    return make_flow(2, 2, block="ode", hidden=(16,), steps=1).double()


class Stop(Exception):
    pass


def _worker(rank, world, port, out):
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    x, x_val = moons(4000), moons(1000, 1)
    # Rank 0 starts from the 1-process model's weights; rank 1 from others, which the trainer
    # must overwrite with rank 0's.
    init = 0 if rank == 0 else 100 + rank
    res = {}
    try:
        # a) a full run; each rank names its own checkpoint folder, only rank 0's may appear.
        flow = new_flow(init)
        trainer = JKOTrainer(flow, HS, dist_timeout=60, **OPTS)
        hist = trainer.fit(x, x_val, checkpoint_dir=f"{out}/a/rank{rank}")
        res["a"] = {k: v.clone() for k, v in flow.state_dict().items()}
        res["a_hist"] = hist.to_dict()
        res["ctx"] = trainer.distributed

        # b) stopped after block 1 on every rank, then resumed by a fresh model on every rank.
        def stop(record):
            raise Stop(record.index)

        try:
            JKOTrainer(new_flow(init), HS, dist_timeout=60, **OPTS).fit(
                x, x_val, checkpoint_dir=f"{out}/b", callback=stop
            )
        except Stop:
            pass
        flow = new_flow(init + 7)
        JKOTrainer(flow, HS, dist_timeout=60, **OPTS).fit(x, x_val, checkpoint_dir=f"{out}/b", resume=True)
        res["b"] = {k: v.clone() for k, v in flow.state_dict().items()}

        # d) a time budget whose cost estimate differs by rank (rank 1's 10x rank 0's): rank 0's
        #    plan and its revision decide, so both ranks train the same iterations (else DDP hangs).
        plan = TimeBudget(3.0, IterationCosts(0.05 * (1 + 9 * rank), 0.0, 0.0), 2)
        flow = new_flow(init)
        hist = JKOTrainer(flow, HS, dist_timeout=60, **OPTS).fit(x, x_val, plan=plan)
        res["d"] = ({k: v.clone() for k, v in flow.state_dict().items()}, [b.iterations for b in hist.blocks])

        # c) rank 1 fails after block 1 and stays silent: rank 0 must stop with an error, no hang.
        def fail(record):
            if rank == 1:
                raise KeyError("rank 1 failed")

        start = time.perf_counter()
        try:
            opts = {**OPTS, "iterations": 10}
            JKOTrainer(new_flow(init), HS, dist_timeout=2, **opts).fit(x, x_val, callback=fail)
            res["c"] = "no error"
        except (KeyError, DistributedError) as err:
            res["c"] = (type(err).__name__, str(err), time.perf_counter() - start)
        if rank == 1:
            time.sleep(3)  # stays alive (and silent) past rank 0's timeout
    except BaseException:
        res["error"] = traceback.format_exc()
    torch.save(res, f"{out}/rank{rank}.pt")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(
        _worker, args=(2, _free_port(), str(out)), nprocs=2, join=False, start_method="spawn"
    )
    for p in ctx.processes:
        p.join(240)
    alive = [p.pid for p in ctx.processes if p.is_alive()]
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
    assert not alive, "a rank hung"
    res = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in res:
        assert "error" not in r, r["error"]
    return out, res


def test_ranks_end_with_identical_weights_and_figures(two_ranks):
    _, (r0, r1) = two_ranks
    assert r0["ctx"] == DistributedContext(
        rank=0, world_size=2, backend="gloo", local_rank=0, owns_group=True
    )
    assert r1["ctx"].rank == 1
    assert r0["a"].keys() == r1["a"].keys()
    for k in r0["a"]:
        assert torch.equal(r0["a"][k], r1["a"][k]), k
    assert r0["a_hist"] == r1["a_hist"]  # reduced figures: the same bits on both ranks
    assert len(r0["a_hist"]["blocks"]) == 2


def test_a_time_budget_trains_rank_0s_plan_on_every_rank(two_ranks):
    _, (r0, r1) = two_ranks
    (w0, its0), (w1, its1) = r0["d"], r1["d"]
    assert its0 == its1 and all(n > 1 for n in its0), (its0, its1)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k


def test_only_rank_0_writes_a_checkpoint(two_ranks):
    out, _ = two_ranks
    assert sorted(p.name for p in (out / "a" / "rank0").iterdir()) == [
        "trainer.json",
        "weights-002.safetensors",
    ]
    assert not (out / "a" / "rank1").exists()


def test_resume_across_ranks_gives_the_uninterrupted_model(two_ranks):
    _, (r0, r1) = two_ranks
    for k in r0["a"]:
        assert torch.equal(r0["b"][k], r0["a"][k]), k
        assert torch.equal(r1["b"][k], r0["a"][k]), k


def test_a_failing_rank_stops_the_others_with_a_clear_error(two_ranks):
    _, (r0, r1) = two_ranks
    assert r1["c"][0] == "KeyError"
    kind, message, seconds = r0["c"]
    assert kind == "DistributedError"
    assert "another rank has probably stopped" in message
    assert seconds < 2 + 20  # the 2 s timeout plus training, not a hang


def test_two_processes_match_one_within_noise(two_ranks):
    _, (r0, _) = two_ranks
    flow = new_flow(0)
    hist = JKOTrainer(flow, HS, **OPTS).fit(moons(4000), moons(1000, 1))
    one, two = hist.blocks[-1].nll, r0["a_hist"]["blocks"][-1]["nll"]
    assert abs(one - two) < NLL_TOL, (one, two)
    # Not bit-identical: rank 1 draws batches of its own shard.
    assert one != two
    flow2 = new_flow(0)
    flow2.load_state_dict(r0["a"])
    with torch.random.fork_rng():
        torch.manual_seed(1)
        s1, _ = flow.sample(4000)
        torch.manual_seed(1)
        s2, _ = flow2.sample(4000)
    # Sample means and covariances agree to within a few standard errors (~0.016 for 4000 points).
    assert torch.allclose(s1.mean(0), s2.mean(0), atol=0.08)
    assert torch.allclose(torch.cov(s1.T), torch.cov(s2.T), atol=0.1)


def test_single_process_context_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = setup()
    assert ctx == DistributedContext() and not ctx.active and ctx.is_main
    x = torch.arange(10.0)
    assert shard(x, ctx) is x
    assert torch.equal(shard(x, DistributedContext(rank=1, world_size=3)), torch.tensor([1.0, 4.0, 7.0]))


def test_bad_options(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        JKOTrainer(new_flow(0), HS, backend="mpi")
    with pytest.raises(ValueError, match="dist_timeout"):
        JKOTrainer(new_flow(0), HS, dist_timeout=0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for v in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(DistributedError, match="launch with torchrun"):
        setup()
