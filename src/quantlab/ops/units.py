"""The systemd units for an install: `qlab systemd render --user U --home H [--venv V]`.

Both are `Type=notify`: systemd learns readiness, a status line and a
watchdog from the process itself (quantlab/ops/notify.py), and restarts a
process whose main loop stops turning. The worker's unit is a template, one
instance per worker profile: `qlab-worker@jp-1` reads
`/etc/quantlab/workers/jp-1.toml`.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

#: Seconds without WATCHDOG=1 before systemd restarts the process (they send it every half of this).
WATCHDOG_SEC = 30
#: Seconds systemd waits after SIGTERM: above the worker's drain timeout (10 s) plus its drain margin.
TIMEOUT_STOP_SEC = 30

_COMMON_UNIT = """After=network-online.target
Wants=network-online.target
# At most 5 starts in 5 minutes, then systemd stops trying (in [Unit]: that is where it takes effect).
StartLimitIntervalSec=300
StartLimitBurst=5
"""

_COMMON_SERVICE = """Type=notify
NotifyAccess=main
WatchdogSec={watchdog}
User={user}
Environment=QLAB_HOME={home}
UMask=0077
Restart=on-failure
RestartSec=2
KillSignal=SIGTERM
TimeoutStopSec={timeout_stop}
"""

DIRECTOR = """# The director: one leads per store; another one (on another host) waits as standby.
[Unit]
Description=quantlab director
{common_unit}
[Service]
{common_service}ExecStart={qlab} director start

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
ExecStart={qlab} worker start --profile /etc/quantlab/workers/%i.toml
# mixed: SIGTERM goes to the worker alone, which gives every strategy st_exit(worker_exit);
# whatever is left after TimeoutStopSec gets SIGKILL.
KillMode=mixed

[Install]
WantedBy=multi-user.target
"""


class Install(msgspec.Struct, frozen=True):
    user: str = "quantlab"
    home: str = "/var/lib/quantlab"
    venv: str | None = None  #: the virtualenv quantlab is installed in; None: /usr/local/bin/qlab

    @property
    def qlab(self) -> str:
        return f"{self.venv.rstrip('/')}/bin/qlab" if self.venv else "/usr/local/bin/qlab"


def render(install: Install) -> dict[str, str]:
    """File name -> text of each unit."""
    fields = dict(
        qlab=install.qlab,
        common_unit=_COMMON_UNIT,
        common_service=_COMMON_SERVICE.format(
            watchdog=WATCHDOG_SEC, user=install.user, home=install.home, timeout_stop=TIMEOUT_STOP_SEC
        ),
    )
    return {
        "qlab-director.service": DIRECTOR.format(**fields),
        "qlab-worker@.service": WORKER.format(**fields),
    }


def write(install: Install, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(install).items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
