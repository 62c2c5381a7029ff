"""`serve --threads N`: parsed, validated, and applied to torch before the engine is built."""

from __future__ import annotations

import pytest
import torch

from gptoss_serve import cli
from gptoss_serve.api import server
from gptoss_serve.engine import async_engine


class _Stop(Exception):
    pass


def test_threads_flag_reaches_options(monkeypatch):
    seen = {}
    monkeypatch.setattr(server, "run_server", lambda opts: seen.setdefault("opts", opts) and 0)
    assert cli.main(["serve", "--threads", "3"]) == 0
    assert seen.pop("opts").threads == 3
    assert cli.main(["serve"]) == 0
    assert seen["opts"].threads is None  # torch's default


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_threads_flag_rejects_non_positive(monkeypatch, bad):
    monkeypatch.setattr(server, "run_server", lambda opts: 0)
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--threads", bad])
    assert exc.value.code == 2


def test_run_server_sets_torch_threads_before_loading(monkeypatch, tmp_path):
    real_run_server, got, seen = server.run_server, {}, []
    monkeypatch.setattr(server, "run_server", lambda opts: got.setdefault("opts", opts) and 0)
    before = torch.get_num_threads()
    cli.main(["serve", "--model", str(tmp_path), "--threads", str(before + 1)])

    def from_config(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise _Stop

    monkeypatch.setattr(async_engine.AsyncEngine, "from_config", from_config)
    try:
        with pytest.raises(_Stop):
            real_run_server(got["opts"])
    finally:
        torch.set_num_threads(before)
    assert seen == [before + 1]
