"""The systemd units for an install: `qlab systemd render --user U --home H [--venv V]`.

Both are `Type=notify`: systemd learns readiness, a status line and a
watchdog from the process itself (quantlab/ops/notify.py), and restarts a
process whose main loop stops turning. The worker's unit is a template, one
instance per worker profile: `qlab-worker@jp-1` reads
`/etc/quantlab/workers/jp-1.toml`.

The units are sandboxed (`systemd-analyze security` rates them below 4.0,
tests/integration/test_systemd.py): the processes write only their home and a
private /tmp, see home directories read-only (a strategy file or a virtualenv may
live there), and hold no capability; with `--strategy-uids`, the worker alone
holds the three its strategies' own uids take (quantlab/worker/strategyuids.py).
A store URL, which may carry a password,
goes in an `EnvironmentFile` only root and the service user read, never on a
command line, where every user sees it in /proc/PID/cmdline.
"""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

import msgspec

from quantlab.errors import BadInput

#: Seconds without WATCHDOG=1 before systemd restarts the process (they send it every half of this).
WATCHDOG_SEC = 30
#: Seconds systemd waits after SIGTERM: above the worker's drain timeout (10 s) plus its drain margin.
TIMEOUT_STOP_SEC = 30
#: Where `--store URL` is written when no `--env-file` is given.
STORE_ENV_FILE = "/etc/quantlab/store.env"

_COMMON_UNIT = """After=network-online.target
Wants=network-online.target
# At most 5 starts in 5 minutes, then systemd stops trying (in [Unit]: that is where it takes effect).
StartLimitIntervalSec=300
StartLimitBurst=5
"""

# always, not on-failure: a worker that exits 0 (a stray SIGTERM, a strategy signalling its
# process group) must come back as surely as one that crashed.
_COMMON_SERVICE = """Type=notify
NotifyAccess=main
WatchdogSec={watchdog}
User={user}
Environment=QLAB_HOME={home}
{store_env}UMask=0077
Restart=always
RestartSec=2
KillSignal=SIGTERM
TimeoutStopSec={timeout_stop}
"""

# The sandbox. Strategies fork from a zygote, talk over ipc:// sockets under /tmp (the private
# one here) and may run Node, whose JIT needs writable executable memory: the worker gets no
# MemoryDenyWriteExecute. ProtectHome=read-only rather than yes: the home, a virtualenv or a
# strategy file may be under /home or /root, and ReadWritePaths opens the home for writing.
_SANDBOX = """ProtectSystem=strict
ReadWritePaths={home}
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectProc={protect_proc}
NoNewPrivileges=yes
CapabilityBoundingSet={capabilities}
AmbientCapabilities={capabilities}
RestrictSUIDSGID=yes
LockPersonality=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces={namespaces}
RestrictRealtime=yes
# AF_NETLINK: glibc's getaddrinfo asks the kernel for the host's addresses through it when a caller
# passes AI_ADDRCONFIG; refused, that lookup fails.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
"""

DIRECTOR = """# The director: one leads per store; another one (on another host) waits as standby.
[Unit]
Description=quantlab director
{common_unit}
[Service]
{common_service}ExecStart={qlab} director start
{sandbox}# The director runs no strategy code, so no JIT needs writable executable memory.
MemoryDenyWriteExecute=yes

[Install]
WantedBy=multi-user.target
"""

WORKER = """# One worker per instance name: qlab-worker@jp-1 reads /etc/quantlab/workers/jp-1.toml.
# Secrets: `NAME=...` lines in /etc/quantlab/%i.env (mode 0600), named by "api_secret_env" in
# env.jsonl; the worker keeps them from what its strategies inherit.
[Unit]
Description=quantlab worker %i
{common_unit}
[Service]
{common_service}EnvironmentFile=-/etc/quantlab/%i.env
ExecStart={qlab} worker start --profile /etc/quantlab/workers/%i.toml{worker_args}
# mixed: SIGTERM goes to the worker alone, which gives every strategy st_exit(worker_exit);
# whatever is left after TimeoutStopSec gets SIGKILL.
KillMode=mixed
{sandbox}# The strategies' own sandbox (quantlab/worker/sandbox.py) takes Landlock's three calls, which
# @system-service does not hold (systemd 252): refused, every strategy would run without it. Each
# child's lock-down (quantlab/worker/procs.py) empties its capabilities with capset, which
# ~@privileged refuses. A child mounts its own /proc in its PID namespace, which @system-service
# does not hold (where the service's own /proc is partly hidden the kernel refuses it anyway).
SystemCallFilter=landlock_create_ruleset landlock_add_rule landlock_restrict_self capset mount
{uid_calls}
[Install]
WantedBy=multi-user.target
"""

#: What a worker with --strategy-uids holds: switching its children's uids, and signalling them.
UID_CAPABILITIES = "CAP_SETUID CAP_SETGID CAP_KILL"
# ProtectProc=default: processes of other users are hidden from a service under "invisible", and
# the worker reads its children's /proc (their memory and CPU, their descendants when it ends them).
_UID_SANDBOX = {"capabilities": UID_CAPABILITIES, "protect_proc": "default"}
_NO_UID_SANDBOX = {"capabilities": "", "protect_proc": "invisible"}
# The worker makes each strategy child a PID namespace of its own (quantlab/worker/pidns.py): without
# CAP_SYS_ADMIN, inside a user namespace of the child's uid. Every other kind stays refused, and the
# children's own seccomp filter refuses them all.
_WORKER_NAMESPACES = "user pid mnt"
# ~@privileged refuses the calls that switch uids, which each strategy child makes before its lock-down.
_UID_CALLS = "SystemCallFilter=@setuid\n"

#: A value systemd's EnvironmentFile parser takes as it is, without quotes.
_PLAIN = re.compile(r"[A-Za-z0-9_.~:/?\[\]@!&()*+,=%-]+")


class Install(msgspec.Struct, frozen=True):
    user: str = "quantlab"
    home: str = "/var/lib/quantlab"
    venv: str | None = None  #: the virtualenv quantlab is installed in; None: /usr/local/bin/qlab
    env_file: str | None = None  #: an EnvironmentFile with QLAB_STORE=...; None: the home's file store
    strategy_uids: str | None = None  #: the worker's --strategy-uids FIRST-LAST; None: strategies run as ``user``

    @property
    def qlab(self) -> str:
        return f"{self.venv.rstrip('/')}/bin/qlab" if self.venv else "/usr/local/bin/qlab"


def render(install: Install) -> dict[str, str]:
    """File name -> text of each unit."""
    store_env = f"EnvironmentFile={install.env_file}\n" if install.env_file else ""
    fields = dict(
        qlab=install.qlab,
        common_unit=_COMMON_UNIT,
        common_service=_COMMON_SERVICE.format(watchdog=WATCHDOG_SEC, user=install.user, home=install.home,
                                              store_env=store_env, timeout_stop=TIMEOUT_STOP_SEC),
    )
    uids = install.strategy_uids
    worker = dict(fields, sandbox=_SANDBOX.format(home=install.home, namespaces=_WORKER_NAMESPACES,
                                                  **(_UID_SANDBOX if uids else _NO_UID_SANDBOX)),
                  worker_args=f" --strategy-uids {uids}" if uids else "", uid_calls=_UID_CALLS if uids else "")
    return {
        "qlab-director.service": DIRECTOR.format(
            **fields, sandbox=_SANDBOX.format(home=install.home, namespaces="yes", **_NO_UID_SANDBOX)),
        "qlab-worker@.service": WORKER.format(**worker),
    }


def write(install: Install, folder: Path) -> list[Path]:
    """Write the units, 0644 like every unit systemd ships: they hold nothing secret."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(install).items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
        written.append(path)
    return written


def write_store_env(path: Path, url: str, user: str) -> Path:
    """Write ``QLAB_STORE=url`` to ``path``, 0600, owned by ``user`` when we may give it away (as root)."""
    url = url.strip()  # the line's end, when read from stdin
    if not url or "\n" in url or "\r" in url:
        raise BadInput("--store: give one URL on one line, e.g. postgresql://qlab@db.internal/qlab")
    owner = _ids(user) if os.geteuid() == 0 else None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        f.write(f"QLAB_STORE={_env_value(url)}\n")
    if owner is not None:
        os.chown(path, *owner)
    return path


def _env_value(value: str) -> str:
    if _PLAIN.fullmatch(value):
        return value
    escaped = re.sub(r'([\\"`$])', r"\\\1", value)
    return f'"{escaped}"'


def _ids(user: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise BadInput(f"--user {user}: no such user on this host (create it first: useradd --system {user})") from None
    return entry.pw_uid, entry.pw_gid
