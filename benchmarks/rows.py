"""Results files that gather one row a run (``{"description": …, "rows": [...]}``), shared by the
scripts that write them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def repo_commit() -> str | None:
    """The repository's short commit (asked in the repository, wherever the script runs from); ``None``
    where there is none to ask (a copy without ``.git``, no git installed)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        return None


def append_row(path, description: str, row: dict, **fields) -> None:
    """Append ``row`` to the results file at ``path`` (created with ``description`` when missing) and
    set its top-level ``fields``, written atomically."""
    from unierase.storage import write_json_atomic

    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {"description": description, "rows": []}
    data.update(fields)
    data["rows"].append(row)
    write_json_atomic(path, data)
