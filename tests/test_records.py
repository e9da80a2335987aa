"""Certificate records: versioned schema in the repo, validation on load, NaN never certified."""

import json

import jsonschema
import pytest

from nncertify.certify.records import (SCHEMA_PATH, Certificate, LipschitzResult, RobustnessResult, SampleVerdict, json_schema,
                             load_certificate, make_certificate)
from nncertify.models.errors import DataLoadError


def test_committed_schema_matches_the_models():
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed == json.loads(json.dumps(json_schema(), sort_keys=True)), \
        "regenerate with: python -m certify.records"


def test_round_trip_and_schema_validation(tmp_path):
    res = RobustnessResult(norm="inf", eps=0.01, samples=[SampleVerdict(index=0, label=3, status="verified",
                                                                        margin_lower=0.5, certified_radius=0.02)],
                           verified=1, falsified=0, unknown=0, verified_accuracy=1.0)
    c = make_certificate(status="certified", method="robustness/crown", result=res, total_s=0.1)
    p = c.save(tmp_path / "c.json")
    data = json.loads(p.read_text())
    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text()))
    back = load_certificate(p)
    assert back == c
    assert back.tool.torch and back.schema_version == "1.0"


def test_nan_is_never_certified(tmp_path):
    c = make_certificate(status="certified", method="x", result=LipschitzResult(scope="global", norm="2",
                                                                                 upper=float("inf")))
    assert c.status == "failed" and c.result.upper is None and "NaN or Inf" in c.notes[0]
    # a tampered file claiming a certified NaN is rejected
    ok = make_certificate(status="certified", method="x", result=LipschitzResult(scope="global", norm="2", upper=1.0))
    data = json.loads(ok.to_json())
    data["result"]["upper"] = float("nan")
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(DataLoadError, match="NaN or Inf"):
        load_certificate(tmp_path / "bad.json")


def test_invalid_certificates_are_rejected_with_the_field(tmp_path):
    ok = make_certificate(status="estimate", method="x", result=LipschitzResult(scope="local", norm="inf", lower=2.0))
    data = json.loads(ok.to_json())
    data["status"] = "probably"
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(DataLoadError, match="status"):
        load_certificate(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("{")
    with pytest.raises(DataLoadError, match="not a JSON certificate"):
        load_certificate(tmp_path / "b.json")
    data = json.loads(ok.to_json())
    data["result"]["kind"] = "telepathy"
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(DataLoadError, match="result"):
        load_certificate(tmp_path / "c.json")
