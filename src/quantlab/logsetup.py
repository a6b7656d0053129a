"""Logging for the long-running processes: a file under the home that rotates by size, and stderr.

Under systemd, stderr goes to journald. ``json`` writes one object a line
(ts, level, logger, message, and the traceback when there is one) for log
shippers.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Literal

import msgspec

from quantlab.files import private_dir

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LogFormat = Literal["text", "json"]

#: Default size of one log file before it rotates, and how many rotated files are kept.
MAX_MB = 10.0
KEEP = 5


class LogSettings(msgspec.Struct, frozen=True, kw_only=True):
    format: LogFormat = "text"
    max_mb: float = MAX_MB  #: a log file rotates past this size
    keep: int = KEEP  #: rotated files kept (name.1 ... name.KEEP)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": record.created, "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


def rotating_handler(path: Path, settings: LogSettings) -> logging.handlers.RotatingFileHandler:
    private_dir(path.parent)
    return logging.handlers.RotatingFileHandler(
        path, maxBytes=int(settings.max_mb * 1_000_000), backupCount=settings.keep, encoding="utf-8"
    )


def process_logger(name: str, path: Path, settings: LogSettings = LogSettings(), *, to_stderr: bool = True) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handlers: list[logging.Handler] = [rotating_handler(path, settings)]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = JsonFormatter() if settings.format == "json" else logging.Formatter(FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    # pybit attaches its own stream handler when the root logger has none; give it one that stays quiet.
    logging.getLogger().addHandler(logging.NullHandler())
    return logger
