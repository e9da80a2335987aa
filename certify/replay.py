"""Exact logit JVPs of a *recorded* training forward, by replaying it on the side.

The controller's first engine reads the JVP off the training step's own autograd graph
(:mod:`certify.graph_tangent`, no recomputation); this module is its exact fallback for what that engine
refuses (ops without a tangent rule, custom ``autograd.Function``, half precision and autocast,
``no_grad``/``detach`` paths, saved tensors changed in place, a forced ``train``/``eval`` radius).

What the safe-step controller needs.  A step ``p = θ_new − θ_old`` is certified by ``a = J_z(θ_old)·p̂``
for the function the training forward computed: the same batch, the same random numbers (dropout
masks, ``gumbel_softmax`` noise, Python-random stochastic depth), the same module mode, at θ_old.  The
training forward itself is only *observed* (a forward pre-hook and a forward hook record the inputs, the
RNG states before and after, and a fingerprint of the logits); this module re-runs the model on the
side, after the optimizer stepped, with

* the parameters replaced by θ_old (:func:`torch.func.functional_call`; a tied parameter is one entry,
  its uses are tied by ``functional_call``), cloned buffers (BatchNorm statistics untouched), the
  modules' plain Python attributes restored afterwards;
* every RNG the forward may read (torch CPU, CUDA of the devices involved, Python ``random``, NumPy's
  global generator) set to its state before the training forward, and set back afterwards to the state
  the training run has now -- the training run's RNG consumption is unchanged;
* autocast disabled and half-precision parameters, buffers and inputs widened to float32 (float32 and
  float64 tensors are kept): the JVP of a bf16/fp16/autocast model is the JVP of the same network
  evaluated in float32.

Engines (:class:`ReplayJVP`), in the controller's order:

1. ``forward_ad``: forward-mode AD (dual tensors) through the replayed forward.  Exact for every op with
   a forward-AD formula; ``NotImplementedError`` for others (``weight_norm``'s fused kernel, custom
   ``autograd.Function`` without ``jvp``).
2. ``double_vjp``: the same JVP by reverse-over-reverse, ``a = ∂/∂u ⟨J_zᵀ u, p̂⟩`` (two reverse passes).
   Exact for every op with a double backward; refused when the graph holds a custom
   ``autograd.Function`` (its backward need not be the derivative of its forward, e.g. a
   straight-through estimator).
3. ``fd``: central difference ``(z(θ+εp̂) − z(θ−εp̂))/2ε`` of the replayed forward -- an *estimate*.

Checks that turn a silent mismatch into a refusal (:class:`ReplayMismatch`): the replay must consume
exactly the random numbers the training forward consumed (RNG states after both are compared), its
primal logits must equal the recorded ones (float32/float64: ``|Δz| ≤ 1e-5(1+max|z|)``; half precision
or autocast: ``5e-2(1+max|z|)``), and no tensor that carries a tangent may be detached inside the
forward (``.detach()`` / ``.data``: a stop-gradient drops that path from both AD engines although the
logits do depend on it -- only ``fd`` sees it).  ``torch.no_grad`` blocks are differentiated as they
should be (forward AD ignores grad mode; they hold no gradient, but the logits depend on them).

Not observable here: forward hooks the user registered on submodules fire during the replay too.
"""

from __future__ import annotations

import ctypes
import random
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

try:  # NumPy is a dependency of the package, but the RNG replay must not fail without it
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None


class ReplayUnsupported(Exception):
    """This engine cannot compute the JVP of this forward exactly (the caller tries the next engine)."""


class ReplayMismatch(ReplayUnsupported):
    """The replayed forward is not the recorded one (random numbers, logits, detached tangents)."""


# ----------------------------------------------------------------------------- RNG states
def _cuda_indices(devices: set[torch.device]) -> list[int]:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    return sorted({d.index if d.index is not None else torch.cuda.current_device()
                   for d in devices if d.type == "cuda"})


def _np_raw() -> bytes | None:
    """The raw Mersenne-Twister state of NumPy's global generator (key + position, ~1 µs to read); the
    full ``get_state()`` (which also holds the Gaussian cache) costs ~100 µs and is taken only once a
    forward was seen to use NumPy's generator (``np_full``)."""
    if _np is None:
        return None
    try:
        return ctypes.string_at(_np.random.mtrand._rand._bit_generator.ctypes.state_address, _MT_BYTES)
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - another NumPy layout
        return None


_MT_BYTES = 624 * 4 + 4


def _np_set_raw(raw: bytes) -> None:
    ctypes.memmove(_np.random.mtrand._rand._bit_generator.ctypes.state_address, raw, _MT_BYTES)


@dataclass
class RngState:
    """Every generator a forward may read: torch CPU, CUDA (given devices), Python ``random``, NumPy's global
    generator (raw state always; the full state, Gaussian cache included, when ``np_full``)."""

    cpu: torch.Tensor
    cuda: dict[int, torch.Tensor]
    py: Any
    np_raw: bytes | None
    np_full: Any = None

    @classmethod
    def capture(cls, cuda: list[int], np_full: bool = False) -> "RngState":
        return cls(torch.get_rng_state(), {i: torch.cuda.get_rng_state(i) for i in cuda}, random.getstate(),
                   _np_raw(), _np.random.get_state() if (np_full and _np is not None) else None)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for i, s in self.cuda.items():
            torch.cuda.set_rng_state(s, i)
        random.setstate(self.py)
        if self.np_full is not None:
            _np.random.set_state(self.np_full)
        elif self.np_raw is not None and _np_raw() != self.np_raw:
            _np_set_raw(self.np_raw)

    def differs(self, other: "RngState") -> str:
        """Which generator differs ('' when none)."""
        if not torch.equal(self.cpu, other.cpu):
            return "torch CPU generator"
        for i, s in self.cuda.items():
            if i in other.cuda and not torch.equal(s, other.cuda[i]):
                return f"CUDA generator {i}"
        if self.py != other.py:
            return "Python random"
        if self.np_raw != other.np_raw:
            return "NumPy global generator"
        return ""


# ----------------------------------------------------------------------------- a recorded forward
_FP_MAX = 4096  # logits fingerprint: at most this many entries (strided), plus the float64 sum


def fingerprint(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    flat = z.detach().reshape(-1)
    stride = max(1, flat.numel() // _FP_MAX)
    return flat[::stride][:_FP_MAX].to(torch.float64, copy=True), stride


@dataclass
class RecordedForward:
    """One observed forward with autograd enabled: its inputs (references; their version counters guard
    against later in-place changes), RNG states before/after, whether autocast was on, the parameters'
    version counters (the forward is θ_old's iff they equal those at the step's pre-hook) and a
    fingerprint of its logits."""

    args: tuple
    kwargs: dict
    versions: list[int]
    param_versions: list[int]
    rng_before: RngState | None
    rng_after: RngState | None = None
    z_fp: torch.Tensor | None = None
    z_stride: int = 1
    z_shape: tuple = ()
    low_precision: bool = False
    training: list[bool] = field(default_factory=list)
    graph_tape: Any = None     # certify.graph_tangent.Tape of the forward's own autograd graph, if captured
    graph_reason: str = ""     # why not (empty when captured or not attempted)
    graph_watch: Any = None    # the GraphWatch active during the forward
    graph_stop: Any = None     # ids of the grad_fn nodes of the forward's inputs

    def inputs_changed(self) -> bool:
        return [t._version for t in _tensors(self.args, self.kwargs)] != self.versions


def _tensors(args: tuple, kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
    return [t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)]


# ----------------------------------------------------------------------------- guards
@contextmanager
def python_state_guard(model: nn.Module) -> Iterator[None]:
    """Restore every module's plain attributes (and ``training``) after the block: a forward that counts
    its calls, caches a value or flips a flag leaves no trace of the replay."""
    # torch.nn's own layers keep no Python state a forward changes (their buffers are cloned by the replay)
    saved = [(m, dict(m.__dict__)) for m in model.modules() if not type(m).__module__.startswith("torch.nn.")]
    try:
        yield
    finally:
        for m, d in saved:
            cur = m.__dict__
            for k in [k for k in cur if k not in d]:
                del cur[k]
            for k, v in d.items():
                if cur.get(k, _MISSING) is not v:
                    cur[k] = v


_MISSING = object()


@contextmanager
def _sdpa_math() -> Iterator[None]:
    """``scaled_dot_product_attention`` through its composite (math) kernel: the fused CPU/CUDA kernels
    have neither forward-AD formulas nor double backwards.  Same function; with dropout the random
    numbers may be drawn differently, which the RNG check then refuses.  (The global backend flags are
    toggled directly: ``sdpa_kernel`` costs ~50 µs per use.)"""
    b = torch.backends.cuda
    try:
        old = (b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.cudnn_sdp_enabled(), b.math_sdp_enabled())
    except AttributeError:  # pragma: no cover - old torch
        yield
        return
    b.enable_flash_sdp(False)
    b.enable_mem_efficient_sdp(False)
    b.enable_cudnn_sdp(False)
    b.enable_math_sdp(True)
    try:
        yield
    finally:
        b.enable_flash_sdp(old[0])
        b.enable_mem_efficient_sdp(old[1])
        b.enable_cudnn_sdp(old[2])
        b.enable_math_sdp(old[3])


@contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    """``nn.MultiheadAttention``'s eval-mode fused kernel has no forward-AD formula; the composite path
    computes the same function."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    old = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(old)


class _DetachGuard(TorchFunctionMode):
    """Flags ``detach``/``.data`` of a tensor that carries a tangent (forward AD) or requires grad
    (reverse mode) inside the replayed forward: both AD engines would silently drop that path."""

    _DETACH = {torch.Tensor.detach, torch.detach, torch.Tensor.detach_}

    def __init__(self, reverse: bool):
        super().__init__()
        self.reverse, self.hit = reverse, ""
        self._data = torch.Tensor.data  # ``.data`` reaches __torch_function__ as this descriptor's __get__

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.hit and (func in self._DETACH or getattr(func, "__self__", None) is self._data) and args \
                and isinstance(args[0], torch.Tensor):
            t = args[0]
            carries = t.requires_grad if self.reverse else fwAD.unpack_dual(t).tangent is not None
            if carries:
                self.hit = "the forward detaches a tensor that depends on the parameters (.detach()/.data)"
        return func(*args, **kwargs)


def _autocast_off() -> ExitStack:
    st = ExitStack()
    for dev in ("cpu", "cuda"):
        if not torch.is_autocast_enabled(dev):
            continue
        try:
            st.enter_context(torch.autocast(device_type=dev, enabled=False))
        except (RuntimeError, AssertionError):  # pragma: no cover - device type unavailable
            pass
    return st


_HALF = (torch.float16, torch.bfloat16)


def _cast(t: Any) -> Any:
    """Half-precision floats widened to float32; float32/float64 (and mixed models) left as they are."""
    return t.float() if isinstance(t, torch.Tensor) and t.dtype in _HALF else t


# ----------------------------------------------------------------------------- the replay
class ReplayJVP:
    """JVPs of recorded forwards of ``model`` at given parameter values (see the module doc).

    ``mode``: ``"as_is"`` replays the forward in the training forward's module mode (with the RNG and
    primal checks); ``"train"``/``"eval"`` force a mode (the checks then do not apply: that is a different
    function from the training forward's, by request).
    """

    def __init__(self, model: nn.Module, logits_fn: Callable[[Any], torch.Tensor], mode: str = "as_is"):
        self.model, self.logits_fn, self.mode = model, logits_fn, mode

    @contextmanager
    def _replaying(self, rec: RecordedForward, reverse: bool) -> Iterator[_DetachGuard]:
        """RNG at the forward's pre-state, mode, Python attributes, autocast off, MHA fast path off; on exit
        the RNG is back where the training run left it."""
        devs = {t.device for t in _tensors(rec.args, rec.kwargs)} | {p.device for p in self.model.parameters()}
        full = rec.rng_before is not None and rec.rng_before.np_full is not None
        now = RngState.capture(_cuda_indices(devs), np_full=full)
        guard = _DetachGuard(reverse)
        mods = list(self.model.modules())
        flags = [m.training for m in mods]
        try:
            with python_state_guard(self.model), _autocast_off(), _no_mha_fastpath(), _sdpa_math():
                if self.mode == "as_is" and rec.training and len(rec.training) == len(mods):
                    for m, t in zip(mods, rec.training):
                        m.training = t
                elif self.mode in ("train", "eval"):
                    self.model.train(self.mode == "train")
                if rec.rng_before is not None:
                    rec.rng_before.restore()
                with guard:
                    yield guard
        finally:
            for m, t in zip(mods, flags):
                m.training = t
            now.restore()

    def _check(self, rec: RecordedForward, z: torch.Tensor, guard: _DetachGuard, rng_after: RngState | None) -> None:
        if guard.hit:
            raise ReplayMismatch(guard.hit)
        if self.mode != "as_is":
            return
        if rec.rng_before is None:  # observe(): no recorded RNG; a forward that draws random numbers is unknown
            if rng_after is not None and rng_after.cpu is not None and rec.rng_after is not None:
                which = rec.rng_after.differs(rng_after)
                if which:
                    raise ReplayMismatch(f"the forward draws random numbers ({which}) and the batch was given by "
                                         "observe() without its RNG state")
            return
        if rec.rng_after is not None and rng_after is not None:
            which = rec.rng_after.differs(rng_after)
            if which:
                raise ReplayMismatch(f"the replayed forward consumed random numbers differently ({which})")
        if rec.z_fp is not None:
            if tuple(z.shape) != rec.z_shape:
                raise ReplayMismatch(f"replayed logits have shape {tuple(z.shape)}, the training forward's "
                                     f"{rec.z_shape}")
            zz = z.detach().reshape(-1)[::rec.z_stride][:rec.z_fp.numel()].to(torch.float64)
            scale = 1.0 + float(rec.z_fp.abs().max()) if rec.z_fp.numel() else 1.0
            tol = (5e-2 if rec.low_precision else 1e-5) * scale
            err = float((zz - rec.z_fp).abs().max()) if zz.numel() else 0.0
            if not err <= tol:
                raise ReplayMismatch(f"replayed logits differ from the training forward's by {err:.3g} "
                                     f"(tolerance {tol:.3g})")

    def _prepare(self, rec: RecordedForward):
        if rec.inputs_changed():
            raise ReplayMismatch("an input of the recorded forward was modified in place before the step")
        buffers = {k: _cast(b.detach().clone()) for k, b in self.model.named_buffers()}
        args = tuple(_cast(a.detach() if isinstance(a, torch.Tensor) else a) for a in rec.args)
        kw = {k: _cast(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in rec.kwargs.items()}
        return buffers, args, kw

    def _rng_probe(self, rec: RecordedForward) -> RngState | None:
        devs = {t.device for t in _tensors(rec.args, rec.kwargs)} | {p.device for p in self.model.parameters()}
        return RngState.capture(_cuda_indices(devs))

    def forward_ad(self, rec: RecordedForward, params: Mapping[str, torch.Tensor],
                   direction: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``a = J_z(params)·direction`` by forward-mode AD (direction used as given)."""
        buffers, args, kw = self._prepare(rec)
        if rec.rng_before is None:
            rec.rng_after = self._rng_probe(rec)
        with self._replaying(rec, reverse=False) as guard, fwAD.dual_level(), torch.no_grad():
            duals = {}
            for k, p in params.items():
                p = _cast(p.detach())
                t = direction.get(k)
                duals[k] = fwAD.make_dual(p, _cast(t.detach())) if t is not None else p
            try:
                out = functional_call(self.model, {**duals, **buffers}, args, kw, strict=False)
            except NotImplementedError as e:
                raise ReplayUnsupported(f"forward-mode AD: {str(e).splitlines()[0]}") from e
            rng_after = self._rng_probe(rec)
            z, a = fwAD.unpack_dual(self.logits_fn(out))
            self._check(rec, z, guard, rng_after)
            return (torch.zeros_like(z) if a is None else a).detach()

    def double_vjp(self, rec: RecordedForward, params: Mapping[str, torch.Tensor],
                   direction: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The same JVP by reverse-over-reverse: ``a = ∂/∂u ⟨J_zᵀu, direction⟩`` (``J_zᵀu`` is linear in u)."""
        buffers, args, kw = self._prepare(rec)
        if rec.rng_before is None:
            rec.rng_after = self._rng_probe(rec)
        names = [k for k in params if k in direction]
        with self._replaying(rec, reverse=True) as guard, torch.enable_grad():
            leaves = {k: _cast(p.detach()).requires_grad_(k in direction) for k, p in params.items()}
            out = functional_call(self.model, {**leaves, **buffers}, args, kw, strict=False)
            rng_after = self._rng_probe(rec)
            z = self.logits_fn(out)
            self._check(rec, z, guard, rng_after)
            custom = _custom_function(z)
            if custom:
                raise ReplayUnsupported(f"custom autograd.Function {custom} in the forward (its backward need not "
                                        "be the derivative of its forward)")
            if not z.requires_grad:
                return torch.zeros_like(z).detach()
            u = torch.zeros_like(z, requires_grad=True)
            try:
                gs = torch.autograd.grad(z, [leaves[k] for k in names], u, create_graph=True, allow_unused=True)
                s = sum((g * _cast(direction[k].detach())).sum() for k, g in zip(names, gs) if g is not None)
                if not isinstance(s, torch.Tensor) or not s.requires_grad:
                    return torch.zeros_like(z).detach()
                (a,) = torch.autograd.grad(s, u, allow_unused=True)
            except (RuntimeError, NotImplementedError) as e:
                raise ReplayUnsupported(f"double backward: {str(e).splitlines()[0]}") from e
            return (torch.zeros_like(z) if a is None else a).detach()

    def central_difference(self, rec: RecordedForward, params: Mapping[str, torch.Tensor],
                           direction: Mapping[str, torch.Tensor], eps: float) -> torch.Tensor:
        """``(z(θ + ε d) − z(θ − ε d))/(2ε)`` of the replayed forward (an estimate, ``d`` as given)."""
        zs = []
        for sign in (1.0, -1.0):
            buffers, args, kw = self._prepare(rec)
            moved = {k: _cast(p.detach()) + (sign * eps) * _cast(direction[k].detach())
                     if k in direction else _cast(p.detach()) for k, p in params.items()}
            if rec.rng_before is None:
                rec.rng_after = self._rng_probe(rec)
            with self._replaying(rec, reverse=False) as guard, torch.no_grad():
                out = functional_call(self.model, {**moved, **buffers}, args, kw, strict=False)
                rng_after = self._rng_probe(rec)
                guard.hit = ""  # finite differences see detached paths
                if self.mode == "as_is" and rec.rng_after is not None:
                    which = rec.rng_after.differs(rng_after)
                    if which:
                        raise ReplayMismatch(f"the replayed forward consumed random numbers differently ({which})")
                zs.append(self.logits_fn(out).detach())
        return (zs[0] - zs[1]) / (2 * eps)


def _custom_function(z: torch.Tensor, limit: int = 100000) -> str:
    """Name of a custom ``autograd.Function`` node in ``z``'s graph ('' when none)."""
    from torch.autograd.function import BackwardCFunction
    seen, stack = set(), [z.grad_fn]
    while stack and len(seen) < limit:
        n = stack.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        if isinstance(n, BackwardCFunction):
            return type(n).__name__.removesuffix("Backward")
        stack.extend(f for f, _ in n.next_functions)
    return ""
