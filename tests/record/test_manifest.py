"""One manifest schema for every writer: a versioned header and the method's own record."""

import json

import pytest

from unierase import __version__
from unierase.record.manifest import SCHEMA_VERSION, Manifest
from unierase.record.rounds import MANIFEST_FILE, read_manifest
from unierase.storage import UniEraseError


def test_header_and_record_round_trip():
    m = Manifest("npo+gd", {"spec": "target/", "fingerprint": "abc"}, {"hyperparameters": {"lr": 1e-4}},
                 base_history={"method": "finetune"})
    data = m.to_dict()
    assert (data["schema"], data["method"], data["unierase_version"]) == (SCHEMA_VERSION, "npo+gd", __version__)
    assert data["hyperparameters"] == {"lr": 1e-4} and data["base_history"] == {"method": "finetune"}
    assert Manifest.from_dict(json.loads(json.dumps(data))) == m


def test_a_record_cannot_overwrite_the_header():
    with pytest.raises(UniEraseError, match="header"):
        Manifest("finetune", {}, {"method": "other"})


def test_a_manifest_from_before_the_schema_is_read(tmp_path):
    """Schema 0 baselines wrote 'version', the spec alone as 'base_model' and 'previous'."""
    old = {"method": "ga+gd", "version": "0.0.9", "base_model": "default", "previous": {"method": "finetune"},
           "hyperparameters": {}}
    m = Manifest.from_dict(old)
    assert (m.schema, m.unierase_version, m.base_model, m.base_history) == (0, "0.0.9", {"spec": "default"},
                                                                           {"method": "finetune"})
    assert "version" not in m.record and "previous" not in m.record


def test_a_newer_schema_names_the_file_and_the_field(tmp_path):
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"schema": SCHEMA_VERSION + 1, "method": "unierase", "rounds": []}))
    with pytest.raises(UniEraseError) as err:
        read_manifest(tmp_path)
    assert MANIFEST_FILE in str(err.value) and "'schema'" in str(err.value)
