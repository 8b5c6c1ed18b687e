"""The `abuseguard` command: --version, lookup's messages and exit codes, one database-folder
option across commands, progress, and the replay plot."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

import abuseguard
from abuseguard.cli import build_parser, main
from tests.mmdb_fixtures import TOR_EXIT, VPN, build_world


def test_version(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"abuseguard {abuseguard.__version__}"


def test_lookup_without_databases_says_what_to_pass(capsys: Any) -> None:
    assert main(["lookup", "192.0.2.1"]) == 2
    err = capsys.readouterr().err
    assert "no database" in err and "--mmdb-dir" in err and "--db" in err


def test_lookup_reads_a_database_folder(tmp_path: Path, capsys: Any) -> None:
    build_world(tmp_path / "mmdb")
    assert main(["lookup", "--mmdb-dir", str(tmp_path / "mmdb"), "--format", "json", VPN]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["asn"] == 9009 and record["anon"] == ["vpn"]


def test_lookup_names_anonymizer_flags_instead_of_a_bitmask(tmp_path: Path, capsys: Any) -> None:
    build_world(tmp_path)
    assert main(["lookup", "--mmdb-dir", str(tmp_path), TOR_EXIT]) == 0
    text = capsys.readouterr().out
    assert "anon_flags" not in text
    assert any(line.split() == ["anon:", "tor"] for line in text.splitlines())
    assert main(["lookup", "--mmdb-dir", str(tmp_path), "--format", "json", TOR_EXIT]) == 0
    record = json.loads(capsys.readouterr().out)
    assert "anon_flags" not in record and record["anon"] == ["tor"]


def test_one_bad_address_does_not_abort_the_batch(tmp_path: Path, capsys: Any) -> None:
    build_world(tmp_path)
    argv = ["lookup", "--mmdb-dir", str(tmp_path), "--format", "json"]
    assert main([*argv, VPN, "not-an-ip", TOR_EXIT]) == 2
    captured = capsys.readouterr()
    assert [json.loads(line)["ip"] for line in captured.out.splitlines()] == [VPN, TOR_EXIT]
    assert "not an IP address: 'not-an-ip'" in captured.err


def test_lookup_folder_without_databases_is_an_error(tmp_path: Path, capsys: Any) -> None:
    assert main(["lookup", "--mmdb-dir", str(tmp_path), "192.0.2.1"]) == 2
    assert "no MaxMind databases" in capsys.readouterr().err


def _option_strings(command: str) -> set[str]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    sub = subparsers.choices[command]  # type: ignore[index]
    return {s for action in sub._actions for s in action.option_strings}


@pytest.mark.parametrize("command", ["lookup", "replay", "simulate"])
def test_one_option_name_for_the_database_folder(command: str) -> None:
    assert "--mmdb-dir" in _option_strings(command)


@pytest.mark.parametrize("command", ["replay", "simulate"])
def test_long_commands_accept_no_progress(command: str) -> None:
    assert "--no-progress" in _option_strings(command)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_simulate_shows_progress_on_a_terminal_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["simulate", "-o", str(tmp_path / "t.jsonl"), "--hours", "0.2", "-q"]
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(argv) == 0
    assert "simulate" in terminal.getvalue() and "requests" in terminal.getvalue()
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main([*argv, "--no-progress"]) == 0
    assert terminal.getvalue() == ""
    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    assert main(argv) == 0
    assert piped.getvalue() == ""


def _report_for_plot() -> dict[str, Any]:
    hist_abusive = [0] * 101
    hist_abusive[95] = 40
    hist_benign = [0] * 101
    hist_benign[5] = 100
    return {
        "kinds": {
            "bulk_harvest": {"label": "abusive", "score_histogram": hist_abusive},
            "browser_chat": {"label": "benign", "score_histogram": hist_benign},
        },
        "timeline": {
            "bin_seconds": 60.0,
            # bin, benign requests/allowed/mitigated, abusive requests/allowed/mitigated
            "rows": [[0, 10, 10, 0, 10, 10, 0], [1, 10, 9, 1, 10, 2, 8], [2, 10, 10, 0, 10, 0, 10]],
        },
    }


def test_replay_plot_marks_the_ladder_and_windows_with_legends_off_the_data() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from abuseguard.policy import Policy
    from abuseguard.report import draw_report

    ladder = Policy().enforcement.ladder
    fig = draw_report(_report_for_plot(), ladder)
    try:
        ax_score, ax_leak = fig.axes
        vertical = sorted(
            line.get_xdata()[0] for line in ax_score.lines if len(set(line.get_xdata())) == 1
        )
        assert vertical == [threshold for threshold, _ in ladder]
        assert {t.get_text() for t in ax_score.texts} == {str(a) for _, a in ladder}
        fig.canvas.draw()
        for ax in (ax_score, ax_leak):
            legend_box = ax.get_legend().get_window_extent()
            assert legend_box.y1 <= ax.get_window_extent().y0  # below the plotting area
        per_window = next(
            line for line in ax_leak.lines if line.get_label().startswith("abusive leakage per")
        )
        assert list(per_window.get_ydata()) == [1.0, 0.2, 0.0]
        cumulative = next(
            line for line in ax_leak.lines if line.get_label() == "abusive leakage (cumulative)"
        )
        assert list(cumulative.get_ydata()) == pytest.approx([1.0, 0.6, 0.4])
    finally:
        plt.close(fig)
