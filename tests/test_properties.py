"""Property-based tests: the request parser on arbitrary bytes, the closed-form solver on random shapes."""

import json

import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from unierase.edit.solve import alphaedit_update, alphaedit_update_in_basis, memit_update
from unierase.requests import load_requests
from unierase.storage import UniEraseError

_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _parse(tmp_path, data: bytes):
    path = tmp_path / "r.jsonl"
    path.write_bytes(data)
    try:
        return load_requests(path)
    except UniEraseError as err:  # the only way it may fail: one line naming the file
        assert str(path) in str(err) and "\n" not in str(err)
        return None


@_settings
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_parse_or_fail_cleanly(tmp_path, data):
    _parse(tmp_path, data)


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)


@_settings
@given(questions=st.lists(_text.filter(str.strip), min_size=1, max_size=5), bom=st.booleans(),
       newline=st.sampled_from(["\n", "\r\n", "\r"]), encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
       extra=st.dictionaries(st.sampled_from(["colour", "id", "answer"]), _text, max_size=2))
def test_valid_files_in_any_line_ending_and_encoding(tmp_path, questions, bom, newline, encoding, extra):
    text = newline.join(json.dumps({"question": q, **extra}, ensure_ascii=encoding != "utf-8") for q in questions) + newline
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        assume(False)
    if bom and encoding == "utf-8":
        data = b"\xef\xbb\xbf" + data
    parsed = _parse(tmp_path, data)
    if encoding == "utf-16":  # not UTF-8: refused with a clear message
        assert parsed is None
    elif encoding == "utf-8" or all(q.isascii() for q in questions):
        assert parsed is not None and [r.question for r in parsed] == questions


@_settings
@given(length=st.integers(1, 300_000))
def test_huge_lines(tmp_path, length):
    parsed = _parse(tmp_path, json.dumps({"question": "x" * length}).encode())
    assert (parsed is not None) == (length <= 20_000)


def _orthonormal(m, r, g):
    q, _ = torch.linalg.qr(torch.randn(m, max(r, 1), generator=g, dtype=torch.float64))
    return q[:, :r]


@settings(max_examples=40, deadline=None)
@given(m=st.integers(2, 24), d=st.integers(1, 12), n=st.integers(1, 10), r_frac=st.floats(0.1, 1.0),
       log_key=st.floats(-3, 3), log_ridge=st.floats(-8, 1), with_previous=st.booleans(), seed=st.integers(0, 2**16))
def test_solver_over_shapes_and_conditioning(m, d, n, r_frac, log_key, log_ridge, with_previous, seed):
    g = torch.Generator().manual_seed(seed)
    r = max(1, int(m * r_frac))
    keys = torch.randn(m, n, generator=g, dtype=torch.float64) * 10 ** log_key
    residuals = torch.randn(d, n, generator=g, dtype=torch.float64)
    basis = _orthonormal(m, r, g)
    projector = basis @ basis.T
    ridge = 10 ** log_ridge * float(keys.pow(2).sum(0).mean())
    previous = None
    if with_previous:
        kp = torch.randn(m, 3, generator=g, dtype=torch.float64)
        previous = kp @ kp.T
    delta = alphaedit_update(keys, residuals, projector, previous, ridge)
    fast = alphaedit_update_in_basis(keys, residuals, basis, basis.T @ previous @ basis if previous is not None else None, ridge)
    assert delta.shape == (d, m) and torch.isfinite(delta).all() and torch.isfinite(fast).all()
    # both forms give the same update (to within the m × m system's conditioning), which never acts
    # outside the free subspace
    cond = (float(torch.linalg.matrix_norm(keys @ keys.T, 2)) + (float(torch.linalg.matrix_norm(previous, 2)) if previous
                                                                 is not None else 0.0) + ridge) / ridge
    assert float((delta - fast).norm()) <= (1e-9 + 1e-13 * cond) * float(delta.norm()) + 1e-300
    outside = torch.eye(m, dtype=torch.float64) - projector
    assert float((fast @ outside).abs().max()) <= 1e-9 * max(float(fast.abs().max()), 1e-300) + 1e-12
    covariance = torch.eye(m, dtype=torch.float64)
    plain = memit_update(keys, residuals, covariance, 10 ** log_ridge, previous)
    assert torch.isfinite(plain).all()
