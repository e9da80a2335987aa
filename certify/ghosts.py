"""Softmax-ghost step radii: how far a training step may go before cross-entropy's Taylor model breaks.

Math (Sao, "Ghosts of Softmax", 2026).  Along a unit direction ``v`` in parameter space the logits are
linearized, ``z_k(θ + τ v) ≈ z_k + a_k τ`` with ``a = J_z v`` (one forward-mode Jacobian-vector
product).  The line loss is then ``ℓ(τ) = −a_y τ + log F(τ)`` with the partition function
``F(τ) = Σ_k e^{z_k} e^{a_k τ}``.  ``log F`` is singular exactly at the complex zeros of ``F``
("ghosts"); the Taylor series of ``ℓ`` at 0 converges on the disk ``|τ| < ρ*`` whose radius is the
distance to the nearest zero.

* Multiclass lower bound (Thm 4.6): every zero satisfies ``|Im τ| ≥ π/Δ_a`` with
  ``Δ_a = max_k a_k − min_k a_k`` (all phases ``a_k Im τ`` lie in an arc shorter than π otherwise,
  so the positive combination cannot vanish).  Hence ``ρ* ≥ ρ_a := π/Δ_a``.
* Binary exact radius (Thm 4.3): ``ρ* = √(δ² + π²)/Δ_a`` with ``δ = z_1 − z_2``.
* Sample set S (batch or data set): ``ρ_a(S) = π / max_{x∈S} Δ_a(x)`` -- the bottleneck sample decides.
  Sequence logits ``(B, T, V)`` are reduced per token, then maximised over samples and tokens.
* Temperature ``T`` (loss ``CE(z/T, y)``): ``ρ_a(T) = πT/Δ_a`` with ``Δ_a`` from the raw logits.
* Normalized step ``r = τ/ρ_a = ‖p‖ Δ_a/π``; ``r < 1`` means the linearized Taylor model converges.
* Activation radii (App. 2): a pre-activation ``h_j`` moving as ``h_j + ḣ_j τ`` meets the singular set
  of its activation at distance ``|s − h_j|/|ḣ_j|``: ReLU-family kink at 0 (``|h|/|ḣ|``);
  sigmoid/softplus/SiLU poles at ``iπ(2k+1)`` (``√(h²+π²)/|ḣ|``); tanh and tanh-GELU at
  ``i(π/2+kπ)`` (``√(h²+π²/4)/|ḣ|``); exact GELU / identity are entire (no radius).

What is guaranteed.  :func:`rho_a` with ``method="jvp"`` returns ``kind="certified"``: ``ρ_a`` is a
lower bound on the Taylor radius of the *logit-linearized* line loss for *every sample of S*, with the
float rounding of the JVP covered by inflating ``Δ_a`` by ``m·max|a_k|`` (``m = 1e-4`` in float32,
``1e-10`` in float64; a documented safety margin, not a rounding analysis).  It says nothing about
samples outside S and nothing about the curvature of the logits themselves (the paper's Rouché
correction).  ``method="fd"`` (one extra forward, a finite difference) returns ``kind="estimate"``.
A non-finite ``Δ_a`` never yields a certificate (``status="nonfinite"``, ``rho_a = 0``).

Side effects.  Parameters, gradients and buffers of the model are never modified: the forward runs
through :func:`torch.func.functional_call` on detached parameters and *cloned* buffers, so BatchNorm
running statistics are identical before and after.  ``mode`` chooses train-mode (batch statistics,
the logits the optimizer actually sees) or eval-mode semantics; ``"as_is"`` keeps the module's mode.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call

from ..models.errors import InvalidArgumentError, ShapeMismatchError
from .replay import _no_mha_fastpath, _sdpa_math

PI = math.pi
_MARGIN = {torch.float64: 1e-10, torch.float32: 1e-4}

Direction = Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor


# ----------------------------------------------------------------------------- closed forms
def binary_radius(delta: float, delta_a: float) -> float:
    """Exact radius of ``log(w1 + w2 e^{Δ_a τ})``: ``√(δ² + π²)/|Δ_a|`` (Thm 4.3; ``inf`` if ``Δ_a = 0``)."""
    if delta_a == 0:
        return math.inf
    return math.hypot(delta, PI) / abs(delta_a)


def ghost_location(delta: float, delta_yc: float) -> complex:
    """Nearest ghost of the top-2 reduction ``1 + e^{-(δ + Δ_{y,c} τ)}``: ``τ = (−δ + iπ)/Δ_{y,c}``.

    ``δ = z_y − z_c`` (margin to the strongest other class), ``Δ_{y,c} = a_y − a_c``.  The conjugate is
    also a zero; both have modulus :func:`binary_radius`.
    """
    if delta_yc == 0:
        raise InvalidArgumentError("delta_yc must be nonzero (the logits do not move apart along v)")
    return complex(-delta, PI) / delta_yc


def normalized_step(tau: float, rho: float) -> float:
    """``r = τ/ρ_a`` (``inf`` when ``ρ_a = 0``, ``0`` when ``τ = 0``)."""
    if tau == 0:
        return 0.0
    return math.inf if rho <= 0 else tau / rho


def spread(a: torch.Tensor) -> torch.Tensor:
    """Per-sample (per-token) logit-derivative spread ``Δ_a = max_k a_k − min_k a_k`` over the last axis."""
    return a.amax(dim=-1) - a.amin(dim=-1)


# ----------------------------------------------------------------------------- directions
def named_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: parameter}`` for the parameters with ``requires_grad`` (the ones a step moves)."""
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def as_direction(model: nn.Module, direction: Direction) -> dict[str, torch.Tensor]:
    """Normalize a direction (dict by parameter name, list aligned with ``model.parameters()``, or a flat
    vector over the trainable parameters in ``named_parameters`` order) to ``{name: tensor}``."""
    params = dict(model.named_parameters())
    if isinstance(direction, Mapping):
        out = {}
        for k, t in direction.items():
            if k not in params:
                raise InvalidArgumentError(f"direction names {k!r}, which is not a parameter of the model")
            if t.shape != params[k].shape:
                raise ShapeMismatchError(f"direction[{k!r}] has shape {tuple(t.shape)}, "
                                         f"parameter has {tuple(params[k].shape)}")
            out[k] = t
        return out
    if isinstance(direction, torch.Tensor):
        trainable = named_trainable(model)
        n = sum(p.numel() for p in trainable.values())
        if direction.dim() != 1 or direction.numel() != n:
            raise ShapeMismatchError(f"flat direction has {direction.numel()} entries, model has {n} trainable")
        out, off = {}, 0
        for k, p in trainable.items():
            out[k] = direction[off:off + p.numel()].view_as(p)
            off += p.numel()
        return out
    plist = list(params.items())
    direction = list(direction)
    if len(direction) != len(plist):
        raise ShapeMismatchError(f"direction has {len(direction)} tensors, model has {len(plist)} parameters")
    return {k: t for (k, p), t in zip(plist, direction) if t is not None}


def direction_norm(direction: Mapping[str, torch.Tensor]) -> float:
    """Euclidean norm of a direction over all its tensors (accumulated in float64)."""
    if not direction:
        return 0.0
    sq = sum(float(t.detach().double().pow(2).sum()) for t in direction.values())
    return math.sqrt(sq)


# ----------------------------------------------------------------------------- functional forward
@contextmanager
def _module_mode(model: nn.Module, mode: str) -> Iterator[None]:
    if mode not in ("as_is", "train", "eval"):
        raise InvalidArgumentError(f"mode must be 'as_is', 'train' or 'eval', got {mode!r}")
    if mode == "as_is":
        yield
        return
    states = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for m, t in states:
            m.training = t


def _work_dtype(model: nn.Module, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        if dtype not in (torch.float32, torch.float64):
            raise InvalidArgumentError(f"radius dtype must be float32 or float64, got {dtype}")
        return dtype
    p = next(model.parameters(), None)
    return torch.float64 if (p is not None and p.dtype == torch.float64) else torch.float32


def _cast(t: Any, dtype: torch.dtype) -> Any:
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return t.to(dtype)
    return t


def _first_tensor(out: Any) -> torch.Tensor:
    """Logits from a model output: a tensor, ``out.logits`` (Hugging Face), ``out["logits"]`` or the first
    tuple element."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise InvalidArgumentError(f"cannot find logits in a model output of type {type(out).__name__}")


def logit_jvp(model: nn.Module, x: Any, direction: Direction, *, mode: str = "as_is",
              dtype: torch.dtype | None = None, params: Mapping[str, torch.Tensor] | None = None,
              kwargs: Mapping[str, Any] | None = None,
              logits_fn: Callable[[Any], torch.Tensor] = _first_tensor,
              hooks: Callable[[], Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``z`` and their directional derivative ``a = J_z v`` by one forward-mode pass.

    ``direction`` is used as given (not normalized).  ``params`` overrides the parameter values (e.g.
    the pre-step snapshot θ_old of a controller).  Runs in float32 or float64 (``dtype``; default: float64
    for float64 models, float32 otherwise).  Buffers are cloned, so the model is left untouched.
    ``nn.MultiheadAttention``'s fused eval-mode kernel and the fused ``scaled_dot_product_attention``
    kernels have no forward-AD formula; the composite paths (same function) are used for the call.  The safe-step controller replays recorded
    training forwards with their RNG state instead (:mod:`certify.replay`).
    """
    wd = _work_dtype(model, dtype)
    d = as_direction(model, direction)
    base = dict(params) if params is not None else {k: p for k, p in model.named_parameters()}
    buffers = {k: _cast(b.detach().clone(), wd) for k, b in model.named_buffers()}
    args = x if isinstance(x, tuple) else (x,)
    args = tuple(_cast(a, wd) for a in args)
    kw = {k: _cast(v, wd) for k, v in (kwargs or {}).items()}
    with _module_mode(model, mode), fwAD.dual_level(), torch.no_grad():
        duals = {}
        for k, p in base.items():
            p = _cast(p.detach(), wd)
            t = d.get(k)
            duals[k] = fwAD.make_dual(p, _cast(t.detach(), wd)) if t is not None else p
        ctx = hooks() if hooks is not None else _nullctx()
        with ctx, _no_mha_fastpath(), _sdpa_math():
            out = functional_call(model, {**duals, **buffers}, args, kw, strict=False)
        z_dual = logits_fn(out)
        z, a = fwAD.unpack_dual(z_dual)
        if a is None:  # the direction does not reach the logits
            a = torch.zeros_like(z)
        return z.detach(), a.detach()


@contextmanager
def _nullctx() -> Iterator[None]:
    yield


def logit_fd(model: nn.Module, x: Any, direction: Direction, *, eps: float = 1e-3, z0: torch.Tensor | None = None,
             mode: str = "as_is", params: Mapping[str, torch.Tensor] | None = None,
             kwargs: Mapping[str, Any] | None = None,
             logits_fn: Callable[[Any], torch.Tensor] = _first_tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-difference estimate ``a ≈ (z(θ + ε v̂) − z(θ))/ε · ‖v‖`` in the model's dtype.

    ``z0`` (the logits at θ from the training forward) is reused when given, so the cost is one forward
    without autograd.  An *estimate*: truncation ``O(ε)`` and rounding ``O(u·|z|/ε)``; the forward must be
    deterministic (no dropout in the chosen mode).  Buffers are cloned, the model is untouched.
    """
    d = as_direction(model, direction)
    nrm = direction_norm(d)
    base = dict(params) if params is not None else {k: p for k, p in model.named_parameters()}
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    args = x if isinstance(x, tuple) else (x,)
    with _module_mode(model, mode), torch.no_grad():
        if z0 is None:
            z0 = logits_fn(functional_call(model, {**{k: p.detach() for k, p in base.items()}, **buffers},
                                           args, dict(kwargs or {}), strict=False)).detach()
            buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
        if nrm == 0:
            return z0, torch.zeros_like(z0)
        h = eps / nrm
        moved = {k: (p.detach() + h * d[k]) if k in d else p.detach() for k, p in base.items()}
        z1 = logits_fn(functional_call(model, {**moved, **buffers}, args, dict(kwargs or {}), strict=False))
        return z0, ((z1.detach() - z0) / h)


# ----------------------------------------------------------------------------- radius results
@dataclass
class RadiusResult:
    """``ρ_a = πT / max_{x∈S} Δ_a(x)`` along one direction, with its bottleneck sample.

    ``delta_a`` is the (margin-inflated) maximal spread; ``bottleneck`` the index ``(b,)`` or ``(b, t)``
    of the sample/token attaining it.  ``kind`` is ``"certified"`` for the exact JVP (see module doc) and
    ``"estimate"`` for finite differences; ``status`` is ``"ok"``, ``"unbounded"`` (Δ_a = 0: no ghost)
    or ``"nonfinite"`` (NaN/Inf in the JVP: ``rho_a = 0``, never certified).
    """

    rho_a: float
    delta_a: float
    temperature: float
    n_samples: int
    bottleneck: tuple[int, ...]
    method: str
    kind: str
    status: str
    margin_rel: float
    per_sample_delta: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rho_a": None if math.isinf(self.rho_a) else self.rho_a,
            "delta_a": self.delta_a if math.isfinite(self.delta_a) else None,
            "temperature": self.temperature, "n_samples": self.n_samples,
            "bottleneck": list(self.bottleneck), "method": self.method, "kind": self.kind,
            "status": self.status, "margin_rel": self.margin_rel,
        }


def radius_from_dlogits(a: torch.Tensor, *, temperature: float = 1.0, method: str = "jvp",
                        keep_per_sample: bool = False) -> RadiusResult:
    """:class:`RadiusResult` from logit derivatives ``a`` of shape ``(B, n)`` or ``(B, T, V)``."""
    if temperature <= 0 or not math.isfinite(temperature):
        raise InvalidArgumentError(f"temperature must be a positive finite number, got {temperature}")
    if a.dim() < 2:
        raise ShapeMismatchError(f"logit derivatives need a batch and a class axis, got shape {tuple(a.shape)}")
    if a.numel() == 0:
        raise ShapeMismatchError("empty batch: no samples to compute a radius on")
    lo, hi = torch.aminmax(a, dim=-1)
    s = hi - lo  # (B,) or (B, T, ...): the spread Δ_a per sample (token)
    flat = s.reshape(-1)
    margin = _MARGIN.get(a.dtype, 1e-4) if method == "jvp" else 0.0
    kind = "certified" if method == "jvp" else "estimate"
    n = int(a.shape[0])
    top_t, j_t = flat.max(0)
    # one host transfer: the maximal spread and max|a| (a NaN/Inf anywhere makes max|a| non-finite)
    top, amax = torch.stack([top_t, a.abs().amax()]).tolist()
    if not (math.isfinite(amax) and math.isfinite(top)):
        bad = int((~torch.isfinite(flat)).nonzero()[0, 0]) if not bool(torch.isfinite(flat).all()) else 0
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(bad), s.shape))
        return RadiusResult(0.0, math.inf, temperature, n, idx, method, "estimate", "nonfinite", margin,
                            s if keep_per_sample else None)
    j = int(j_t)
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(j), s.shape)) if s.dim() > 1 else (j,)
    # rounding margin relative to the derivative magnitudes (covers cancellation in max - min)
    da = top + margin * amax if margin else top
    if da <= 0:
        return RadiusResult(math.inf, 0.0, temperature, n, idx, method, kind, "unbounded", margin,
                            s if keep_per_sample else None)
    return RadiusResult(PI * temperature / da, da, temperature, n, idx, method, kind, "ok", margin,
                        s if keep_per_sample else None)


def rho_a(model: nn.Module, x: Any, direction: Direction, *, temperature: float = 1.0, method: str = "jvp",
          mode: str = "as_is", chunk_size: int | None = None, dtype: torch.dtype | None = None,
          params: Mapping[str, torch.Tensor] | None = None, z0: torch.Tensor | None = None, eps: float = 1e-3,
          kwargs: Mapping[str, Any] | None = None, logits_fn: Callable[[Any], torch.Tensor] = _first_tensor,
          keep_per_sample: bool = False) -> RadiusResult:
    """Batch / data-set radius ``ρ_a = πT / max_x Δ_a(x; v̂)`` along the unit direction ``v̂ = v/‖v‖``.

    ``x`` is a batch tensor (or tuple of positional inputs); ``chunk_size`` splits it along dim 0 (the max
    over chunks equals the max over the set) -- only for plain tensor inputs.  ``method="jvp"`` (exact,
    certified) or ``"fd"`` (one forward, estimate; ``z0`` reuses logits at θ already computed).
    In train mode with BatchNorm the batch statistics depend on the chunk, so chunking changes the
    semantics; keep ``chunk_size=None`` there.
    """
    if method not in ("jvp", "fd"):
        raise InvalidArgumentError(f"method must be 'jvp' or 'fd', got {method!r}")
    d = as_direction(model, direction)
    nrm = direction_norm(d)
    if not math.isfinite(nrm):
        return RadiusResult(0.0, math.inf, temperature, 0, (), method, "estimate", "nonfinite", 0.0)
    if nrm == 0:
        raise InvalidArgumentError("direction is zero: a radius needs a nonzero step direction")
    unit = {k: t / nrm for k, t in d.items()}
    chunks: list[Any]
    if chunk_size is not None and isinstance(x, torch.Tensor):
        chunks = list(torch.split(x, chunk_size))
        z0s = list(torch.split(z0, chunk_size)) if z0 is not None else [None] * len(chunks)
    else:
        chunks, z0s = [x], [z0]
    parts = []
    for xc, zc in zip(chunks, z0s):
        if method == "jvp":
            _, a = logit_jvp(model, xc, unit, mode=mode, dtype=dtype, params=params, kwargs=kwargs,
                             logits_fn=logits_fn)
        else:
            _, a = logit_fd(model, xc, unit, eps=eps, z0=zc, mode=mode, params=params, kwargs=kwargs,
                            logits_fn=logits_fn)
        parts.append(a)
    a_all = torch.cat(parts) if len(parts) > 1 else parts[0]
    return radius_from_dlogits(a_all, temperature=temperature, method=method, keep_per_sample=keep_per_sample)


def exact_binary_radii(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Per-sample exact radius ``√(δ² + π²)/|a_1 − a_2|`` for two-class logits ``z, a`` of shape (B, 2)."""
    if z.shape[-1] != 2 or a.shape != z.shape:
        raise ShapeMismatchError(f"binary radii need (B, 2) logits and derivatives, got {tuple(z.shape)}, "
                                 f"{tuple(a.shape)}")
    delta = z[..., 0] - z[..., 1]
    da = (a[..., 0] - a[..., 1]).abs()
    return torch.sqrt(delta ** 2 + PI ** 2) / da


# ----------------------------------------------------------------------------- activation radii
def _act_radius_fn(m: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """Distance (in τ) from ``h + ḣ τ`` to the activation's singular set, or None if it has none."""
    if isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid)):
        return lambda h, hd: h.abs() / hd.abs()  # kinks on the real axis; the ReLU-family one at 0
    if isinstance(m, (nn.Sigmoid, nn.Softplus, nn.SiLU, nn.Mish, nn.LogSigmoid)):
        return lambda h, hd: torch.sqrt(h ** 2 + PI ** 2) / hd.abs()
    if isinstance(m, nn.Tanh) or (isinstance(m, nn.GELU) and m.approximate == "tanh"):
        return lambda h, hd: torch.sqrt(h ** 2 + PI ** 2 / 4) / hd.abs()
    return None  # exact GELU, identity, ...: entire functions


@dataclass
class ActivationRadii:
    """Per activation module: the smallest neuron radius ``min_j ρ_j`` (App. 2) and where it occurs."""

    per_module: dict[str, float]
    rho_act: float
    binding_module: str | None

    def to_dict(self) -> dict[str, Any]:
        fin = lambda v: None if math.isinf(v) else v  # noqa: E731
        return {"per_module": {k: fin(v) for k, v in self.per_module.items()}, "rho_act": fin(self.rho_act),
                "binding_module": self.binding_module}


def activation_radii(model: nn.Module, x: Any, direction: Direction, *, mode: str = "as_is",
                     dtype: torch.dtype | None = None) -> tuple[RadiusResult, ActivationRadii]:
    """Output radius ``ρ_a`` and activation radii from the same JVP along ``v̂``.

    Activations are found as ``nn.Module`` instances (ReLU-family, sigmoid/softplus/SiLU/Mish, tanh,
    tanh-GELU); functional calls (``F.relu``) are not seen.  The combined bound of the paper is
    ``min(ρ_act, ρ_a)``.  Neurons with ``ḣ_j = 0`` never bind.  ReLU-family kinks are not analytic
    singularities of a complex function but still end the validity of the linear model; they are included.
    """
    d = as_direction(model, direction)
    nrm = direction_norm(d)
    if nrm == 0:
        raise InvalidArgumentError("direction is zero: a radius needs a nonzero step direction")
    unit = {k: t / nrm for k, t in d.items()}
    found: dict[str, float] = {}
    handles = []

    def make_hook(name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        def hook(mod, inputs):
            h, hd = fwAD.unpack_dual(inputs[0])
            if hd is None:
                return
            r = fn(h.detach(), hd.detach())
            r = torch.where(hd == 0, torch.full_like(r, math.inf), r)
            val = float(r.min()) if r.numel() else math.inf
            found[name] = min(found.get(name, math.inf), val if not math.isnan(val) else 0.0)
        return hook

    @contextmanager
    def install() -> Iterator[None]:
        for name, m in model.named_modules():
            fn = _act_radius_fn(m)
            if fn is not None:
                handles.append(m.register_forward_pre_hook(make_hook(name, fn)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    _, a = logit_jvp(model, x, unit, mode=mode, dtype=dtype, hooks=install)
    res = radius_from_dlogits(a)
    rho_act = min(found.values(), default=math.inf)
    binding = min(found, key=found.get) if found else None
    return res, ActivationRadii(found, rho_act, binding)


# ----------------------------------------------------------------------------- `certify steps`
def step_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce", *, temperature: float = 1.0,
                mode: str = "eval", method: str = "jvp", dtype: torch.dtype | None = None) -> dict[str, Any]:
    """``ρ_a`` along the (negative) gradient of the batch loss and the largest safe plain-SGD learning rate.

    With ``g = ∇_θ L(x, y)`` (mean cross-entropy ``CE(z/T, y)``; sequence logits ``(B, T, V)`` with targets
    ``(B, T)``), a plain SGD step moves ``τ = η‖g‖`` along ``−g/‖g‖``, so it stays inside the radius iff
    ``η < η_max = ρ_a/‖g‖ = πT/(Δ_a‖g‖)``.  Gradients are taken with ``torch.autograd.grad`` on detached
    parameters through ``functional_call`` with cloned buffers: the model (``.grad``, BatchNorm statistics)
    is untouched.  ``mode="eval"`` by default (deterministic: running statistics, no dropout).
    """
    if loss != "ce":
        raise InvalidArgumentError(f"loss must be 'ce' (cross-entropy), got {loss!r}")
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise InvalidArgumentError("the model has no trainable parameters")
    params = {k: p.detach().requires_grad_(k in names) for k, p in model.named_parameters()}
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    with _module_mode(model, mode), torch.enable_grad():
        z = _first_tensor(functional_call(model, {**params, **buffers}, (x,)))
        if z.dim() == 3:
            if y.shape != z.shape[:2]:
                raise ShapeMismatchError(f"sequence logits {tuple(z.shape)} need targets of shape "
                                         f"{tuple(z.shape[:2])}, got {tuple(y.shape)}")
            lval = torch.nn.functional.cross_entropy((z / temperature).flatten(0, 1), y.flatten())
        else:
            if z.dim() != 2 or y.shape != z.shape[:1]:
                raise ShapeMismatchError(f"logits {tuple(z.shape)} and targets {tuple(y.shape)} do not fit")
            lval = torch.nn.functional.cross_entropy(z / temperature, y)
        grads = torch.autograd.grad(lval, [params[k] for k in names], allow_unused=True)
    g = {k: (gr if gr is not None else torch.zeros_like(params[k])).detach() for k, gr in zip(names, grads)}
    gnorm = direction_norm(g)
    out: dict[str, Any] = {"loss": float(lval.detach()), "grad_norm": gnorm, "n_samples": int(x.shape[0]),
                           "temperature": temperature, "mode": mode, "method": method}
    if not math.isfinite(gnorm) or gnorm == 0.0:
        out.update(rho_a=None, delta_a=None, lr_max_sgd=None, bottleneck=[], kind="estimate",
                   status="nonfinite_gradient" if not math.isfinite(gnorm) else "zero_gradient")
        return out
    res = rho_a(model, x, {k: -t for k, t in g.items()}, temperature=temperature, method=method, mode=mode,
                dtype=dtype)
    rho = res.rho_a
    out.update(rho_a=None if math.isinf(rho) else rho, delta_a=res.delta_a if math.isfinite(res.delta_a) else None,
               lr_max_sgd=(None if math.isinf(rho) else rho / gnorm) if res.status != "nonfinite" else 0.0,
               bottleneck=list(res.bottleneck), kind=res.kind, status=res.status)
    return out
