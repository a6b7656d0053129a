"""Where things live under the home directory, and the defaults."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

DEFAULT_HOME = Path.home() / ".local" / "state" / "quantlab"

#: The source checkout (this file is src/quantlab/config.py in it), whose etc/env.jsonl is the
#: accounts' last resort; an installed package has no etc/ there.
REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    """--home, else $QLAB_HOME, else ~/.local/state/quantlab."""
    chosen = home or os.environ.get("QLAB_HOME") or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


class Paths(msgspec.Struct, frozen=True):
    """The layout of one home directory."""

    home: Path
    #: The store's URL (--store, $QLAB_STORE): "" for the file store under the home, or postgresql://...
    store_url: str = ""
    #: The host name this process records and acts as (--host, $QLAB_HOST): "" for the machine's own.
    #: Several names on one machine simulate several hosts sharing one store.
    host: str = ""

    @property
    def host_name(self) -> str:
        # The kernel's host name, as socket.gethostname() returns it, without importing socket:
        # every command loads this module, few need the name, and socket costs each an import.
        return self.host or os.uname().nodename

    @property
    def store(self) -> Path:
        return self.home / "store"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def etc(self) -> Path:
        return self.home / "etc"

    def strategy_log(self, strategy_id: str) -> Path:
        return self.logs / "strategies" / f"{strategy_id}.log"

    def worker_log(self, worker_id: str) -> Path:
        return self.logs / f"worker-{worker_id}.log"

    def worker_children(self, worker_id: str) -> Path:
        """The worker's list of its strategy children (quantlab/worker/family.py)."""
        return self.home / "run" / f"worker-{worker_id}.children"

    def director_log(self) -> Path:
        return self.logs / "director.log"

    def accounts_file(self) -> Path:
        """etc/env.jsonl under the home, else the repository's."""
        for candidate in (self.etc / "env.jsonl", REPO_ROOT / "etc" / "env.jsonl"):
            if candidate.exists():
                return candidate
        return self.etc / "env.jsonl"
