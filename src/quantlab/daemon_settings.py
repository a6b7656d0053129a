"""The settings the director's and the worker's options share (their logs, their metrics), declared once.

DirectorOptions (quantlab.director.options) and WorkerOptions
(quantlab.worker.options) give their fields these Settings, so that both
daemons take the same values under the same options and checks.
"""

from __future__ import annotations

from quantlab.numbers import Setting

#: int(MB * 1e6) is the log handler's maxBytes, and 0 of them turns rotation off: at least 1 kB.
LOG_MAX_MB = Setting(help="The log rotates past this size (a worker's strategies' logs too)", unit="MB", at_least=0.001,
                     metavar="MB")
#: RotatingFileHandler never rotates without a backup to rotate into: 0 would let the log grow unbounded.
LOG_KEEP = Setting(help="Rotated log files kept", unit="files", at_least=1, metavar="N")
METRICS_PORT = Setting(help="Serve Prometheus metrics on this port", none="off", at_least=1, at_most=65535,
                       metavar="PORT")
