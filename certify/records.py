"""Certificates as typed, versioned records (pydantic) with a JSON Schema kept in the repository.

A :class:`Certificate` says *what* was certified (``kind`` and ``result``), *about which model*
(``model.sha256`` of the file and ``model.fingerprint`` of the normalized description), *how*
(``method``, ``parameters``, ``solver``, library versions) and *how sure* it is:

* ``status="certified"``: every number labelled as a bound in ``result`` is a proven bound;
* ``status="estimate"``: numbers come from sampling/attacks or heuristics (no guarantee);
* ``status="failed"``: nothing was certified (the reason is in ``notes``).

Soundness guard: a record whose ``result`` holds NaN or Inf can never be ``certified``;
:func:`make_certificate` downgrades it to ``failed`` with a note, and loading such a record back
is a validation error.  ``certificate.schema.json`` (next to this module, under ``schemas/``) is
generated from these models; a test keeps it in sync.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..models.errors import DataLoadError

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "certificate.schema.json"
Status = Literal["certified", "estimate", "failed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolInfo(_Strict):
    name: str = "nncertify"
    version: str
    python: str
    torch: str
    numpy: str
    cvxpy: str | None = None
    platform: str


class ModelRef(_Strict):
    name: str
    path: str | None = None
    format: str | None = None
    sha256: str | None = None
    fingerprint: str | None = Field(None, description="SHA-256 of the normalized description (ops + weights)")
    input_shape: list[int] | None = None
    ops: dict[str, int] | None = None


class Timing(_Strict):
    total_s: float
    details: dict[str, float] = {}


# ----------------------------------------------------------------------------------------- results
class LipschitzResult(_Strict):
    kind: Literal["lipschitz"] = "lipschitz"
    scope: Literal["local", "global"]
    norm: str = Field(description="input norm: 'inf', '2' or '1' (the output is measured in the dual sense "
                                  "of the method, see 'output')")
    output: str = Field("all outputs", description="what is bounded: all outputs, one output, or c^T f")
    upper: float | None = Field(None, description="certified upper bound on the Lipschitz constant")
    lower: float | None = Field(None, description="lower bound from sampling/attacks (an estimate of the truth)")
    exact: bool = False
    center_index: int | None = None
    eps: float | None = None
    by_method: dict[str, float | None] = Field({}, description="bounds of the individual methods compared")
    per_output: list[float] | None = None
    history: list[list[float]] | None = Field(None, description="[time_s, upper, lower] rows of a BaB run")


class SampleVerdict(_Strict):
    index: int
    label: int
    status: Literal["verified", "falsified", "unknown"]
    margin_lower: float | None = None
    certified_radius: float | None = None
    decided_by: str | None = Field(None, description="crown, alpha-crown, bab (branch-and-bound proof), pgd or "
                                                     "bab-attack (counterexample), bab (unknown: budget spent)")
    time_s: float | None = Field(None, description="branch-and-bound time of this sample (method bab)")
    domains: int | None = Field(None, description="branch-and-bound domains visited (method bab)")
    reason: str | None = Field(None, description="why a sample stayed unknown (method bab)")


class RobustnessResult(_Strict):
    kind: Literal["robustness"] = "robustness"
    norm: str
    eps: float
    samples: list[SampleVerdict]
    verified: int
    falsified: int
    unknown: int
    clean_accuracy: float | None = None
    verified_accuracy: float


class StepRadiusResult(_Strict):
    kind: Literal["step_radius"] = "step_radius"
    direction: str
    radius: float | None = Field(None, description="rho_a = pi / max_x Delta_a(x) along the unit direction")
    gradient_norm: float | None = None
    safe_lr_sgd: float | None = Field(None, description="largest SGD learning rate whose step stays inside rho_a")
    bottleneck_index: int | None = None
    per_sample_radius: list[float] | None = None
    trajectory: list[dict[str, float]] | None = Field(None, description="per-step records of a controlled run")


class GameResult(_Strict):
    kind: Literal["game"] = "game"
    players: int
    weights: list[float] | None = None
    margin: float | None = None
    rate: float | None = None
    beta: float | None = None
    euler_step: float | None = None
    rk4_step: float | None = None
    band: list[float] | None = None
    constants: dict[str, Any] = {}
    reason: str | None = None


Result = Annotated[Union[LipschitzResult, RobustnessResult, StepRadiusResult, GameResult],
                   Field(discriminator="kind")]


class Certificate(_Strict):
    """One certificate (or estimate, or failure), with provenance."""

    schema_version: Literal["1.0"] = SCHEMA_VERSION
    status: Status
    method: str
    parameters: dict[str, Any] = {}
    solver: str | None = None
    model: ModelRef | None = None
    result: Result
    timing: Timing
    tool: ToolInfo
    created: str
    notes: list[str] = []

    @model_validator(mode="after")
    def _no_nonfinite_certified(self):
        if self.status == "certified" and _nonfinite(self.result.model_dump()):
            raise ValueError("a certified record cannot contain NaN or Inf")
        return self

    def to_json(self, indent: int | None = 1) -> str:
        return self.model_dump_json(indent=indent)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path


def _nonfinite(obj) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_nonfinite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_nonfinite(v) for v in obj)
    return False


def _dist_version(name: str) -> str | None:
    """An installed distribution's version from its metadata (no import: cvxpy alone takes seconds)."""
    import sys
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__version__", None):
        return str(mod.__version__)
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # a report should not die on it
        return None


def tool_info() -> ToolInfo:
    from . import __version__
    return ToolInfo(version=__version__, python=platform.python_version(), torch=_dist_version("torch") or "unknown",
                    numpy=_dist_version("numpy") or "unknown", cvxpy=_dist_version("cvxpy"),
                    platform=f"{platform.system()} {platform.machine()}")


def model_ref(loaded=None, network=None, name: str | None = None) -> ModelRef:
    """A :class:`ModelRef` for a ``models.LoadedModel`` (or a bare ``Network``)."""
    net = loaded.network if loaded is not None else network
    return ModelRef(name=name or (Path(loaded.path).stem if loaded is not None else net.name),
                    path=loaded.path if loaded is not None else None,
                    format=loaded.format if loaded is not None else None,
                    sha256=loaded.sha256 if loaded is not None else None,
                    fingerprint=net.fingerprint() if net is not None else None,
                    input_shape=list(net.input_shape) if net is not None else None,
                    ops=net.op_counts() if net is not None else None)


def _clean(obj):
    """Replace non-finite floats by None (JSON has no NaN) and numpy/torch scalars by floats."""
    if hasattr(obj, "item") and not isinstance(obj, (list, dict, str)):
        try:
            obj = obj.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def make_certificate(*, status: Status, method: str, result: dict | BaseModel, model: ModelRef | None = None,
                     parameters: dict | None = None, solver: str | None = None, total_s: float = 0.0,
                     details: dict | None = None, notes: list[str] | None = None) -> Certificate:
    """Build a record; a ``certified`` result holding NaN/Inf is downgraded to ``failed``."""
    raw = result.model_dump() if isinstance(result, BaseModel) else dict(result)
    notes = list(notes or [])
    if status == "certified" and _nonfinite(raw):
        status = "failed"
        notes.append("a bound was NaN or Inf: nothing is certified")
    return Certificate(status=status, method=method, parameters=_clean(parameters or {}), solver=solver,
                       model=model, result=_clean(raw), timing=Timing(total_s=float(total_s),
                                                                       details=_clean(details or {})),
                       tool=tool_info(), created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       notes=notes)


def load_certificate(path: str | Path) -> Certificate:
    """Read a certificate back; validates it against the record types (and thus the schema)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataLoadError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataLoadError(f"{path}: not a JSON certificate ({exc})") from None
    try:
        return Certificate.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DataLoadError(f"{path}: invalid certificate at {where or 'top level'}: {first['msg']}") from None


def json_schema() -> dict:
    schema = Certificate.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://nncertify.invalid/certificate-{SCHEMA_VERSION}.schema.json"
    return schema


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_schema(), indent=1, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":  # python -m certify.records  -> regenerate the committed schema
    print(write_schema())
