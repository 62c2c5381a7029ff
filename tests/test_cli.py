"""The command line as documented: out-of-range flag values are refused by the parser (exit 2,
naming the flag) before anything loads, a start-up error is one line on stderr (exit 2, no
traceback), and the README's command-line section lists exactly the flags each subcommand has.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gptoss_serve import cli
from gptoss_serve.api import server
from gptoss_serve.errors import StartupError

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("command, starts, flag, bad", [
    *[("serve", (server, "run_server"), flag, bad) for flag, bad in [
        ("--max-queue", "0"), ("--max-queue", "-1"), ("--max-num-seqs", "0"),
        ("--max-num-batched-tokens", "0"), ("--max-model-len", "0"), ("--max-body-mib", "-3"),
        ("--max-body-mib", "nan"), ("--kv-cache-memory", "-1"), ("--kv-cache-memory", "inf"),
        ("--device", "foo"), ("--device", "cuda:x")]],
    # chat's sampling flags keep the API's bounds (0..2, 0..1): the REPL would sample with them
    *[("chat", (cli, "_run_chat"), flag, bad) for flag, bad in [
        ("--temperature", "-1"), ("--temperature", "2.5"), ("--top-p", "1.5"),
        ("--top-p", "nan")]],
])
def test_bad_flag_values_are_refused_before_starting(monkeypatch, capsys, command, starts, flag,
                                                     bad):
    monkeypatch.setattr(*starts, lambda arg: pytest.fail(f"{command} started"))
    with pytest.raises(SystemExit) as exc:
        cli.main([command, flag, bad])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_documented_devices_parse(device):
    assert cli.build_parser().parse_args(["serve", "--device", device]).device == device


def test_start_up_error_is_one_line_without_traceback(monkeypatch, capsys):
    def fail(opts):
        raise StartupError("KV budget of 0.001 GiB is too small")

    monkeypatch.setattr(server, "run_server", fail)
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err == "gptoss-serve serve: KV budget of 0.001 GiB is too small\n"


def _help_flags(command: str, capsys) -> set[str]:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return set(re.findall(r"\[(--[a-z-]+)", capsys.readouterr().out)) - {"--help"}


def _readme_flags(command: str) -> set[str]:
    section = README.read_text().split("## The command line", 1)[1].split("\n## ", 1)[0]
    usage = re.search(rf"^    gptoss-serve {command} (.*?)(?=^    gptoss-serve |\n\n)", section,
                      re.MULTILINE | re.DOTALL).group(1)
    return set(re.findall(r"\[(--[a-z-]+)", usage))


@pytest.mark.parametrize("command", ["serve", "chat", "make-checkpoint", "bench"])
def test_readme_usage_lists_every_flag(command, capsys):
    assert _readme_flags(command) == _help_flags(command, capsys)
