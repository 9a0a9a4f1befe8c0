"""Dataset audit: duplicates, split leakage and shortcut features. No TensorFlow.

`quick_leak_check(root)` is what training calls first; `run_audit(root)` is the full report
behind `edge-toolkit audit DATA`. Only numpy, Pillow and click are needed (a Raspberry Pi runs it).
"""

from edge_toolkit.audit.leakage import LeakSummary, SplitLeak, quick_leak_check
from edge_toolkit.audit.report import AuditReport, format_text, run_audit

__all__ = ["AuditReport", "LeakSummary", "SplitLeak", "format_text", "quick_leak_check",
           "run_audit"]
