"""unierase: make a language model forget specific facts, precisely and quickly.

The public API mirrors the command line: ``forget``, ``ask``, ``audit``, ``history``, ``verify``, ``revert``, ``run_demo``
and ``evaluate``.
"""

from ._version import __version__
from .api import ForgetResult, ask, forget
from .audit import AuditConfig, audit
from .record.trail import history, revert, verify
from .requests import ForgetRequest, load_requests
from .storage import UniEraseError

__all__ = ["__version__", "AuditConfig", "ForgetResult", "ForgetRequest", "UniEraseError", "ask", "audit", "forget", "history", "load_requests",
           "revert", "verify"]
