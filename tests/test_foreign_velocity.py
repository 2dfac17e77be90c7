"""JKOBlock with a velocity network of the user's own: divergence by torch.func."""

import normflows as nf
import pytest
import torch
from torch import nn

from jko_plugin import JKOBlock, JKOTrainer, StepSchedule
from jko_plugin.steps.velocity import VelocityMLP, func_divergence

from .flowcheck import check_flow, jacobian_logdet, perturb


class Wrapped(nn.Module):
    """A VelocityMLP hidden behind another class: the block must take the torch.func path."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x, t):
        return self.mlp(x, t)


class UserNet(nn.Module):
    """The kind of network a flow-matching user writes: time as an input column, LayerNorm, SiLU."""

    def __init__(self, dim, width=16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, width), nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim)
        )

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=-1))


class Truncating(nn.Module):
    def forward(self, x, t):
        return x[:, :1] * t[:, None]


def pair(dim, **kw):
    """The same MLP on the fast path and behind the torch.func path, float64."""
    mlp = VelocityMLP(dim, (12, 12), activation="softplus")
    perturb(mlp, 0.8)
    fast = JKOBlock(dim, velocity=mlp, **kw).double()
    foreign = JKOBlock(dim, velocity=Wrapped(mlp), **kw).double()
    return fast, foreign


def jko_loss(block, x, h=0.5):
    out = block.transport(x)
    return (0.5 * out.z.square().sum(-1) - out.log_det + out.sq_displacement / (2 * h)).mean()


@pytest.mark.parametrize("dim", [1, 3])
def test_func_path_matches_fast_path_values_and_gradients(dim):
    fast, foreign = pair(dim)
    x = torch.randn(9, dim, dtype=torch.float64)
    a, b = fast.transport(x), foreign.transport(x)
    for name in ("z", "log_det", "sq_displacement", "kinetic_energy"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name))
    # Training differentiates through the torch.func divergence: same gradients as the tangents.
    g_fast = torch.autograd.grad(jko_loss(fast, x), list(fast.velocity.parameters()))
    g_foreign = torch.autograd.grad(jko_loss(foreign, x), list(foreign.velocity.parameters()))
    for gf, gg in zip(g_fast, g_foreign):
        torch.testing.assert_close(gg, gf)


def test_func_hutchinson_matches_fast_hutchinson_with_the_same_probes():
    mlp = VelocityMLP(4, (10,))
    perturb(mlp, 0.8)
    mlp = mlp.double()
    x = torch.randn(6, 4, dtype=torch.float64)
    s = torch.full((6,), 0.3, dtype=torch.float64)
    probes = torch.randint(0, 2, (6, 3, 4), dtype=torch.float64) * 2 - 1
    v_ref, est_ref = mlp.forward_with_trace(x, 0.3, probes)
    v, est = func_divergence(Wrapped(mlp), x, s, probes)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(est, est_ref)


def test_user_network_log_det_matches_autograd_jacobian():
    torch.manual_seed(0)
    block = JKOBlock(2, velocity=UserNet(2), steps=8).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    _, ld = block.inverse(x)
    ref = jacobian_logdet(lambda u: block.inverse(u)[0], x)
    assert ld.abs().min() > 1e-3, "map too close to the identity for a meaningful check"
    torch.testing.assert_close(ld, ref, rtol=1e-3, atol=0)
    check_flow(block, x, atol=1e-5)


def test_user_network_trains_in_the_block_wise_trainer():
    torch.manual_seed(0)
    x = torch.randn(600, 2) * torch.tensor([2.0, 0.5]) + 1.0
    blocks = [JKOBlock(2, velocity=UserNet(2), steps=1) for _ in range(2)]
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), blocks[::-1])
    before = -flow.log_prob(x).mean().item()
    trainer = JKOTrainer(
        flow, StepSchedule.geometric(2), iterations=30, batch_size=200, eval_size=200, progress=False
    )
    trainer.fit(x)
    with torch.no_grad():
        after = -flow.log_prob(x).mean().item()
    # N(1 + (2, .5) z) has entropy 2.84 nats; the untrained identity flow scores about 4.8.
    assert after < before - 1.0, (before, after)


def test_config_describes_a_given_mlp_and_refuses_a_foreign_network():
    mlp = VelocityMLP(3, (8, 5), activation="silu", time_dependent=False)
    block = JKOBlock(3, velocity=mlp)
    cfg = block.config()
    assert (cfg["hidden"], cfg["activation"], cfg["time_dependent"]) == ([8, 5], "silu", False)
    rebuilt = JKOBlock.from_config(cfg)
    rebuilt.load_state_dict(block.state_dict())
    x = torch.randn(4, 3)
    torch.testing.assert_close(rebuilt.inverse(x)[1], block.inverse(x)[1])
    with pytest.raises(ValueError, match="own velocity network \\(UserNet\\).*torch.save"):
        JKOBlock(3, velocity=UserNet(3)).config()


def test_bad_velocity_networks_are_refused_clearly():
    with pytest.raises(ValueError, match="velocity must be an nn.Module"):
        JKOBlock(2, velocity=lambda x, t: x)
    with pytest.raises(ValueError, match="velocity has dim 3, the block has dim 2"):
        JKOBlock(2, velocity=VelocityMLP(3))
    block = JKOBlock(2, velocity=Truncating())
    with pytest.raises(ValueError, match=r"returned shape \(4, 1\) for x of shape \(4, 2\)"):
        block.velocity_at(torch.randn(4, 2), 0.5)
