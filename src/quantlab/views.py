"""What `qlab` prints: JSON, rich tables and event lines, built from quantlab.fleet's views.

The tables show the same dicts that ``--json`` prints, so the two never disagree.
"""

from __future__ import annotations

import collections
import sys
import time
from typing import TYPE_CHECKING, Any, Iterable

import msgspec

from quantlab.store.records import Event

if TYPE_CHECKING:  # rich is imported by the functions that draw: `--json` never loads it
    from rich.console import Console, Group, RenderableType
    from rich.table import Table
    from rich.text import Text

Entry = dict[str, Any]


def to_json(value: Any) -> str:
    """Indented, with sorted keys, so the output of two runs diffs cleanly (msgspec: fast at 10,000 entries)."""
    return msgspec.json.format(msgspec.json.encode(value, order="sorted"), indent=2).decode()


def console() -> Console:
    from rich.console import Console

    # Piped output: no colour (rich decides from the TTY) and no wrapping inside cells. No emoji
    # codes: the only strings drawn are the tables' own titles and headings (every value is a
    # Text), and looking for codes in them would load rich's table of emoji, for nothing.
    return Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 200)


def age(ts: float | None, now: float) -> str:
    """How long ago ``ts`` was, as "0.4s ago", "3m ago"; "-" for never."""
    if not ts:
        return "-"
    seconds = max(0.0, now - ts)  # a clock a little ahead elsewhere is not "in the future"
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return "-"


def short(text: str, width: int = 60) -> str:
    """The first line of ``text``, cut to ``width``: a traceback belongs in `logs`, not a table."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= width else first[: width - 3] + "..."


def _table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(*columns, title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for row in rows:
        # Text, not str: a reason like "[x]" must not be read as rich markup.
        table.add_row(*(Text("-" if cell is None else str(cell)) for cell in row))
    return table


def _status(entry: Entry) -> str:
    stopping = entry["desired"] == "stopped" and entry["status"] not in ("stopped", "failed")
    return f"{entry['status']} (stop requested)" if stopping else str(entry["status"])


def _why(entry: Entry) -> str:
    error = entry["last_error"]
    if entry["status"] in ("error", "failed") and error:
        return short(error["message"])
    return short(entry["reason"])


#: How a strategy row stands out: failed and pending need a person.
_ROW_STYLE = {"failed": "bold red", "error": "red", "pending": "yellow"}


def strategies_table(entries: list[Entry], now: float) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    columns = ("id", "status", "worker", "pid", "uptime", "cpu", "memory", "beats", "last beat", "restarts", "errors",
               "reason")
    table = Table(*columns, title="strategies", title_justify="left", box=box.SIMPLE_HEAD)
    for e in entries:
        cpu, memory = e.get("cpu"), e.get("memory")
        cells = (e["id"], _status(e), e["worker"], e["pid"], uptime(e.get("uptime")),
                 None if cpu is None else f"{cpu:.0f}%", None if memory is None else f"{memory:.1f} MiB",
                 e["heartbeats"], age(e["last_heartbeat"], now), e["restarts"], e["error_count"], _why(e))
        # Text, not str: a reason like "[x]" must not be read as rich markup.
        table.add_row(*(Text("-" if c is None else str(c)) for c in cells), style=_ROW_STYLE.get(str(e["status"])))
    return table


def workers_table(entries: list[Entry], now: float) -> Table:
    columns = ("id", "region", "host", "pid", "status", "lease", "strategies", "cpu", "memory", "last seen", "sandbox")
    rows = (
        (
            e["id"],
            e["region"],
            e["host"],
            e["pid"],
            e["status"],
            "live" if e["alive"] else "expired",
            f"{e['load']['running_strategies']}/{e['max_strategies']}",
            f"{e['load']['cpu']:.0f}%",
            f"{e['load']['memory']:.0f} MiB",
            age(e["last_seen"], now),
            e.get("sandbox") or "none",
        )
        for e in entries
    )
    return _table("workers", columns, rows)


def directors_table(entries: list[Entry], now: float) -> Table:
    rows = ((e["id"], e["host"], e["pid"], e["role"], age(e["last_seen"], now)) for e in entries)
    return _table("directors", ("id", "host", "pid", "role", "last seen"), rows)


def summary(snapshot: dict[str, Any]) -> str:
    """One line: directors, workers live/total, strategies by status."""
    directors = snapshot["directors"]
    leader = snapshot.get("leader")
    # A director's record keeps role "leader" after it was killed: only a live lease leads.
    leading = sum(1 for d in directors if d["role"] == "leader" and leader is not None and leader["live"]
                  and leader["director"] == d["id"])
    lost = sum(1 for d in directors if d["role"] == "leader") - leading
    workers = snapshot["workers"]
    live = sum(1 for w in workers if w["alive"])
    counts = collections.Counter(str(e["status"]) for e in snapshot["strategies"])
    by_status = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"
    lost_text = f" ({lost} lost its lease)" if lost == 1 else f" ({lost} lost their lease)" if lost else ""
    return (f"directors: {leading} leading{lost_text}, {len(directors) - leading - lost} standby | "
            f"workers: {live}/{len(workers)} live | strategies: {by_status}")


def halt_lines(snapshot: dict[str, Any], now: float) -> list[Text]:
    """One bold red line per halt in force: the kill switch must be impossible to miss."""
    from rich.text import Text

    lines = []
    for entry in snapshot.get("halts", []):
        what = "all" if entry["scope"] == "all" else f"{entry['scope']} {entry['target']}"
        why = entry["problem"] or f"since {age(entry['ts'], now)}" + (", cancel orders" if entry["cancel_orders"] else "")
        lines.append(Text(f"HALTED: {what} ({why}): nothing that opens exposure is sent", style="bold red"))
    return lines


def status_view(snapshot: dict[str, Any], now: float) -> Group:
    """The summary line, then only the tables that have rows; failed and pending stand out."""
    from rich.console import Group
    from rich.text import Text

    parts: list[RenderableType] = [Text(summary(snapshot), style="bold"), *halt_lines(snapshot, now)]
    if snapshot["directors"]:
        parts.append(directors_table(snapshot["directors"], now))
    if snapshot["workers"]:
        parts.append(workers_table(snapshot["workers"], now))
    if snapshot["strategies"]:
        parts.append(strategies_table(snapshot["strategies"], now))
    return Group(*parts)


def event_line(event: Event, as_json: bool) -> str:
    """One event as a JSON line, or as "time  kind  strategy=.. worker=..  detail"."""
    if as_json:
        import json  # only `events --json` prints this way (its lines keep json's spacing)

        return json.dumps(msgspec.to_builtins(event), sort_keys=True)
    millis = int(event.ts % 1 * 1000)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.ts)) + f".{millis:03d}"
    about = " ".join(f"{k}={v}" for k, v in (("strategy", event.strategy), ("worker", event.worker)) if v)
    return "  ".join(part for part in (stamp, event.kind, about, event.detail) if part)


def uptime(seconds: float | None) -> str:
    """Seconds as "3d 4h", "2h 5m", "4m 10s" or "12s"; "-" for None (it does not run)."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _stamp(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _usage(entry: Entry) -> str:
    """Its child's CPU and memory as its worker measured them, "-" before the first measurement."""
    cpu, memory = entry["cpu"], entry["memory"]
    if cpu is None and memory is None:
        return "-"
    return (f"{'-' if cpu is None else f'{cpu:.0f}%'} of a core, "
            f"{'-' if memory is None else f'{memory:.1f} MiB'} (proportional set size)")


def _pairs(values: Entry) -> str:
    return "  ".join(f"{k}={'-' if v is None else v}" for k, v in values.items()) or "-"


def strategy_details(entry: Entry, now: float) -> list[str]:
    """quantlab.details.describe's dict for a person: one field a line, then the last error and the recent events."""
    stopping = " (stop requested)" if entry["desired"] == "stopped" and entry["status"] not in ("stopped", "failed") else ""
    where = "-"
    if entry["worker"]:
        where = f"{entry['worker']} on host {entry['host'] or '(unknown: its worker is gone)'}"
    log = entry["log"] + ("" if entry["log_here"] else "  (not on this host)")
    since = f"{entry['status']} since {_stamp(entry['since'])}" if entry["since"] else "-"
    out = [
        f"{entry['id']}: {entry['status']}{stopping}" + (f": {entry['reason']}" if entry["reason"] else ""),
        f"  file         {entry['file']}",
        f"  worker       {where}",
        f"  pid          {entry['pid'] or '-'}",
        f"  uptime       {uptime(entry['uptime'])}  ({since})",
        f"  usage        {_usage(entry)}",
        f"  log          {log}",
        f"  heartbeats   {entry['heartbeats']} (last {age(entry['last_heartbeat'], now)}), "
        f"restarts {entry['restarts']}, errors {entry['error_count']}",
        f"  params       {entry['params'] or '-'}",
        f"  accounts     {', '.join(entry['accounts']) or '-'}",
        f"  placement    {_pairs({k: v for k, v in entry['placement'].items() if v is not None}) or 'anywhere'}",
        f"  settings     {_pairs(entry['settings'])}",
        f"  risk limits  {_pairs(entry['risk_limits'])}",
    ]
    error = entry["last_error"]
    if error:
        out.append(f"  last error   {_stamp(error['ts'])}  {error['message']}")
        out.extend(f"               {line}" for line in error["traceback"].splitlines())
    else:
        out.append("  last error   -")
    out.append("recent events:" if entry["events"] else "recent events: none")
    out.extend("  " + event_line(msgspec.convert(e, Event), False) for e in entry["events"])
    return out
