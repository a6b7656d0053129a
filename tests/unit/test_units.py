"""The units' store file: the URL as systemd's EnvironmentFile parser reads it, private, and never in a unit."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from quantlab.errors import BadInput
from quantlab.ops.units import Install, render, write_store_env


@pytest.mark.parametrize("url, line", [
    ("postgresql://qlab:p%40ss@db.internal:5432/qlab?sslmode=require",
     "QLAB_STORE=postgresql://qlab:p%40ss@db.internal:5432/qlab?sslmode=require"),
    ('postgresql://qlab:a$b"c\\d@db/qlab', 'QLAB_STORE="postgresql://qlab:a\\$b\\"c\\\\d@db/qlab"'),
    ("postgresql://qlab@db/qlab#x", 'QLAB_STORE="postgresql://qlab@db/qlab#x"'),
])
def test_the_store_file_holds_the_url_as_systemd_reads_it(tmp_path: Path, url: str, line: str) -> None:
    path = write_store_env(tmp_path / "etc" / "store.env", url + "\n", "nobody")
    assert path.read_text() == line + "\n"
    assert path.stat().st_mode & 0o777 == 0o600
    if os.geteuid() == 0:  # rendered as root: the service user owns it, as it owns the home
        assert path.stat().st_uid == pwd.getpwnam("nobody").pw_uid


def test_an_existing_open_store_file_becomes_private(tmp_path: Path) -> None:
    path = tmp_path / "store.env"
    path.write_text("old")
    path.chmod(0o644)
    write_store_env(path, "postgresql://qlab@db/qlab", "nobody")
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("url", ["", "  \n", "postgresql://a\npostgresql://b"])
def test_no_url_or_two_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(BadInput, match="--store"):
        write_store_env(tmp_path / "store.env", url, "nobody")
    assert not (tmp_path / "store.env").exists()


def test_units_name_the_file_not_the_url() -> None:
    for text in render(Install(env_file="/etc/quantlab/store.env")).values():
        assert "EnvironmentFile=/etc/quantlab/store.env\n" in text and "postgresql" not in text
    assert all("QLAB_STORE" not in text and "EnvironmentFile=/etc/quantlab/store.env" not in text
               for text in render(Install()).values())
