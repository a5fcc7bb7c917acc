"""The CLI is another process than `serve`: what it says of presence comes
through PostgreSQL (the batched presence flush), not from broker memory."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from broker import cli
from tests.e2e.conftest import Account, PhoneFactory, Server, wait_for


async def test_devices_list_shows_who_is_online_while_serve_runs(
        server: Server, account: Account, phone: PhoneFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", server.database_url)
    monkeypatch.setenv("SMSDORA_HOME", str(tmp_path / "cli-home"))
    device = await account.make_device("Pixel")

    async def listed() -> dict[str, object]:
        capsys.readouterr()
        code = await asyncio.to_thread(
            cli.main, ["--json", "devices", "list", "--account", account.email])
        assert code == 0
        [item] = json.loads(capsys.readouterr().out)["devices"]
        assert item["id"] == device.id
        return item  # type: ignore[no-any-return]

    assert (await listed())["online"] is False
    p = await phone(device)

    async def online() -> bool:
        item = await listed()
        return item["online"] is True and item["node"] == server.broker.settings.node
    await wait_for(online, what="devices list to show the phone online")
    await p.close()

    async def offline() -> bool:
        return (await listed())["online"] is False
    await wait_for(offline, what="devices list to show the phone offline")
