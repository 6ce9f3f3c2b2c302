"""The CLI's contract: fast help, global flags anywhere, one-line errors with exit codes."""

import json
import time

from cli_runner import run_mstage_process, run_python


def test_help_is_fast_and_lists_status():
    started = time.perf_counter()
    out = run_mstage_process("--help")
    # A generous bound for a loaded CI box; the point is that TensorFlow is not imported.
    assert time.perf_counter() - started < 5
    assert "status" in out.stdout


def test_help_does_not_import_heavy_libraries():
    code = ("import sys, mstage.cli.main; "
            "print(sorted(m for m in ('tensorflow','feast','faiss','pandas','tritonclient') "
            "if m in sys.modules))")
    out = run_python("-c", code)
    assert out.stdout.strip() == "[]"


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("mstage ")


def test_status_json_after_command_name(cli, isolated_workspace):
    result = cli("status", "--json")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert [a["state"] for a in payload["artifacts"]] == ["missing"] * 6
    assert payload["next"] == "mstage prepare-data"


def test_workspace_that_is_a_file_is_a_usage_error(cli, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    result = cli("status", "-w", str(f))
    assert result.exit_code == 2
    assert "found a file" in result.stderr
    assert "Traceback" not in result.stderr



def test_error_text_in_brackets_is_printed_verbatim(capsys):
    from mstage.cli.app import fail

    exit_ = fail("expected shape [n, 8] in [index] of mstage.toml", 2)
    assert exit_.exit_code == 2
    assert "expected shape [n, 8] in [index] of mstage.toml" in capsys.readouterr().err
