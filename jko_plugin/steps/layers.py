r"""normflows layers as JSON: describe a layer, rebuild it, count its network evaluations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import normflows as nf
import torch
from normflows.flows import Flow
from normflows.utils.masks import create_alternating_binary_mask
from torch import Tensor, nn

from .._validate import choice
from .coupling import IdentityInitCoupledRQSpline, IdentityInitLULinear
from .grid import GridRQSpline
from .normalize import Standardize
from .rq_spline import AutoregressiveRQSpline

__all__ = ["LAYER_TYPES", "LayerType", "build_layer", "describe_layer", "flow_nfe", "layer_nfe"]

#: The attribute where ``build_layer`` records the description a layer was built from, so that
#: describing it again needs no reading of normflows internals.
_SPEC_ATTR = "_jko_spec"


def _activation_name(act: object) -> str:
    cls = type(act)
    if getattr(nn, cls.__name__, None) is not cls or repr(act) != repr(cls()):
        raise ValueError(f"only torch.nn activations with default arguments can be saved, got {act!r}")
    return cls.__name__


def _net_args(blocks: nn.ModuleList) -> dict:
    first = blocks[0] if len(blocks) else None
    return {
        "num_blocks": len(blocks),
        "activation": _activation_name(first.activation) if first is not None else "ReLU",
        "dropout_probability": float(first.dropout.p) if first is not None else 0.0,
    }


def _check_spline(tails: object, tail_bound: object) -> float:
    if tails != "linear" or isinstance(tail_bound, Tensor):
        raise ValueError(f"only splines with linear tails and a scalar bound can be saved, got {tails!r}")
    return float(tail_bound)


def _describe_arqs(layer: Flow) -> dict:
    t = layer.mprqat
    made = t.autoregressive_net
    context = made.context_layer.in_features if hasattr(made, "context_layer") else None
    return {
        "num_input_channels": made.initial_layer.in_features,
        "num_hidden_channels": made.initial_layer.out_features,
        "num_context_channels": context,
        "num_bins": t.num_bins,
        "tail_bound": _check_spline(t.tails, t.tail_bound),
        **_net_args(made.blocks),
    }  # the MADE masks (and permute_mask's effect) are buffers, restored with the weights


def _describe_crqs(layer: Flow) -> dict:
    c = layer.prqct
    net = c.transform_net
    # The mask is create_alternating_binary_mask(d, even=reverse_mask); its zeros are the identity features.
    ident = c.identity_features.tolist()
    options = [
        r
        for r in (False, True)
        if (create_alternating_binary_mask(c.features, even=r) <= 0).nonzero().flatten().tolist() == ident
    ]
    if not options:
        raise ValueError("only CoupledRationalQuadraticSpline layers with an alternating mask can be saved")
    reverse = options[0]
    return {
        "num_input_channels": c.features,
        "num_hidden_channels": net.hidden_features,
        "num_context_channels": net.context_features,
        "num_bins": c.num_bins,
        "tail_bound": _check_spline(c.tails, c.tail_bound),
        "reverse_mask": reverse,
        **_net_args(net.blocks),
    }


def _describe_affine(layer: Flow) -> dict:
    return {
        "shape": list(layer.s.shape[1:]),
        "scale": isinstance(layer.s, nn.Parameter),
        "shift": isinstance(layer.t, nn.Parameter),
    }


def _with_activation(cls: type) -> Callable[..., Flow]:
    def build(activation: str = "ReLU", **kwargs: Any) -> Flow:
        act = getattr(nn, activation, None)
        if not (isinstance(act, type) and issubclass(act, nn.Module)):
            raise ValueError(f"activation must name a torch.nn module, got {activation!r}")
        return cls(activation=act, **kwargs)

    return build


def _describe_permute(layer: Flow) -> dict:
    out = {"num_channels": layer.num_channels, "mode": layer.mode}
    if layer.mode == "shuffle":
        out["perm"] = layer.perm.tolist()
    return out


def _build_permute(num_channels: int, mode: str = "shuffle", perm: list[int] | None = None) -> Flow:
    """normflows' ``Permute``; ``perm`` fixes a shuffle (a fresh one is random)."""
    layer = nf.flows.Permute(num_channels, mode=mode)
    if perm is not None:
        if mode != "shuffle" or sorted(perm) != list(range(num_channels)):
            raise ValueError(
                f"perm must be a permutation of range({num_channels}) with mode='shuffle', got {perm}"
            )
        with torch.no_grad():
            order = torch.tensor(perm)
            layer.perm.copy_(order)
            layer.inv_perm.copy_(torch.argsort(order))
    return layer


@dataclass(frozen=True)
class LayerType:
    """How a normflows layer class is saved and counted.

    Attributes:
        cls: The normflows class (matched exactly, not subclasses).
        describe: ``layer -> JSON constructor arguments`` for layers not built by ``build_layer``.
        build: ``(**arguments) -> a freshly initialised layer``.
        nfe: ``(layer, dim) -> network evaluations per sample`` in the latent -> data direction.
    """

    cls: type
    describe: Callable[[Flow], dict]
    build: Callable[..., Flow]
    nfe: Callable[[Flow, int], int]


def _no_network(layer: Flow, dim: int) -> int:
    return 0


def _one_pass(layer: Flow, dim: int) -> int:
    return 1


def _autoregressive(layer: Flow, dim: int) -> int:
    # normflows' forward (latent -> data) inverts the autoregressive transform: one pass per coordinate.
    return dim


#: normflows layers that a saved model may hold (inside a ``JKOStep`` or between JKO steps).
LAYER_TYPES: dict[str, LayerType] = {
    "AutoregressiveRationalQuadraticSpline": LayerType(
        nf.flows.AutoregressiveRationalQuadraticSpline,
        _describe_arqs,
        _with_activation(nf.flows.AutoregressiveRationalQuadraticSpline),
        _autoregressive,
    ),
    "AutoregressiveRQSpline": LayerType(
        AutoregressiveRQSpline,
        _describe_arqs,
        _with_activation(AutoregressiveRQSpline),
        _autoregressive,
    ),
    "CoupledRationalQuadraticSpline": LayerType(
        nf.flows.CoupledRationalQuadraticSpline,
        _describe_crqs,
        _with_activation(nf.flows.CoupledRationalQuadraticSpline),
        _one_pass,
    ),
    "IdentityInitCoupledRQSpline": LayerType(
        IdentityInitCoupledRQSpline,
        _describe_crqs,
        _with_activation(IdentityInitCoupledRQSpline),
        _one_pass,
    ),
    "GridRQSpline": LayerType(
        GridRQSpline,
        lambda layer: {
            "given": layer.given,
            "num_bins": layer.num_bins,
            "knots": layer.knots,
            "tail_bound": layer.tail_bound,
            "read_at": layer.read_at,
            "smoothness": layer.smoothness,
            "marginal_bins": layer.marginal_bins,
            "smoothness_norm": layer.smoothness_norm,
        },
        GridRQSpline,
        _one_pass,  # a table read, not a network: counted as one pass to stay conservative
    ),
    "Standardize": LayerType(Standardize, lambda layer: {"dim": layer.dim}, Standardize, _no_network),
    "LULinearPermute": LayerType(
        nf.flows.LULinearPermute,
        lambda layer: {"num_channels": layer.linear.features},
        nf.flows.LULinearPermute,
        _no_network,
    ),
    "IdentityInitLULinear": LayerType(
        IdentityInitLULinear,
        lambda layer: {"num_channels": layer.num_channels},
        IdentityInitLULinear,
        _no_network,
    ),
    "Permute": LayerType(nf.flows.Permute, _describe_permute, _build_permute, _no_network),
    "ActNorm": LayerType(nf.flows.ActNorm, _describe_affine, nf.flows.ActNorm, _no_network),
    "AffineConstFlow": LayerType(
        nf.flows.AffineConstFlow, _describe_affine, nf.flows.AffineConstFlow, _no_network
    ),
}
#: Layers that can be counted (``layer_nfe``) but not saved: the peers' RealNVP pieces.
_COUNT_ONLY: dict[type, Callable[[Flow, int], int]] = {
    nf.flows.AffineCouplingBlock: _one_pass,
    nf.flows.MaskedAffineFlow: _one_pass,
}


def _layer_type(layer: Flow) -> LayerType | None:
    entry = LAYER_TYPES.get(type(layer).__name__)
    return entry if entry is not None and type(layer) is entry.cls else None


def describe_layer(layer: Flow) -> dict:
    """``{"class": name, "kwargs": {...}}``: a JSON description of a normflows layer in ``LAYER_TYPES``.

    A layer made by ``build_layer`` returns the description it was built from; any other is
    described from its attributes.

    Raises:
        ValueError: The layer's class (exactly) is not in ``LAYER_TYPES``, or uses an option
            that cannot be described (non-linear spline tails, a custom activation).
    """
    entry = _layer_type(layer)
    if entry is None:
        raise ValueError(f"cannot save a {type(layer).__qualname__} layer; supported: {sorted(LAYER_TYPES)}")
    recorded = getattr(layer, _SPEC_ATTR, None)
    if recorded is not None:
        return {"class": recorded["class"], "kwargs": dict(recorded["kwargs"])}
    return {"class": type(layer).__name__, "kwargs": entry.describe(layer)}


def build_layer(spec: dict) -> Flow:
    """A freshly initialised layer from ``describe_layer``'s output (which it remembers).

    >>> layer = build_layer({"class": "Permute", "kwargs": {"num_channels": 3, "mode": "swap"}})
    >>> describe_layer(layer)["kwargs"]["mode"]
    'swap'
    """
    if not isinstance(spec, dict):
        raise ValueError(f"a layer description must be a dict, got {spec!r}")
    name = choice("layer class", spec.get("class"), LAYER_TYPES)
    kwargs = dict(spec.get("kwargs", {}))
    layer = LAYER_TYPES[name].build(**kwargs)
    object.__setattr__(layer, _SPEC_ATTR, {"class": name, "kwargs": kwargs})
    return layer


def layer_nfe(layer: Flow, dim: int) -> int:
    """Network evaluations per sample of one layer in the latent -> data direction (a JKO step
    answers for itself through its ``nfe``).

    Raises:
        ValueError: A layer this table does not know.
    """
    own = getattr(layer, "nfe", None)
    if isinstance(own, int):
        return own
    entry = _layer_type(layer)
    if entry is not None:
        return entry.nfe(layer, dim)
    count = _COUNT_ONLY.get(type(layer))
    if count is None:
        raise ValueError(f"cannot count the network evaluations of a {type(layer).__qualname__} layer")
    return count(layer, dim)


def flow_nfe(flow: nf.NormalizingFlow) -> int:
    """Network evaluations per sample of ``flow.sample`` / ``flow.forward``: the sum over its layers."""
    dim = int(flow.q0.d) if hasattr(flow.q0, "d") else None
    return sum(layer_nfe(layer, dim) for layer in flow.flows)
