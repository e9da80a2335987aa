"""Safe-step controller: keep every optimizer step inside the softmax-ghost radius ``ρ_a``.

Rule (Sao 2026, Prop. 5.2).  Let ``p = θ_new − θ_old`` be the update the optimizer proposes (learning
rate, momentum, Adam scaling and decoupled weight decay included), ``τ₀ = ‖p‖`` and ``ρ_a`` the radius
of :mod:`certify.ghosts` along ``v̂ = p/τ₀`` on the current batch.

* ``mode="clip"``: apply ``s·p`` with ``s = min(1, ρ_a/τ₀)`` -- the applied step has ``r = ‖s p‖/ρ_a ≤ 1``.
  The scale carries a relative safety factor ``1 − 1e-6`` and the *applied* displacement is re-measured
  in float64 after the update; if rounding pushed it over ``ρ_a`` it is shrunk again, so the recorded
  ``r_applied ≤ 1`` is a measured fact, not an assumption.
* ``mode="set"``: apply ``s·p`` with ``s = r_target·ρ_a/τ₀`` (schedule-free step length, may enlarge).

The step is taken by the optimizer as usual and rescaled afterwards (``θ ← θ_old + s(θ_new − θ_old)``),
which is exactly the paper's ``p̃ = s·p``; the optimizer's internal state (moments, momentum buffers)
is left as the optimizer computed it.  A step whose ``ρ_a`` or ``‖p‖`` is NaN/Inf is *rejected*
(``θ ← θ_old``, ``status="rejected_nonfinite"``) -- it is never certified.

Cost.  The controller snapshots θ_old in a pre-step hook (one ``foreach`` copy into a flat buffer
allocated once; ``p`` and its float64 norm are then one kernel each) and needs the batch the gradient came
from: the inputs *and logits* of the last forward run with autograd enabled are recorded (by the capture
wrapper below, else by a forward hook), so nothing is recomputed.  ``method="fd"`` then needs one extra
forward without autograd (``a ≈ (z(θ_old + ε v̂) − z)/ε``, an *estimate*).  ``method="jvp"`` (default)
computes the exact JVP ``a = J_z(θ_old)·p`` (per-step records labelled ``certified`` for the
logit-linearized loss on the batch):

* ``engine="auto"`` (default) / ``"tangent"``: the training forward itself runs through the module's
  ``torch.fx`` trace (same operations, same numbers; :mod:`certify.tangent`), its node values -- the
  activations at θ_old, since the optimizer steps after forward and backward -- are kept, and after the
  step only the tangent is propagated from them: no primal recomputation.  The capture is used only if
  the parameters' version counters show that θ did not change between that forward and the step, and it
  is dropped after the step.  ``compile_tangent=True`` fuses the tangent pass with ``torch.compile``.
* fallback (``"auto"``) or ``engine="functorch"``: the whole-model ``torch.func`` JVP at θ_old on the
  recorded batch (recomputes the forward).  Each record says which engine ran (``engine``) and why the
  tangent engine was not used (``fallback_reason``: untraceable model, in-place op, no fresh capture, …);
  both are exact and ``certified``.  ``engine="tangent"`` raises instead of falling back.

Each step appends a :class:`StepCertificate` to ``controller.records`` (and to a JSONL file if given).
Adapters for PyTorch Lightning and Hugging Face ``Trainer`` are built on demand by
:func:`lightning_callback` and :func:`hf_callback` (they import those packages lazily).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call

from ..models.errors import InvalidArgumentError
from .ghosts import _first_tensor, logit_fd, logit_jvp, radius_from_dlogits
from .tangent import Unsupported, cached_program

_SAFETY = 1.0 - 1e-6


@dataclass
class StepCertificate:
    """What one controlled step did.  ``r_* = ‖step‖/ρ_a``; ``scale`` multiplied the proposed update."""

    step: int
    rho_a: float
    step_norm: float          # ‖p‖ proposed by the optimizer
    applied_norm: float       # ‖θ_after − θ_old‖ measured in float64
    r_proposed: float
    r_applied: float
    scale: float
    bottleneck: list[int]
    n_samples: int
    mode: str
    method: str
    kind: str                 # "certified" (exact JVP) | "estimate" (finite differences / rejected)
    status: str               # "ok" | "clipped" | "set" | "unbounded" | "rejected_nonfinite" | "zero_step"
    temperature: float = 1.0
    engine: str = ""          # "tangent" (cached forward + tangent pass) | "functorch" (whole-model JVP) | "fd"
    fallback_reason: str = ""  # why the tangent engine was not used (empty when it was, or not applicable)

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
        # small models: one flat float64 vector, one reduction (much cheaper than per-tensor dispatch)
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


def _class_forward(module: nn.Module) -> Callable:
    return type(module).forward.__get__(module)


class _CaptureForward:
    """The instance-level ``forward`` installed by the controller (see ``_install_forward``).  Copies and
    pickles of the module must not route through the controller of the original: they get the class's
    own forward, bound to the copy."""

    def __init__(self, ctrl: "SafeStepController", module: nn.Module, orig: Callable):
        self.ctrl, self.module, self.orig = ctrl, module, orig

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.ctrl._capture_call(self.module, self.orig, args, kwargs)

    def __deepcopy__(self, memo: dict) -> Callable:
        import copy
        return _class_forward(copy.deepcopy(self.module, memo))

    def __reduce__(self):
        return (_class_forward, (self.module,))


class SafeStepController:
    """Clip (or set) every step of ``optimizer`` to the ghost radius ``ρ_a`` of ``model`` on the batch.

    Parameters: ``mode`` ``"clip"``/``"set"``; ``r_target`` (set mode); ``method`` ``"jvp"``/``"fd"``;
    ``temperature`` of the loss ``CE(z/T)``; ``capture``: ``"forward"`` (hook on ``logits_module``,
    default ``model``, records the last forward run with autograd enabled) or ``"manual"`` (call
    :meth:`observe` before each step); ``model_mode`` for the radius forward (``"as_is"`` = the
    module's mode, i.e. batch statistics in training); ``jsonl`` a file to append records to;
    ``engine`` ``"auto"``/``"tangent"``/``"functorch"`` and ``compile_tangent`` choose how the exact JVP
    is computed (module doc).  Only the parameters of ``model`` that are in the optimizer are controlled.
    While attached with ``capture="forward"`` and ``method="jvp"``, ``model.forward`` is an instance
    attribute routing training forwards through the trace (removed by :meth:`detach`; copies and pickles
    of the module get the class's forward).
    """

    def __init__(self, model: nn.Module, optimizer: Any, *, mode: str = "clip", r_target: float = 1.0,
                 method: str = "jvp", temperature: float = 1.0, capture: str = "forward",
                 logits_module: nn.Module | None = None, model_mode: str = "as_is", eps: float = 1e-3,
                 logits_fn: Callable[[Any], torch.Tensor] = _first_tensor, jsonl: str | Path | None = None,
                 keep_records: bool = True, attach: bool = True, engine: str = "auto",
                 compile_tangent: bool | str = False):
        if mode not in ("clip", "set"):
            raise InvalidArgumentError(f"controller mode must be 'clip' or 'set', got {mode!r}")
        if method not in ("jvp", "fd"):
            raise InvalidArgumentError(f"controller method must be 'jvp' or 'fd', got {method!r}")
        if capture not in ("forward", "manual"):
            raise InvalidArgumentError(f"capture must be 'forward' or 'manual', got {capture!r}")
        if engine not in ("auto", "tangent", "functorch"):
            raise InvalidArgumentError(f"engine must be 'auto', 'tangent' or 'functorch', got {engine!r}")
        if not (r_target > 0 and math.isfinite(r_target)):
            raise InvalidArgumentError(f"r_target must be positive and finite, got {r_target}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise InvalidArgumentError(f"temperature must be positive and finite, got {temperature}")
        self.model, self.optimizer = model, _underlying(optimizer)
        self.logits_module = logits_module if logits_module is not None else model
        self.mode, self.r_target, self.method, self.temperature = mode, float(r_target), method, float(temperature)
        self.capture, self.model_mode, self.eps, self.logits_fn = capture, model_mode, eps, logits_fn
        self.jsonl = Path(jsonl) if jsonl is not None else None
        self.keep_records = keep_records
        self.records: list[StepCertificate] = []
        self.last: StepCertificate | None = None
        self._step = 0
        self._batch: tuple[tuple, dict, torch.Tensor | None] | None = None
        self._busy = False
        self._handles: list[Any] = []
        in_opt = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        self._names = [k for k, p in self.logits_module.named_parameters() if id(p) in in_opt and p.requires_grad]
        named = dict(self.logits_module.named_parameters())
        self._params = [named[k] for k in self._names]
        if not self._params:
            raise InvalidArgumentError("none of the model's parameters is in the optimizer")
        if method == "fd" and any(p.dtype not in (torch.float32, torch.float64) for p in self._params):
            raise InvalidArgumentError("method='fd' needs float32/float64 parameters (a finite difference in half "
                                       "precision is meaningless); use method='jvp', which runs in float32")
        self._old: list[torch.Tensor] | None = None   # θ_old snapshot (views of one flat buffer, see _alloc)
        self._new: list[torch.Tensor] | None = None
        self._bufsave: list[torch.Tensor] = []
        self.engine = engine
        self.compile_tangent = compile_tangent  # False, True (Inductor) or a torch.compile backend name
        self._programs: dict = {}             # traced programs per .training-flag pattern (or the Unsupported)
        self._cap = None                      # tangent-engine capture of the last training forward
        self._cap_versions: list[int] | None = None
        self._pre_versions: list[int] | None = None
        self._fast_reason = ""                # why the last forward was not captured
        self._orig_forward = None
        if attach:
            self.attach()

    def __getstate__(self) -> dict:
        """Pickling (e.g. ``torch.save`` of a module whose hooks reference the controller) drops the traced
        programs and the capture; they are rebuilt on demand."""
        d = dict(self.__dict__)
        d.update(_programs={}, _cap=None)
        return d

    # ------------------------------------------------------------------ wiring
    def attach(self) -> "SafeStepController":
        if self._handles:
            return self
        self._handles.append(self.optimizer.register_step_pre_hook(self._pre))
        self._handles.append(self.optimizer.register_step_post_hook(self._post))
        if self.capture == "forward":
            if self.method == "jvp" and self.engine != "functorch":
                self._install_forward()
            if self._orig_forward is None:  # the capture wrapper records the batch itself (no hook dispatch)
                self._handles.append(self.logits_module.register_forward_hook(self._on_forward, with_kwargs=True))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        mod = self.logits_module
        if self._orig_forward is not None and mod.__dict__.get("forward") is self._wrapped_forward:
            del mod.__dict__["forward"]
        self._orig_forward = None
        self._cap = None

    def _install_forward(self) -> None:
        """Route the module's forward through its ``torch.fx`` trace while training, keeping every node value
        of the forward at θ_old for the tangent engine (:mod:`certify.tangent`).  Same operations, same
        numbers; forwards without autograd (evaluation) and calls the trace does not fit use the original.
        A copy (``copy.deepcopy``) or pickle of the module gets the plain class forward back."""
        mod = self.logits_module
        if "forward" in mod.__dict__:
            self._fast_reason = "the module's forward is already patched by someone else"
            return
        self._orig_forward = mod.forward
        self._wrapped_forward = _CaptureForward(self, mod, self._orig_forward)
        mod.forward = self._wrapped_forward

    def _capture_call(self, mod: nn.Module, orig: Callable, args: tuple, kwargs: dict) -> Any:
        if self._busy or not torch.is_grad_enabled() or self._orig_forward is None:
            return orig(*args, **kwargs)
        out = self._capture_forward(mod, orig, args, kwargs)
        self._record_batch(args, kwargs, out)  # what the forward hook records when no wrapper is installed
        return out

    def _capture_forward(self, mod: nn.Module, orig: Callable, args: tuple, kwargs: dict) -> Any:
        self._cap = None
        try:
            prog = cached_program(mod, self._programs, compile=self.compile_tangent)
        except Unsupported as e:
            self._fast_reason = str(e)
            return orig(*args, **kwargs)
        if not prog.accepts(args, kwargs):
            self._fast_reason = "the forward call does not bind every traced input to a tensor"
            return orig(*args, **kwargs)
        if not getattr(prog, "validated", False):
            return self._first_capture(mod, prog, orig, args, kwargs)
        out, cap = prog.capture(*args, **kwargs)
        self._cap, self._fast_reason = cap, ""
        self._cap_versions = [p._version for p in self._params]
        return out

    def _first_capture(self, mod: nn.Module, prog: Any, orig: Callable, args: tuple, kwargs: dict) -> Any:
        """First use of a traced program: check once that the trace reproduces the module's own forward
        (same logits, bit for bit, from the same buffers and RNG state; the reference forward runs without
        autograd on cloned buffers).  A trace that does not -- or that fails at run time -- is marked
        unsupported and the original forward's output is returned, so training never depends on a wrong
        trace."""
        bufs = dict(mod.named_buffers())
        b0 = {k: b.detach().clone() for k, b in bufs.items()}
        devs = sorted({t.device.index for t in list(mod.parameters()) + list(bufs.values())
                       if t.device.type == "cuda" and t.device.index is not None})
        rng0 = torch.get_rng_state()
        cuda0 = [torch.cuda.get_rng_state(d) for d in devs]

        def set_rng():
            torch.set_rng_state(rng0)
            for d, st in zip(devs, cuda0):
                torch.cuda.set_rng_state(st, d)

        reason = ""
        try:
            out, cap = prog.capture(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a trace that fails at run time is simply not used
            out, cap, reason = None, None, f"the traced forward failed: {type(e).__name__}: {e}"
        if cap is not None:
            self._busy = True
            try:
                with torch.random.fork_rng(devices=devs), torch.no_grad():
                    set_rng()
                    params = {k: p.detach() for k, p in mod.named_parameters()}
                    ref = functional_call(mod, {**params, **{k: v.clone() for k, v in b0.items()}}, args, kwargs)
                same = torch.equal(self.logits_fn(out).detach(), self.logits_fn(ref).detach())
            except Exception:  # noqa: BLE001
                same = False
            finally:
                self._busy = False
            if same:
                prog.validated = True
                self._cap, self._fast_reason = cap, ""
                self._cap_versions = [p._version for p in self._params]
                return out
            reason = "the traced forward does not reproduce the module's forward"
        out = cap = None  # drop the trace's autograd graph before restoring what it changed
        with torch.no_grad():
            for k, b in bufs.items():
                b.copy_(b0[k])
        set_rng()
        for k, v in list(self._programs.items()):
            if v is prog:
                self._programs[k] = Unsupported(reason)
        self._fast_reason = reason
        return orig(*args, **kwargs)

    def observe(self, x: Any, logits: torch.Tensor | None = None, kwargs: dict | None = None) -> None:
        """Set the batch (and optionally its logits at the current θ, reused by ``method="fd"``)."""
        args = x if isinstance(x, tuple) else (x,)
        self._batch = (args, dict(kwargs or {}), None if logits is None else logits.detach())

    def _on_forward(self, module, args, kwargs, output) -> None:
        if self._busy or not torch.is_grad_enabled():
            return
        self._record_batch(args, kwargs, output)

    def _record_batch(self, args: tuple, kwargs: dict, output: Any) -> None:
        try:
            z = self.logits_fn(output).detach()
        except InvalidArgumentError:
            z = None
        self._batch = (tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                       {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}, z)

    # ------------------------------------------------------------------ hooks
    def _alloc(self) -> None:
        """Step buffers, allocated once: θ_old and p = θ_new − θ_old (and a scratch for the applied step).
        When all controlled parameters share one device and dtype each buffer is one flat vector whose views
        have the parameters' shapes, so p and its norm are single kernels instead of one per tensor."""
        ps = self._params
        if len({(p.device, p.dtype) for p in ps}) == 1:
            n = sum(p.numel() for p in ps)
            flats = [torch.empty(n, dtype=ps[0].dtype, device=ps[0].device) for _ in range(3)]
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
            self._old, self._delta, self._tmp = ([torch.empty_like(p) for p in ps] for _ in range(3))
        self._old_map = dict(zip(self._names, self._old))
        self._delta_map = dict(zip(self._names, self._delta))

    def _pre(self, optimizer, args, kwargs) -> None:
        with torch.no_grad():
            if self._old is None:
                self._alloc()
            torch._foreach_copy_(self._old, self._params)
        # version counters at θ_old: a capture is θ_old's iff the parameters' versions then equal these
        # (also when the forward runs inside optimizer.step(closure), after this hook)
        self._pre_versions = [p._version for p in self._params]

    def _post(self, optimizer, args, kwargs) -> None:
        if self._batch is None and self._cap is None:
            raise InvalidArgumentError("SafeStepController: no batch seen before optimizer.step(); run the "
                                       "forward with autograd enabled or call controller.observe(x)")
        self._step += 1
        with torch.no_grad():
            delta = self._diff(self._delta, self._delta_flat)
            tau = self._norm64(delta, self._delta_flat)
            rec = self._decide(delta, tau)
        self._cap = None  # the capture belongs to θ_old of this step only
        self.last = rec
        if self.keep_records:
            self.records.append(rec)
        if self.jsonl is not None:
            with self.jsonl.open("a") as f:
                f.write(json.dumps(rec.to_dict()) + "\n")

    def _diff(self, out: list[torch.Tensor], flat: torch.Tensor | None) -> list[torch.Tensor]:
        """``out ← θ − θ_old`` (the current parameters minus the snapshot), in the preallocated buffer."""
        torch._foreach_copy_(out, self._params)
        if flat is not None:
            flat.sub_(self._old_flat)
        else:
            torch._foreach_sub_(out, self._old)
        return out

    @staticmethod
    def _norm64(ts: list[torch.Tensor], flat: torch.Tensor | None) -> float:
        """‖·‖₂ accumulated in float64 (the same reduction as :func:`_flat_norm64`, without the concatenation)."""
        if flat is not None and flat.numel() <= 1 << 22:
            return float(torch.linalg.vector_norm(flat, dtype=torch.float64))
        return _flat_norm64(ts)

    def _tangent_radius(self, delta: list[torch.Tensor], tau: float):
        """``a = J_z(θ_old)·p/τ`` from the captured training forward, or the reason it cannot be used."""
        cap, self._cap = self._cap, None
        if self.engine == "functorch" or self.method != "jvp":
            return None, ""
        if cap is None:
            return None, self._fast_reason or "no forward captured since the last step"
        if self._cap_versions != self._pre_versions:
            return None, "parameters changed between the captured forward and the step"
        if self.model_mode != "as_is" and any(f != (self.model_mode == "train") for f in cap.program.flags):
            return None, f"model_mode={self.model_mode!r} differs from the training forward's mode"
        try:
            _, a = cap.program.tangent(cap, self._old_map, self._delta_map, self.logits_fn, consume=True)
        except Unsupported as e:
            return None, str(e)
        if a.dtype not in (torch.float32, torch.float64):
            return None, f"activations in {a.dtype} (the certificate needs float32 or float64)"
        return a / tau, ""

    def _radius(self, delta: list[torch.Tensor], tau: float):
        a, reason = self._tangent_radius(delta, tau)
        if a is not None:
            return radius_from_dlogits(a, temperature=self.temperature, method="jvp"), "tangent", ""
        if self.engine == "tangent":
            raise InvalidArgumentError(f"engine='tangent' cannot be used for this step: {reason}")
        if self._batch is None:
            raise InvalidArgumentError("SafeStepController: no batch seen before optimizer.step(); run the "
                                       "forward with autograd enabled or call controller.observe(x)")
        args, kw, z0 = self._batch
        self._busy = True
        try:
            if self.method == "fd" and z0 is not None and self.model_mode == "as_is":
                a = self._fd_inplace(delta, tau, args, kw, z0)
            else:
                old = dict(zip(self._names, self._old))
                params = {k: old.get(k, p) for k, p in self.logits_module.named_parameters()}
                unit = {k: d / tau for k, d in zip(self._names, delta)}
                if self.method == "jvp":
                    _, a = logit_jvp(self.logits_module, args, unit, mode=self.model_mode, params=params,
                                     kwargs=kw, logits_fn=self.logits_fn)
                else:
                    _, a = logit_fd(self.logits_module, args, unit, eps=self.eps, z0=None, mode=self.model_mode,
                                    params=params, kwargs=kw, logits_fn=self.logits_fn)
        finally:
            self._busy = False
        engine = "functorch" if self.method == "jvp" else "fd"
        return radius_from_dlogits(a, temperature=self.temperature, method=self.method), engine, reason

    def _fd_inplace(self, delta: list[torch.Tensor], tau: float, args: tuple, kw: dict,
                    z0: torch.Tensor) -> torch.Tensor:
        """``(z(θ_old + ε v̂) − z(θ_old))/ε`` with ``z(θ_old)`` = the training forward's logits.

        Writes θ_old + ε v̂ into the parameters, runs the module's own forward without autograd, and puts
        θ_new and the buffers (BatchNorm statistics) back bit for bit.
        """
        cur = [p.detach() for p in self._params]
        bufs = [b for b in self.logits_module.buffers()]
        if self._new is None:
            self._new = [c.clone() for c in cur]
            self._bufsave = [b.clone() for b in bufs]
        else:
            torch._foreach_copy_(self._new, cur)
            if bufs:
                torch._foreach_copy_(self._bufsave, bufs)
        try:
            torch._foreach_copy_(cur, self._old)
            torch._foreach_add_(cur, delta, alpha=self.eps / tau)
            z1 = self.logits_fn(self.logits_module(*args, **kw)).detach()
        finally:
            torch._foreach_copy_(cur, self._new)
            if bufs:
                torch._foreach_copy_(bufs, self._bufsave)
        return (z1 - z0) / self.eps

    def _apply_scale(self, s: float, delta: list[torch.Tensor]) -> float:
        """θ ← θ_old + s·(θ_new − θ_old); returns the applied displacement ‖θ − θ_old‖ measured in float64."""
        cur = [p.detach() for p in self._params]
        torch._foreach_copy_(cur, self._old)
        if s == 0.0:
            return 0.0
        torch._foreach_add_(cur, delta, alpha=s)
        return self._norm64(self._diff(self._tmp, self._tmp_flat), self._tmp_flat)

    def _decide(self, delta: list[torch.Tensor], tau: float) -> StepCertificate:
        common = dict(step=self._step, mode=self.mode, method=self.method, temperature=self.temperature)
        if tau == 0.0:
            self._cap = None
            return StepCertificate(rho_a=math.inf, step_norm=0.0, applied_norm=0.0, r_proposed=0.0, r_applied=0.0,
                                   scale=1.0, bottleneck=[], n_samples=0, kind="estimate", status="zero_step",
                                   **common)
        res, engine, reason = (None, "", "") if not math.isfinite(tau) else self._radius(delta, tau)
        common.update(engine=engine, fallback_reason=reason)
        if res is None or res.status == "nonfinite":
            self._apply_scale(0.0, delta)  # reject: back to θ_old
            return StepCertificate(rho_a=0.0 if res is None else res.rho_a, step_norm=tau, applied_norm=0.0,
                                   r_proposed=math.inf, r_applied=0.0, scale=0.0,
                                   bottleneck=[] if res is None else list(res.bottleneck),
                                   n_samples=0 if res is None else res.n_samples, kind="estimate",
                                   status="rejected_nonfinite", **common)
        rho = res.rho_a
        r_prop = tau / rho if rho > 0 else math.inf
        if res.status == "unbounded":
            s, status = 1.0, "unbounded"
        elif self.mode == "clip":
            s = min(1.0, _SAFETY * rho / tau)
            status = "clipped" if s < 1.0 else "ok"
        else:
            s, status = self.r_target * rho / tau, "set"
        if s != 1.0:
            applied = self._apply_scale(s, delta)
            if self.mode == "clip" and applied > rho:  # rounding pushed it over: shrink once more
                applied = self._apply_scale(s * _SAFETY * rho / applied, delta)
        else:
            applied = tau
        return StepCertificate(rho_a=rho, step_norm=tau, applied_norm=applied, r_proposed=r_prop,
                               r_applied=applied / rho if math.isfinite(rho) and rho > 0 else 0.0, scale=s,
                               bottleneck=list(res.bottleneck), n_samples=res.n_samples, kind=res.kind,
                               status=status, **common)

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        """Counts and extremes over the recorded steps (JSON-ready)."""
        recs = self.records
        fin = [r.r_applied for r in recs if math.isfinite(r.r_applied)]
        return {"steps": len(recs), "mode": self.mode, "method": self.method,
                "clipped": sum(r.status == "clipped" for r in recs),
                "rejected": sum(r.status == "rejected_nonfinite" for r in recs),
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
    With gradient accumulation only the last micro-batch defines ``ρ_a``.
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
