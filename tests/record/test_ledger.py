"""The ledger's hash chain: any edit, removal, reordering or truncation is an error on load."""

import json

import pytest

from unierase.record import ledger
from unierase.storage import UniEraseError


def _write(folder, n=3):
    entries = []
    for i in range(n):
        entries.append(ledger.append(entries, {"kind": "erase", "method": "unierase", "requests": [{"sha256": str(i)}],
                                              "weights_before": f"w{i}", "weights_after": f"w{i + 1}"}))
    (folder / ledger.LEDGER_FILE).write_text(ledger.ledger_text(entries), encoding="utf-8")
    return entries, ledger.head_of(entries)


def test_a_clean_ledger_reads_back(tmp_path):
    entries, head = _write(tmp_path)
    assert ledger.read_ledger(tmp_path, head) == entries
    assert [e["round"] if "round" in e else e["index"] for e in entries] == [0, 1, 2]


@pytest.mark.parametrize("damage,fragment", [
    (lambda lines: lines[:-1], "entries were removed"),
    (lambda lines: [lines[0], lines[2], lines[1]], "index"),
    (lambda lines: [lines[0], lines[2]], "index"),
    (lambda lines: lines[:2] + [lines[2].replace('"unierase"', '"npo+gd"')], "does not match its hash"),
    (lambda lines: lines[:2] + [lines[2][: len(lines[2]) // 2]], "truncated or corrupted"),
])
def test_damage_is_detected(tmp_path, damage, fragment):
    _, head = _write(tmp_path)
    path = tmp_path / ledger.LEDGER_FILE
    lines = path.read_text().splitlines()
    path.write_text("\n".join(damage(lines)) + "\n")
    with pytest.raises(UniEraseError, match=fragment):
        ledger.read_ledger(tmp_path, head)


def test_a_rehashed_forgery_still_breaks_the_chain(tmp_path):
    _, head = _write(tmp_path)
    path = tmp_path / ledger.LEDGER_FILE
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[1]["method"] = "ga+gd"
    lines[1]["hash"] = ledger.entry_hash(lines[1])  # consistent on its own, but entry 2 still names the old hash
    path.write_text("".join(ledger.canonical(e).decode() + "\n" for e in lines))
    with pytest.raises(UniEraseError, match="chain is broken"):
        ledger.read_ledger(tmp_path, head)


def test_cut_mid_line_and_missing_ledger(tmp_path):
    _, head = _write(tmp_path)
    path = tmp_path / ledger.LEDGER_FILE
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(UniEraseError, match="truncated"):
        ledger.read_ledger(tmp_path, head)
    path.unlink()
    with pytest.raises(UniEraseError, match="missing"):
        ledger.read_ledger(tmp_path, head)
    assert ledger.read_ledger(tmp_path, None) == []


def test_reverts_decide_which_rounds_are_in_force():
    entries = []
    for i in range(4):
        entries.append(ledger.append(entries, {"kind": "erase", "round": i + 1}))
    entries.append(ledger.append(entries, {"kind": "revert", "to_round": 2}))
    entries.append(ledger.append(entries, {"kind": "erase", "round": 2}))
    assert [e["index"] for e in ledger.effective_rounds(entries)] == [0, 5]
    status = ledger.round_status(entries)
    assert status[0] == "in force" and status[1].startswith("reverted") and status[3].startswith("reverted")
