"""unierase: make a language model forget specific facts, precisely and quickly.

The public API mirrors the command line: ``forget``, ``ask``, ``audit``, ``history``, ``verify``, ``revert``, ``run_demo``
and ``evaluate``.
"""

__version__ = "0.1.0"

from .api import ForgetResult, ask, forget  # noqa: E402
from .trail import history, revert, verify  # noqa: E402
from .audit import AuditConfig, audit  # noqa: E402
from .requests import ForgetRequest, load_requests  # noqa: E402
from .storage import UniEraseError  # noqa: E402

__all__ = ["__version__", "AuditConfig", "ForgetResult", "ForgetRequest", "UniEraseError", "ask", "audit", "forget", "history", "load_requests",
           "revert", "verify"]
