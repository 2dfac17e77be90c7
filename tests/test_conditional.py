"""Conditional JKO steps: every kind inside nf.ConditionalNormalizingFlow, per context; the
class-wise Gaussian closed form; the conditional KL estimate; bad contexts."""

import math

import normflows as nf
import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from jko_plugin import JKOBlock, JKOStep, JKOTrainer, make_flow
from jko_plugin.steps.context import ContextEncoder, context_settings
from jko_plugin.steps.kinds import fresh_like, make_coupling_step, make_spline_step
from jko_plugin.steps.velocity import VelocityMLP
from jko_plugin.training.history import conditional_knn_entropy

from .flowcheck import check_flow, jacobian_logdet, perturb
from .test_trainer import jko_gaussian_step

DIM = 3
CONTEXTS = {"labels": {"num_classes": 3}, "continuous": {"context_dim": 2}}


class UserNet(nn.Module):
    """A velocity network of the user's own that reads a context: f(x, t, c)."""

    def __init__(self, dim, features, width=16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1 + features, width), nn.Tanh(), nn.Linear(width, dim))

    def forward(self, x, t, c):
        return self.net(torch.cat([x, t[:, None], c], dim=-1))


def build(kind, context):
    if kind == "ode":
        return JKOBlock(DIM, (12,), steps=3, **context)
    if kind == "ode-map":
        return JKOBlock(DIM, (12,), steps=2, density="map", newton_steps=4, **context)
    if kind == "ode-user":
        features = context_settings(**context).get("context_dim") or context_settings(**context)["embed_dim"]
        return JKOBlock(DIM, steps=3, velocity=UserNet(DIM, features), **context)
    if kind == "spline":
        return make_spline_step(DIM, layers=2, hidden=8, **context)
    return make_coupling_step(DIM, layers=2, hidden=8, **context)


KINDS = ("ode", "ode-map", "ode-user", "spline", "coupling")


def contexts(name, n):
    if name == "labels":
        return [torch.full((n,), k) for k in range(3)] + [torch.arange(n) % 3]
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 2, generator=g, dtype=torch.float64) for _ in range(3)]


def conditional_flow(kind, name):
    steps = [build(kind, CONTEXTS[name]).double() for _ in range(2)]
    for s in steps:
        perturb(s, 0.6)
    return nf.ConditionalNormalizingFlow(nf.distributions.DiagGaussian(DIM, trainable=False).double(), steps)


@pytest.mark.parametrize("name", sorted(CONTEXTS))
@pytest.mark.parametrize("kind", KINDS)
def test_conditional_flow_round_trip_and_log_det_per_context(kind, name):
    flow = conditional_flow(kind, name)
    step = flow.flows[0]
    x = torch.randn(6, DIM, dtype=torch.float64)
    ode_density = kind in ("ode", "ode-user")  # log-det integrated along the path: solver error
    atol = 1e-5 if ode_density else 1e-8
    maps = []
    for c in contexts(name, x.shape[0]):
        check_flow(_Bound(step, c), x, atol=atol)
        z, log_det = step.inverse(x, context=c)
        exact = torch.stack(
            [
                jacobian_logdet(lambda u, ci=c[i : i + 1]: step.inverse(u, context=ci)[0], x[i : i + 1])[0]
                for i in range(x.shape[0])
            ]
        )
        torch.testing.assert_close(log_det, exact, atol=1e-4 if ode_density else 1e-8, rtol=0)
        # normflows' conditional model: log p(x | c) = log q(T(x)) + sum log|det|, and sampling with c
        with torch.no_grad():
            lp = flow.log_prob(x, c)
            zz, ld = x, torch.zeros_like(lp)
            for f in reversed(flow.flows):
                zz, l_ = f.inverse(zz, context=c)
                ld = ld + l_
            torch.testing.assert_close(lp, flow.q0.log_prob(zz) + ld)
            samples, _ = flow.sample(x.shape[0], c)
        assert samples.shape == x.shape and torch.isfinite(samples).all()
        maps.append(z)
    # the context is used: different contexts, different maps
    assert float((maps[0] - maps[1]).detach().abs().max()) > 1e-3


class _Bound(nn.Module):
    """A step with its context fixed, as check_flow calls forward(z) / inverse(x)."""

    def __init__(self, step, context):
        super().__init__()
        self.step, self.context = step, context

    def forward(self, z):
        return self.step.forward(z, context=self.context)

    def inverse(self, x):
        return self.step.inverse(x, context=self.context)


def test_velocity_mlp_context_is_a_bias_shift_with_the_same_tangents():
    mlp = VelocityMLP(DIM, (10, 10), context_dim=2).double()
    perturb(mlp, 0.8)
    x = torch.randn(5, DIM, dtype=torch.float64)
    c = torch.randn(5, 2, dtype=torch.float64)
    s = torch.rand(5, dtype=torch.float64)
    v, trace = mlp.forward_with_trace(x, s, None, c)
    v2, jac = mlp.forward_with_jacobian(x, s, c)
    for i in range(5):
        exact = jacobian(lambda u: mlp(u[None], s[i : i + 1], c[i : i + 1])[0], x[i])
        torch.testing.assert_close(jac[i], exact)
        torch.testing.assert_close(trace[i], torch.trace(exact))
    torch.testing.assert_close(v, v2)
    # the same network with the context appended as input columns of a plain first layer
    first = mlp.layers[0]
    h = mlp.act.fn(torch.cat([x, s[:, None], c], 1) @ first.weight.t() + first.bias)
    for layer in mlp.layers[1:-1]:
        h = mlp.act.fn(layer(h))
    torch.testing.assert_close(v, mlp.layers[-1](h))


def test_unconditional_steps_are_as_before():
    block = JKOBlock(DIM, (8,))
    step = make_spline_step(DIM, hidden=8)
    for s in (block, step):
        assert not s.conditional and s.num_classes is None and s.context_dim is None
        assert not any("context" in k for k in s.state_dict())
        assert not {"num_classes", "context_dim", "embed_dim"} & set(s.config())
    assert "num_context_channels" not in step.config()["layers"][0]["kwargs"]
    assert type(make_flow(DIM, 2, block="ode", hidden=(8,))) is nf.NormalizingFlow
    # a config saved before context existed still builds the same step
    old = {k: v for k, v in block.config().items()}
    assert JKOBlock(**old).config() == block.config()


@pytest.mark.parametrize("kind", ["ode", "spline", "coupling"])
def test_config_keeps_the_context_and_fresh_steps_too(kind):
    opts = {"hidden": (8,), "steps": 1} if kind == "ode" else {"hidden": 8}
    flow = make_flow(DIM, 2, block=kind, num_classes=4, embed_dim=3, **opts)
    assert isinstance(flow, nf.ConditionalNormalizingFlow)
    step = flow.flows[0]
    assert step.config()["num_classes"] == 4 and step.config()["embed_dim"] == 3
    fresh = fresh_like(step, seed=1)
    assert fresh.num_classes == 4 and fresh.context_encoder.embed_dim == 3
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in step.state_dict().items()
    }
    assert fresh.context_encoder.embedding.weight.shape == (4, 3)


def test_bad_context_gets_a_clear_error():
    block = JKOBlock(DIM, (8,), num_classes=3)
    cont = make_spline_step(DIM, hidden=8, context_dim=2)
    x = torch.randn(4, DIM)
    cases = [
        (lambda: block.inverse(x), "this model is conditional: pass context"),
        (lambda: block.forward(x), "pass context"),
        (lambda: block.inverse(x, context=torch.tensor([0, 1, 3, 0])), r"outside \[0, 3\): 3"),
        (lambda: block.inverse(x, context=torch.tensor([-1, 1, 2, 0])), r"outside \[0, 3\): -1"),
        (lambda: block.inverse(x, context=torch.tensor([0.0, 1.0, 2.0, 0.0])), "integer class labels"),
        (lambda: block.inverse(x, context=torch.tensor([[0], [1], [2], [0]])), r"shape \(4,\)"),
        (lambda: block.inverse(x, context=torch.tensor([0, 1])), r"shape \(4,\)"),
        (lambda: cont.inverse(x, context=torch.randn(4, 3)), r"shape \(4, 2\)"),
        (lambda: cont.inverse(x, context=torch.full((4, 2), math.nan)), "NaN or inf"),
        (lambda: cont.inverse(x, context=[[0.0, 1.0]] * 4), "torch.Tensor or numpy array"),
        (lambda: JKOBlock(DIM).inverse(x, context=torch.zeros(4, dtype=torch.long)), "built without context"),
        (lambda: JKOBlock(DIM, num_classes=3, context_dim=2), "not both"),
        (lambda: JKOBlock(DIM, embed_dim=4), "needs num_classes"),
        (lambda: JKOBlock(DIM, num_classes=0), "num_classes must be a positive integer"),
        (
            lambda: JKOStep(
                [nf.flows.AutoregressiveRationalQuadraticSpline(DIM, 1, 8)], dim=DIM, num_classes=3
            ),
            "num_context_channels=None, the step's context has 3 features",
        ),
        (lambda: JKOBlock(DIM, velocity=VelocityMLP(DIM), context_dim=2), "context_dim 0"),
        (lambda: VelocityMLP(DIM, context_dim=2)(x, 0.5), r"needs a context of shape \(4, 2\)"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


def test_trainer_refuses_missing_or_foreign_contexts():
    x = torch.randn(64, 2)
    labels = torch.arange(64) % 2
    cond = make_flow(2, 1, block="ode", hidden=(8,), steps=1, num_classes=2)
    plain = make_flow(2, 1, block="ode", hidden=(8,), steps=1)
    opts = dict(iterations=1, batch_size=32, progress=False)
    with pytest.raises(ValueError, match=r"the flow is conditional: pass context=|pass context"):
        JKOTrainer(cond, [0.5], **opts).fit(x)
    with pytest.raises(ValueError, match="take no context"):
        JKOTrainer(plain, [0.5], **opts).fit(x, context=labels)
    with pytest.raises(ValueError, match="pass context_val"):
        JKOTrainer(cond, [0.5], **opts).fit(x, x[:16], context=labels)
    with pytest.raises(ValueError, match="context_val was given without x_val"):
        JKOTrainer(cond, [0.5], **opts).fit(x, context=labels, context_val=labels[:16])
    with pytest.raises(ValueError, match=r"shape \(64,\)"):
        JKOTrainer(cond, [0.5], **opts).fit(x, context=labels[:10])
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        JKOTrainer(cond, [0.5], **opts).fit(x, context=labels + 1)
    mixed = nf.ConditionalNormalizingFlow(
        nf.distributions.DiagGaussian(2, trainable=False),
        [JKOBlock(2, (8,)), JKOBlock(2, (8,), num_classes=2)],
    )
    with pytest.raises(ValueError, match="disagree on their context"):
        JKOTrainer(mixed, [0.5, 0.5], **opts).fit(x, context=labels)


def test_one_conditional_block_reproduces_the_exact_gaussian_step_of_each_class():
    # rho_{k-1}(. | c) = N(m_c, diag s_c^2): the JKO step of each class is that class's closed form.
    h = 0.7
    means = torch.tensor([[2.0, -1.0], [-1.5, 0.5], [0.0, 2.5]])
    sds = torch.tensor([[0.5, 1.6], [1.2, 0.4], [0.8, 0.8]])
    y = torch.arange(3).repeat_interleave(2000)
    x = torch.randn(len(y), 2) * sds[y] + means[y]
    flow = make_flow(2, 1, block="ode", hidden=(32, 32), steps=2, num_classes=3)
    JKOTrainer(flow, [h], iterations=300, batch_size=512, lr=1e-2, progress=False, seed=0).fit(x, context=y)
    with torch.no_grad():
        z, _ = flow.flows[0].inverse(x, context=y)
    for c in range(3):
        for j in range(2):
            xs, zs = x[y == c, j], z[y == c, j]
            mu, sd = jko_gaussian_step(float(xs.mean()), float(xs.std()), h)
            assert float(zs.mean()) == pytest.approx(mu, abs=0.04 * max(1.0, abs(mu))), (c, j)
            assert float(zs.std()) == pytest.approx(sd, rel=0.04), (c, j)


def test_conditional_fit_reports_the_conditional_kl():
    y = torch.arange(2).repeat_interleave(600)
    x = torch.randn(len(y), 2) * 0.5 + torch.tensor([[2.0, 0.0], [-2.0, 0.0]])[y]
    x_val, y_val = x[::3].clone(), y[::3].clone()
    flow = make_flow(2, 2, block="spline", hidden=16, num_classes=2)
    history = JKOTrainer(flow, [0.5, 1.0], iterations=40, batch_size=256, progress=False).fit(
        x, x_val, context=y, context_val=y_val
    )
    assert history.data_entropy == pytest.approx(conditional_knn_entropy(x_val, y_val))
    for block in history.blocks:
        assert block.kl_estimate == pytest.approx(block.nll - history.data_entropy)
    with torch.no_grad():
        nll = float(-flow.log_prob(x_val, y_val).mean())
    assert history.blocks[-1].nll == pytest.approx(nll, rel=1e-5)
    assert history.blocks[-1].kl_estimate < history.blocks[0].kl_estimate


def test_conditional_knn_entropy_of_known_gaussians():
    g = torch.Generator().manual_seed(0)
    # class c: N(m_c, s_c^2 I_2), H = log(2 pi e) + 2 log s_c; weights 1/3, 2/3
    y = torch.cat([torch.zeros(1000, dtype=torch.long), torch.ones(2000, dtype=torch.long)])
    s = torch.tensor([0.5, 2.0])
    x = torch.randn(3000, 2, generator=g, dtype=torch.float64) * s[y, None] + 5.0 * y[:, None]
    exact = math.log(2 * math.pi * math.e) + (1 / 3) * 2 * math.log(0.5) + (2 / 3) * 2 * math.log(2.0)
    assert conditional_knn_entropy(x, y) == pytest.approx(exact, abs=0.08)
    # continuous context: x = c + 0.3 noise, H(X | C) = entropy of the noise
    c = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    xc = c + 0.3 * torch.randn(3000, 2, generator=g, dtype=torch.float64)
    assert conditional_knn_entropy(xc, c) == pytest.approx(math.log(2 * math.pi * math.e * 0.09), abs=0.15)


def test_context_encoder_embeds_labels_and_passes_features():
    enc = ContextEncoder(num_classes=4, embed_dim=3)
    x = torch.zeros(3, 2, dtype=torch.float64)
    out = enc(torch.tensor([0, 3, 3]), x)
    assert out.dtype == torch.float64 and out.shape == (3, 3)
    torch.testing.assert_close(out[1], out[2])
    torch.testing.assert_close(out[0], enc.embedding.weight[0].double())
    c = torch.randn(3, 5)
    torch.testing.assert_close(ContextEncoder(context_dim=5)(c, x), c.double())
    assert ContextEncoder().config() == {} and not ContextEncoder().conditional
