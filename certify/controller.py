"""Safe-step controller: keep every optimizer step inside the softmax-ghost radius ``ρ_a``.

Rule (Sao 2026, Prop. 5.2).  Let ``p = θ_new − θ_old`` be the update the optimizer proposes (learning
rate, momentum, Adam scaling and decoupled weight decay included), ``τ₀ = ‖p‖`` and ``ρ_a = πT/Δ_a`` the
radius of :mod:`certify.ghosts` along ``p̂ = p/τ₀`` on the batch that defined the step.

* ``mode="clip"``: apply ``s·p`` with ``s = min(1, (1 − 1e-6)·ρ_a/τ₀)``.
* ``mode="set"``: apply ``s·p`` with ``s = r_target·ρ_a/τ₀`` (schedule-free step length, may enlarge).

The step is taken by the optimizer as usual and rescaled afterwards (``θ ← θ_old + s(θ_new − θ_old)``),
which is the paper's ``p̃ = s·p``; the optimizer's state (moments, momentum buffers) is left as the
optimizer computed it.  A step whose ``‖p‖`` or ``ρ_a`` is NaN/Inf is rejected (``θ ← θ_old``).

Transparency invariant (design).  The controller never replaces or re-routes the training forward: it
*observes* it with a forward pre-hook and a forward hook on ``logits_module`` (inputs, the RNG states
before and after, a fingerprint of the logits, the modules' ``training`` flags) and the optimizer's
step pre/post hooks (θ_old).  With the controller attached a training run computes exactly what it
computes without it -- losses, gradients, RNG consumption, buffers -- apart from the scaling of the step
(``tests/test_controller_semantics.py`` checks this bit for bit: straight-through ``autograd.Function``,
``no_grad`` blocks, Python-random stochastic depth, reassigned tensor attributes, dropout, BatchNorm).

Engines (``engine="auto"`` tries them in this order):

1. ``graph`` (:mod:`certify.graph_tangent`): the JVP pushed through the training step's *own* autograd
   graph.  The forward hook walks ``logits.grad_fn`` before the backward frees it and keeps the saved
   tensors the tangent rules need; after ``step()`` only the tangent is computed (no primal forward), with
   saved views of parameters re-pointed to θ_old and every other saved tensor's version counter checked.
   A tied parameter is one ``AccumulateGrad`` leaf; dropout masks are the forward's own.  During the
   training forward a pass-through ``TorchFunctionMode`` (``GraphWatch``) only *flags* a tensor that
   requires grad being used under ``no_grad`` or detached -- a path the graph cannot see -- which makes
   the engine refuse.  It also refuses graphs with a node it has no rule for (custom ``autograd.Function``,
   ``CopySlices``, RNN kernels, ...), half precision/autocast, ``model_mode`` other than ``"as_is"`` and
   ``capture="manual"``; the reason goes to ``fallback_reason`` and the next engine runs.
2. ``forward_ad`` / ``double_vjp`` (:mod:`certify.replay`): the recorded forward *replayed* on the side
   at θ_old with the forward's own RNG state, forward-mode AD (reverse-over-reverse when an op lacks a
   forward-AD formula); the RNG is set back to where the training run left it.
(An earlier design ran the training forward through a ``torch.fx`` trace to reuse its activations; that
changed training semantics and lost tied weights.  The graph engine reuses them by reading autograd's
saved tensors instead, which leaves the training step untouched.)

Certificate invariant.  A record is ``kind="certified"`` only when

* its JVP was computed exactly (tangent rules on the step's own graph, forward-mode AD of the replay, or
  reverse-over-reverse when an op lacks a forward-AD formula) for *every* forward run with autograd
  enabled since the previous step (gradient accumulation:
  all micro-batches; the radius is the minimum over them), each replay reproducing the recorded
  forward (same random numbers consumed, same logits, no detached tangent path);
* the direction and the JVP are in float32 or float64 whatever the model's dtype (bf16/fp16 parameters
  are upcast; autocast is off during the replay; ``p`` is formed in float32 for half-precision
  parameters) and ``ρ_a = πT/Δ_a`` is a float64 quotient of the (margin-inflated) float32/64 spread;
* ``r_applied`` is measured, not assumed: when ``s ≠ 1`` the parameters actually written
  (``θ_old + s·p`` rounded to the parameters' dtype) are read back, and the radius is recomputed along
  the *applied* displacement ``d`` (a second JVP), ``r_applied = ‖d‖/ρ_a(d̂)``; in clip mode a result
  above 1 is shrunk (by ``r_applied`` and a few units of the parameters' rounding, at most five times) and
  otherwise rejected (``status="rejected_rounding"``).

Everything else is labelled: ``engine="fd"`` (central difference of the replayed forward, when no exact
engine applies: detached paths, custom ``autograd.Function`` without ``jvp``, …) gives
``kind="estimate"`` with ``fallback_reason``; ``method="fd"`` asks for that estimate directly.  An
internal failure never escapes ``optimizer.step()`` with an unchecked step applied: the step is clipped
by the last certified radius (``status="clipped_last_radius"``, an estimate) or not taken
(``status="rejected_error"``), and ``fallback_reason`` says why.  Using the controller wrongly (no forward
recorded before the step) raises :class:`InvalidArgumentError` after putting θ_old back.

Cost.  Graph engine: one tangent pass per recorded forward (no primal recomputation; for SDPA one
recomputation of the attention scores), a second one on steps that were rescaled; memory: the saved
tensors the rules need stay alive from the forward until ``step()`` returns (the backward would have freed
them earlier; with gradient accumulation every micro-batch's until the step).  Replay fallback: one
replayed forward with tangents per recorded forward.  θ_old/p in preallocated flat buffers.
``bench/results/lr_spike.md`` has the measured overheads.
Each step appends a :class:`StepCertificate` to ``controller.records`` (and to a JSONL file if given).
Adapters for PyTorch Lightning and Hugging Face ``Trainer`` are built on demand by
:func:`lightning_callback` and :func:`hf_callback` (they import those packages lazily).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..models.errors import InvalidArgumentError
from .ghosts import RadiusResult, _first_tensor, radius_from_dlogits
from .graph_tangent import GraphUnsupported, GraphWatch, capture
from .replay import (RecordedForward, ReplayJVP, ReplayUnsupported, RngState, _cuda_indices, _tensors,
                     fingerprint)

_SAFETY = 1.0 - 1e-6
_HALF = (torch.float16, torch.bfloat16)
_ENGINES = {"auto": ("graph", "forward_ad", "double_vjp"), "graph": ("graph",), "forward_ad": ("forward_ad",),
            "double_vjp": ("double_vjp",)}


@dataclass
class StepCertificate:
    """What one controlled step did.  ``r_* = ‖step‖/ρ_a``; ``scale`` multiplied the proposed update."""

    step: int
    rho_a: float              # radius along the proposed direction p̂
    step_norm: float          # ‖p‖ proposed by the optimizer
    applied_norm: float       # ‖θ_after − θ_old‖ measured in float64
    r_proposed: float
    r_applied: float          # ‖d‖/ρ_a(d̂) along the applied displacement d (d = p when s = 1)
    scale: float
    bottleneck: list[int]
    n_samples: int
    mode: str
    method: str
    kind: str                 # "certified" (exact JVP, see module doc) | "estimate"
    status: str               # ok | clipped | set | unbounded | zero_step | rejected_nonfinite | rejected_rounding
    #                           | clipped_last_radius | rejected_error
    temperature: float = 1.0
    engine: str = ""          # graph | forward_ad | double_vjp | fd | last_radius | ""
    fallback_reason: str = ""  # why no exact engine was used / why the step was rejected (empty otherwise)
    n_forwards: int = 0       # recorded forwards (micro-batches) whose JVPs define ρ_a
    rho_applied: float = math.nan  # radius along the applied displacement (= rho_a when s = 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d


def _flat_norm64(tensors: list[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    if sum(t.numel() for t in tensors) <= 1 << 22 and len({t.device for t in tensors}) == 1:
        return float(torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in tensors]), dtype=torch.float64))
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float64)  # accumulated in float64, no copies
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def _underlying(opt: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers (Lightning's LightningOptimizer, accelerate's AcceleratedOptimizer)."""
    seen = 0
    while hasattr(opt, "optimizer") and isinstance(opt.optimizer, torch.optim.Optimizer) and seen < 5:
        opt, seen = opt.optimizer, seen + 1  # the wrapper's step() calls the inner step (hooks fire there)
    if not isinstance(opt, torch.optim.Optimizer):
        raise InvalidArgumentError(f"expected a torch.optim.Optimizer, got {type(opt).__name__}")
    return opt


def _combine(results: list[RadiusResult]) -> RadiusResult:
    """The radius over several recorded forwards: the smallest (a non-finite one dominates).  The
    bottleneck index gains the forward's position in front when there are several."""
    worst_i, worst = 0, results[0]
    for i, r in enumerate(results):
        if r.status == "nonfinite" or (worst.status != "nonfinite" and r.rho_a < worst.rho_a):
            worst_i, worst = i, r
            if r.status == "nonfinite":
                break
    if len(results) > 1:
        worst = RadiusResult(worst.rho_a, worst.delta_a, worst.temperature, sum(r.n_samples for r in results),
                             (worst_i,) + tuple(worst.bottleneck), worst.method, worst.kind, worst.status,
                             worst.margin_rel)
    return worst


class SafeStepController:
    """Clip (or set) every step of ``optimizer`` to the ghost radius ``ρ_a`` of ``model`` on the batch.

    Parameters: ``mode`` ``"clip"``/``"set"``; ``r_target`` (set mode); ``method`` ``"jvp"`` (exact,
    default) / ``"fd"`` (estimate); ``temperature`` of the loss ``CE(z/T)``; ``capture``: ``"forward"``
    (hooks on ``logits_module``, default ``model``: every forward run with autograd enabled since the last
    step is recorded) or ``"manual"`` (call :meth:`observe` before each step); ``model_mode`` for the radius
    (``"as_is"`` = the training forward's own mode and random numbers; ``"train"``/``"eval"`` force one);
    ``engine`` ``"auto"`` (the step's own graph, then the replay's forward AD, then reverse-over-reverse),
    ``"graph"``, ``"forward_ad"`` or ``"double_vjp"``;
    ``verify_applied`` recomputes the radius along the applied displacement when the step was rescaled
    (module doc; without it a rescaled step is an estimate); ``max_forwards`` caps the forwards kept per step (older ones dropped → estimate);
    ``jsonl`` a file to append records to.  Only the parameters of ``logits_module`` that are in the
    optimizer are controlled.
    """

    def __init__(self, model: nn.Module, optimizer: Any, *, mode: str = "clip", r_target: float = 1.0,
                 method: str = "jvp", temperature: float = 1.0, capture: str = "forward",
                 logits_module: nn.Module | None = None, model_mode: str = "as_is", eps: float = 1e-3,
                 logits_fn: Callable[[Any], torch.Tensor] = _first_tensor, jsonl: str | Path | None = None,
                 keep_records: bool = True, attach: bool = True, engine: str = "auto",
                 verify_applied: bool = True, max_forwards: int = 1024):
        if mode not in ("clip", "set"):
            raise InvalidArgumentError(f"controller mode must be 'clip' or 'set', got {mode!r}")
        if method not in ("jvp", "fd"):
            raise InvalidArgumentError(f"controller method must be 'jvp' or 'fd', got {method!r}")
        if capture not in ("forward", "manual"):
            raise InvalidArgumentError(f"capture must be 'forward' or 'manual', got {capture!r}")
        if engine not in _ENGINES:
            raise InvalidArgumentError(f"engine must be one of {sorted(_ENGINES)}, got {engine!r}")
        if model_mode not in ("as_is", "train", "eval"):
            raise InvalidArgumentError(f"model_mode must be 'as_is', 'train' or 'eval', got {model_mode!r}")
        if not (r_target > 0 and math.isfinite(r_target)):
            raise InvalidArgumentError(f"r_target must be positive and finite, got {r_target}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise InvalidArgumentError(f"temperature must be positive and finite, got {temperature}")
        if not (eps > 0 and math.isfinite(eps)):
            raise InvalidArgumentError(f"eps must be positive and finite, got {eps}")
        if int(max_forwards) < 1:
            raise InvalidArgumentError(f"max_forwards must be at least 1, got {max_forwards}")
        self.model, self.optimizer = model, _underlying(optimizer)
        self.logits_module = logits_module if logits_module is not None else model
        self.mode, self.r_target, self.method, self.temperature = mode, float(r_target), method, float(temperature)
        self.capture, self.model_mode, self.eps, self.logits_fn = capture, model_mode, float(eps), logits_fn
        self.engine, self.verify_applied, self.max_forwards = engine, bool(verify_applied), int(max_forwards)
        self.jsonl = Path(jsonl) if jsonl is not None else None
        self.keep_records = keep_records
        self.records: list[StepCertificate] = []
        self.last: StepCertificate | None = None
        self._step = 0
        self._busy = False
        self._handles: list[Any] = []
        in_opt = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        named = [(k, p) for k, p in self.logits_module.named_parameters() if id(p) in in_opt and p.requires_grad]
        self._names = [k for k, _ in named]
        self._params = [p for _, p in named]
        if not self._params:
            raise InvalidArgumentError("none of the model's parameters is in the optimizer")
        self._half = any(p.dtype in _HALF for p in self._params)
        self._slots = [(self.logits_module.get_submodule(k.rpartition(".")[0]), k.rpartition(".")[2])
                       for k in self._names]
        self._mods = list(self.logits_module.modules())
        self._cuda = _cuda_indices({p.device for p in self._params})
        self._forwards: list[RecordedForward] = []
        self._pending: list[RecordedForward | None] = []
        self._dropped = 0
        self._np_full = False
        self._record_error = ""
        self._observed: RecordedForward | None = None
        self._old: list[torch.Tensor] | None = None
        self._pre_versions: list[int] | None = None
        self._last_rho: float | None = None
        self._replay = ReplayJVP(self.logits_module, logits_fn, model_mode)
        # the graph engine reads the training forward's own graph: only for that forward's function
        self._graph_on = method == "jvp" and engine in ("auto", "graph") and model_mode == "as_is" \
            and capture == "forward"
        if attach:
            self.attach()

    def __getstate__(self) -> dict:
        """Pickling or deep-copying a module whose hooks reference the controller drops the recorded forwards
        (inputs, RNG states) of the step in progress: they belong to this process's training run."""
        d = dict(self.__dict__)
        d.update(_forwards=[], _pending=[], _observed=None)
        return d

    # ------------------------------------------------------------------ wiring
    def attach(self) -> "SafeStepController":
        if self._handles:
            return self
        self._handles.append(self.optimizer.register_step_pre_hook(self._pre))
        self._handles.append(self.optimizer.register_step_post_hook(self._post))
        if self.capture == "forward":
            m = self.logits_module
            self._handles.append(m.register_forward_pre_hook(self._on_pre_forward, with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._on_forward, with_kwargs=True, always_call=True))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._forwards, self._pending = [], []

    def observe(self, x: Any, logits: torch.Tensor | None = None, kwargs: dict | None = None) -> None:
        """Set the batch of the next step by hand (``capture="manual"``).  Its RNG state is unknown: a forward
        that draws random numbers then gives no certificate.  ``logits`` (at the current θ) are checked
        against the replay when given."""
        args = x if isinstance(x, tuple) else (x,)
        kw = dict(kwargs or {})
        rec = RecordedForward(args=tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                              kwargs={k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kw.items()},
                              versions=[], param_versions=[p._version for p in self._params], rng_before=None,
                              training=[m.training for m in self._mods])
        rec.versions = [t._version for t in _tensors(rec.args, rec.kwargs)]
        if logits is not None:
            rec.z_fp, rec.z_stride = fingerprint(logits)
            rec.z_shape = tuple(logits.shape)
            rec.low_precision = logits.dtype in _HALF
        self._observed = rec

    def _on_pre_forward(self, module, args, kwargs) -> None:
        """Never lets an exception into the training forward: a recording failure makes this step's radius an
        estimate (a micro-batch would be missing) instead."""
        if self._busy:
            return
        try:
            self._record_pre(args, kwargs)
        except Exception as e:  # noqa: BLE001
            self._pending.append(None)
            self._record_error = f"recording a forward failed ({type(e).__name__}: {e})"

    def _record_pre(self, args, kwargs) -> None:
        if not torch.is_grad_enabled() or not self._own_parameters():
            self._pending.append(None)  # evaluation, or a functional_call with other parameter values
            return
        devs = {t.device for t in _tensors(args, kwargs)} | {p.device for p in self._params}
        cuda = _cuda_indices(devs)
        low = self._half or any(torch.is_autocast_enabled(d) for d in {d.type for d in devs}
                                if d in ("cpu", "cuda"))
        stop = {id(t.grad_fn) for t in _tensors(args, kwargs) if t.grad_fn is not None}
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        kwargs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        rec = RecordedForward(
            args=args, kwargs=kwargs, versions=[t._version for t in _tensors(args, kwargs)],
            param_versions=[p._version for p in self._params], rng_before=RngState.capture(cuda, self._np_full),
            low_precision=low, training=[m.training for m in self._mods])
        if self._graph_on:
            if low:
                rec.graph_reason = "half precision or autocast (the replay evaluates it in float32)"
            else:
                rec.graph_stop, rec.graph_watch = stop, GraphWatch()
                rec.graph_watch.__enter__()  # left in the forward hook, also when the forward raises
        self._pending.append(rec)

    def _own_parameters(self) -> bool:
        """Whether the module holds its own parameters now (not swapped by ``functional_call``)."""
        return all(m._parameters.get(a) is p for (m, a), p in zip(self._slots, self._params))

    def _on_forward(self, module, args, kwargs, output) -> None:
        if self._busy or not self._pending:
            return
        rec = self._pending.pop()
        if rec is not None and rec.graph_watch is not None:
            try:
                rec.graph_watch.__exit__(None, None, None)
            except Exception as e:  # noqa: BLE001 - the mode stack was changed inside the forward
                rec.graph_reason = f"graph watch: {type(e).__name__}: {e}"
        try:
            self._record_post(rec, output)
        except Exception as e:  # noqa: BLE001 - never into the training forward
            self._record_error = f"recording a forward failed ({type(e).__name__}: {e})"

    def _record_post(self, rec: RecordedForward | None, output: Any) -> None:
        if rec is None:
            return
        rec.rng_after = RngState.capture(list(rec.rng_before.cuda))
        if rec.rng_after.np_raw != rec.rng_before.np_raw:
            self._np_full = True  # the forward draws from NumPy: keep its full state (Gaussian cache) from now on
        if output is None:  # the forward raised (always_call): nothing ran to a loss
            return
        try:
            z = self.logits_fn(output)
        except Exception as e:  # noqa: BLE001 - no logits in this output: the step cannot be certified
            self._record_error = f"no logits in a recorded forward's output ({type(e).__name__}: {e})"
            return
        if not isinstance(z, torch.Tensor):
            self._record_error = f"logits_fn returned {type(z).__name__}, not a tensor"
            return
        rec.z_fp, rec.z_stride = fingerprint(z)
        rec.z_shape = tuple(z.shape)
        rec.low_precision = rec.low_precision or z.dtype in _HALF
        if rec.graph_watch is not None:
            watch, rec.graph_watch = rec.graph_watch, None
            if watch.hit:
                rec.graph_reason = watch.hit
            elif rec.low_precision:
                rec.graph_reason = "half-precision logits (the replay evaluates the forward in float32)"
            elif not rec.graph_reason:
                try:  # before the backward frees the saved tensors
                    rec.graph_tape = capture(z, self._params, rec.graph_stop)
                except GraphUnsupported as e:
                    rec.graph_reason = str(e)
            rec.graph_stop = None
        self._forwards.append(rec)
        if len(self._forwards) > self.max_forwards:
            self._forwards.pop(0)
            self._dropped += 1

    # ------------------------------------------------------------------ step buffers
    def _alloc(self) -> None:
        """θ_old in the parameters' dtype; p = θ_new − θ_old and a scratch in float32 for half-precision
        parameters (the difference of two bf16/fp16 numbers is exact there), else in the parameters' dtype.
        One flat buffer each when all parameters share device and dtype (single kernels)."""
        ps = self._params
        ddt = [torch.float32 if p.dtype in _HALF else p.dtype for p in ps]
        if len({(p.device, p.dtype) for p in ps}) == 1:
            n = sum(p.numel() for p in ps)
            flats = [torch.empty(n, dtype=dt, device=ps[0].device) for dt in (ps[0].dtype, ddt[0], ddt[0])]
            views = []
            for f in flats:
                vs, o = [], 0
                for p in ps:
                    vs.append(f[o:o + p.numel()].view(p.shape))
                    o += p.numel()
                views.append(vs)
            (self._old_flat, self._delta_flat, self._tmp_flat), (self._old, self._delta, self._tmp) = flats, views
        else:
            self._old_flat = self._delta_flat = self._tmp_flat = None
            self._old = [torch.empty_like(p) for p in ps]
            self._delta = [torch.empty_like(p, dtype=dt) for p, dt in zip(ps, ddt)]
            self._tmp = [torch.empty_like(p, dtype=dt) for p, dt in zip(ps, ddt)]

    def _pre(self, optimizer, args, kwargs) -> None:
        with torch.no_grad():
            if self._old is None:
                self._alloc()
            torch._foreach_copy_(self._old, self._params)
        self._pre_versions = [p._version for p in self._params]

    def _diff(self, out: list[torch.Tensor], flat: torch.Tensor | None) -> list[torch.Tensor]:
        """``out ← θ − θ_old`` (current parameters minus the snapshot) in the preallocated buffer."""
        torch._foreach_copy_(out, self._params)
        if flat is not None:
            flat.sub_(self._old_flat)
        else:
            torch._foreach_sub_(out, self._old)
        return out

    @staticmethod
    def _norm64(ts: list[torch.Tensor], flat: torch.Tensor | None) -> float:
        if flat is not None and flat.numel() <= 1 << 22:
            return float(torch.linalg.vector_norm(flat, dtype=torch.float64))
        return _flat_norm64(ts)

    def _revert(self) -> None:
        with torch.no_grad():
            torch._foreach_copy_([p.detach() for p in self._params], self._old)

    def _apply_scale(self, s: float, delta: list[torch.Tensor]) -> float:
        """θ ← θ_old + s·p (rounded to the parameters' dtype); returns ‖θ − θ_old‖ measured in float64 and
        leaves the applied displacement in ``self._tmp``."""
        cur = [p.detach() for p in self._params]
        torch._foreach_copy_(cur, self._old)
        if s == 0.0:
            for t in self._tmp:
                t.zero_()
            return 0.0
        torch._foreach_add_(cur, delta, alpha=s)
        return self._norm64(self._diff(self._tmp, self._tmp_flat), self._tmp_flat)

    # ------------------------------------------------------------------ the step
    def _post(self, optimizer, args, kwargs) -> None:
        forwards, dropped, rec_err = self._forwards, self._dropped, self._record_error
        self._forwards, self._pending, self._dropped, self._record_error = [], [], 0, ""
        if self.capture == "manual":
            forwards, self._observed = ([self._observed] if self._observed is not None else []), None
        self._step += 1
        if not forwards:
            self._revert()
            raise InvalidArgumentError("SafeStepController: no batch seen before optimizer.step() (the step was not "
                                       "taken); run the forward with autograd enabled or call controller.observe(x)")
        try:
            with torch.no_grad():
                rec = self._control(forwards, dropped, rec_err)
        except Exception as e:  # noqa: BLE001 - never leave an unchecked step applied
            rec = self._fail_safe(f"{type(e).__name__}: {e}")
        except BaseException:
            self._revert()
            raise
        finally:
            for f in forwards:  # the saved activations held since the forward are released now
                if f is not None and f.graph_tape is not None:
                    f.graph_tape.release()
                    f.graph_tape = None
        if rec.kind == "certified" and math.isfinite(rec.rho_a) and rec.rho_a > 0:
            self._last_rho = rec.rho_a
        self.last = rec
        if self.keep_records:
            self.records.append(rec)
        if self.jsonl is not None:
            with self.jsonl.open("a") as f:
                f.write(json.dumps(rec.to_dict()) + "\n")

    def _fail_safe(self, reason: str) -> StepCertificate:
        """Internal failure: clip by the last certified radius if there is one, else do not take the step."""
        common = dict(step=self._step, bottleneck=[], n_samples=0, mode=self.mode, method=self.method,
                      kind="estimate", temperature=self.temperature, fallback_reason=reason)
        warnings.warn(f"SafeStepController step {self._step}: {reason}", RuntimeWarning, stacklevel=3)
        try:
            with torch.no_grad():
                delta = self._diff(self._delta, self._delta_flat)
                tau = self._norm64(delta, self._delta_flat)
                if self._last_rho is not None and math.isfinite(tau) and tau > 0:
                    s = min(1.0, _SAFETY * self._last_rho / tau)
                    applied = self._apply_scale(s, delta)
                    return StepCertificate(rho_a=self._last_rho, step_norm=tau, applied_norm=applied,
                                           r_proposed=tau / self._last_rho, r_applied=math.nan, scale=s,
                                           status="clipped_last_radius", engine="last_radius", **common)
        except Exception as e:  # noqa: BLE001
            common["fallback_reason"] = f"{reason}; then {type(e).__name__}: {e}"
        self._revert()
        return StepCertificate(rho_a=math.nan, step_norm=math.nan, applied_norm=0.0, r_proposed=math.nan,
                               r_applied=0.0, scale=0.0, status="rejected_error", **common)

    def _params_at(self, values: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every parameter of ``logits_module`` (one entry per tied tensor) with the controlled ones at ``values``."""
        byid = {id(p): v for p, v in zip(self._params, values)}
        return {k: byid.get(id(p), p) for k, p in self.logits_module.named_parameters()}

    def _radius(self, forwards: list[RecordedForward], params: dict[str, torch.Tensor] | None,
                disp: list[torch.Tensor], norm: float, engines: tuple[str, ...]):
        """``(RadiusResult | None, engine, reasons)`` along ``disp/norm`` over all recorded forwards."""
        reasons: list[str] = []
        unit: dict[str, torch.Tensor] = {}
        self._busy = True
        try:
            for eng in engines:
                if eng == "graph":
                    try:
                        res = [radius_from_dlogits(self._wide(self._graph_jvp(f, disp, norm)),
                                                   temperature=self.temperature, method="jvp") for f in forwards]
                        return _combine(res), eng, reasons
                    except ReplayUnsupported as e:
                        reasons.append(f"graph: {e}")
                    continue
                if params is None:
                    params = self._params_at(self._old)
                if not unit:
                    unit = {k: d / norm for k, d in zip(self._names, disp)}
                try:
                    fn = getattr(self._replay, eng)
                    res = [radius_from_dlogits(self._wide(fn(f, params, unit)), temperature=self.temperature,
                                               method="jvp") for f in forwards]
                    return _combine(res), eng, reasons
                except ReplayUnsupported as e:
                    reasons.append(f"{eng}: {e}")
                except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
                    reasons.append(f"{eng}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            if params is None:
                params = self._params_at(self._old)
            if not unit:
                unit = {k: d / norm for k, d in zip(self._names, disp)}
            try:
                res = [radius_from_dlogits(self._wide(self._replay.central_difference(f, params, unit, self.eps)),
                                           temperature=self.temperature, method="fd") for f in forwards]
                return _combine(res), "fd", reasons
            except (ReplayUnsupported, RuntimeError, NotImplementedError, TypeError, ValueError) as e:
                reasons.append(f"fd: {e}")
            return None, "", reasons
        finally:
            self._busy = False

    def _graph_jvp(self, f: RecordedForward, disp: list[torch.Tensor], norm: float) -> torch.Tensor:
        """The JVP from the forward's captured autograd graph (:mod:`certify.graph_tangent`) at θ_old."""
        if f.graph_tape is None:
            raise GraphUnsupported(f.graph_reason or "no graph captured for this forward")
        return f.graph_tape.jvp(self._old, self._params, [d / norm for d in disp])

    @staticmethod
    def _wide(a: torch.Tensor) -> torch.Tensor:
        return a if a.dtype in (torch.float32, torch.float64) else a.float()

    def _control(self, forwards: list[RecordedForward], dropped: int, rec_err: str = "") -> StepCertificate:
        common = dict(step=self._step, mode=self.mode, method=self.method, temperature=self.temperature,
                      n_forwards=len(forwards))
        delta = self._diff(self._delta, self._delta_flat)
        tau = self._norm64(delta, self._delta_flat)
        if tau == 0.0:
            return StepCertificate(rho_a=math.inf, step_norm=0.0, applied_norm=0.0, r_proposed=0.0, r_applied=0.0,
                                   scale=1.0, bottleneck=[], n_samples=0, kind="estimate", status="zero_step",
                                   **common)
        if not math.isfinite(tau):
            self._apply_scale(0.0, delta)
            return StepCertificate(rho_a=0.0, step_norm=tau, applied_norm=0.0, r_proposed=math.inf, r_applied=0.0,
                                   scale=0.0, bottleneck=[], n_samples=0, kind="estimate",
                                   status="rejected_nonfinite", **common)
        notes: list[str] = []
        if self.capture == "forward":
            valid = [f for f in forwards if f.param_versions == self._pre_versions]
            if len(valid) < len(forwards):
                notes.append(f"{len(forwards) - len(valid)} recorded forward(s) ran at other parameter values "
                             "than θ_old and were not used")
            forwards = valid
            if not forwards:
                raise ReplayUnsupported("no recorded forward ran at θ_old")
        if dropped:
            notes.append(f"{dropped} forward(s) beyond max_forwards were not kept")
        if rec_err:
            notes.append(rec_err)
        params = None  # θ_old by name, built only if a replay engine runs (the graph engine reads self._old)
        engines = _ENGINES[self.engine] if self.method == "jvp" else ()
        res, engine, reasons = self._radius(forwards, params, delta, tau, engines)
        reasons = notes + reasons
        common.update(engine=engine, fallback_reason="; ".join(reasons))
        if res is None:
            raise ReplayUnsupported("no engine could compute the radius: " + "; ".join(reasons))
        kind = res.kind if not notes else "estimate"
        if res.status == "nonfinite":
            self._apply_scale(0.0, delta)
            return StepCertificate(rho_a=res.rho_a, step_norm=tau, applied_norm=0.0, r_proposed=math.inf,
                                   r_applied=0.0, scale=0.0, bottleneck=list(res.bottleneck), n_samples=res.n_samples,
                                   kind="estimate", status="rejected_nonfinite", **common)
        rho = res.rho_a
        r_prop = tau / rho if rho > 0 else math.inf
        if res.status == "unbounded":
            s, status = 1.0, "unbounded"
        elif self.mode == "clip":
            s = min(1.0, _SAFETY * rho / tau)
            status = "clipped" if s < 1.0 else "ok"
        else:
            s, status = self.r_target * rho / tau, "set"
        out = dict(rho_a=rho, step_norm=tau, r_proposed=r_prop, bottleneck=list(res.bottleneck),
                   n_samples=res.n_samples, **common)
        if s == 1.0:
            return StepCertificate(applied_norm=tau, r_applied=tau / rho if math.isfinite(rho) else 0.0, scale=1.0,
                                   kind=kind, status=status, rho_applied=rho, **out)
        # rescaled: measure what was written and re-derive the radius along it
        shrink = min(_SAFETY, 1.0 - 4.0 * max(torch.finfo(p.dtype).eps for p in self._params))  # one grid step
        for _ in range(6):
            applied = self._apply_scale(s, delta)
            if applied == 0.0:
                return StepCertificate(applied_norm=0.0, r_applied=0.0, scale=s, kind=kind, status=status, **out)
            if not self.verify_applied:  # r along p̂, not along the rounded applied step: not a certificate
                out["fallback_reason"] = (out["fallback_reason"] + "; " if out["fallback_reason"] else "") + \
                    "radius not re-measured along the applied step (verify_applied=False)"
                return StepCertificate(applied_norm=applied, r_applied=applied / rho, scale=s, kind="estimate",
                                       status=status, rho_applied=math.nan, **out)
            res2, eng2, why = self._radius(forwards, params, self._tmp, applied, (engine,) if engine != "fd" else ())
            if res2 is None or eng2 != engine or res2.status == "nonfinite":
                raise ReplayUnsupported("the radius along the applied step could not be recomputed: " + "; ".join(why))
            rho2 = res2.rho_a
            r_app = applied / rho2 if math.isfinite(rho2) else 0.0
            if self.mode == "set" or r_app <= 1.0:
                return StepCertificate(applied_norm=applied, r_applied=r_app, scale=s, kind=kind, status=status,
                                       rho_applied=rho2, **out)
            s *= shrink / r_app
        self._apply_scale(0.0, delta)
        out["fallback_reason"] = (out["fallback_reason"] + "; " if out["fallback_reason"] else "") + \
            "the rounded applied step stayed above the radius"
        return StepCertificate(applied_norm=0.0, r_applied=0.0, scale=0.0, kind=kind, status="rejected_rounding",
                               rho_applied=math.nan, **out)

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        """Counts and extremes over the recorded steps (JSON-ready)."""
        recs = self.records
        fin = [r.r_applied for r in recs if math.isfinite(r.r_applied)]
        return {"steps": len(recs), "mode": self.mode, "method": self.method,
                "clipped": sum(r.status == "clipped" for r in recs),
                "rejected": sum(r.status.startswith("rejected") for r in recs),
                "max_r_applied": max(fin) if fin else None,
                "max_r_proposed": max((r.r_proposed for r in recs if math.isfinite(r.r_proposed)), default=None),
                "kind": "certified" if recs and all(r.kind == "certified" for r in recs) else "estimate"}

    def write_jsonl(self, path: str | Path) -> None:
        with Path(path).open("w") as f:
            for r in self.records:
                f.write(json.dumps(r.to_dict()) + "\n")


# ---------------------------------------------------------------------- framework adapters
def lightning_callback(logits_attr: str | None = None, **controller_kwargs: Any):
    """A ``lightning.pytorch.Callback`` that attaches a :class:`SafeStepController` at ``on_train_start``.

    ``logits_attr`` names the submodule of the LightningModule whose forward returns the logits (default:
    the LightningModule itself).  Records are in ``callback.controller.records``.
    """
    try:
        from lightning.pytorch import Callback
    except ImportError:  # pragma: no cover - depends on the environment
        try:
            from pytorch_lightning import Callback
        except ImportError as e:
            raise InvalidArgumentError("PyTorch Lightning is not installed (pip install lightning)") from e

    class SafeStepCallback(Callback):
        def __init__(self) -> None:
            self.controller: SafeStepController | None = None

        def on_train_start(self, trainer, pl_module) -> None:
            target = getattr(pl_module, logits_attr) if logits_attr else pl_module
            self.controller = SafeStepController(target, trainer.optimizers[0], **controller_kwargs)

        def on_train_end(self, trainer, pl_module) -> None:
            if self.controller is not None:
                self.controller.detach()

    return SafeStepCallback()


def hf_callback(**controller_kwargs: Any):
    """A ``transformers.TrainerCallback`` attaching a :class:`SafeStepController` at ``on_train_begin``.

    Uses the model's ``.logits`` output and the inputs of the last training forward (forward hook).
    With gradient accumulation every micro-batch forward since the last step enters ``ρ_a``.
    """
    try:
        from transformers import TrainerCallback
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InvalidArgumentError("Hugging Face transformers is not installed") from e

    class SafeStepHFCallback(TrainerCallback):
        def __init__(self) -> None:
            self.controller: SafeStepController | None = None

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            self.controller = SafeStepController(model, optimizer, **controller_kwargs)

        def on_train_end(self, args, state, control, **kwargs):
            if self.controller is not None:
                self.controller.detach()

    return SafeStepHFCallback()
