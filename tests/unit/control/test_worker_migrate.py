"""requests_migrate: what a worker's death does to the connections queued for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from vproxy.control.workers import MIGRATE_REQ_PATH, requests_migrate


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0\n", False), ("1\n", True), ("2", True), ("", False), ("x\n", None)],
)
def test_reads_the_setting(tmp_path: Path, text: str, expected: bool | None) -> None:
    f = tmp_path / "tcp_migrate_req"
    f.write_text(text)
    assert requests_migrate(str(f)) is expected


def test_no_setting_means_unknown(tmp_path: Path) -> None:
    assert requests_migrate(str(tmp_path / "missing")) is None


def test_this_machine() -> None:
    got = requests_migrate()
    if Path(MIGRATE_REQ_PATH).exists():
        assert got is (Path(MIGRATE_REQ_PATH).read_text().strip() != "0")
    else:
        assert got is None
