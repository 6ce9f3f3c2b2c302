"""`mstage generate-data` end to end: files, JSON summary, and every usage error."""

import json

import pandas as pd
import pytest


def test_generate_writes_tables_and_reports_json(cli, tmp_path):
    out = tmp_path / "raw"
    result = cli("generate-data", "--out", out, "--users", 40, "--items", 30,
                 "--interactions", 800, "--seed", 3, "--save-factors", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["users"] == 40 and summary["interactions"] == 800 and summary["seed"] == 3
    assert summary["files"] == ["interactions.parquet", "users.parquet", "items.parquet",
                                "factors.npz"]
    inter = pd.read_parquet(out / "interactions.parquet")
    assert len(inter) == 800 and summary["clicks"] == int(inter.click.sum())
    assert json.loads((out / "generator.json").read_text())["seed"] == 3


def test_generate_renders_a_table_and_the_next_command(cli, tmp_path):
    out = tmp_path / "raw"
    result = cli("generate-data", "--out", out, "--users", 20, "--items", 10,
                 "--interactions", 100)
    assert result.exit_code == 0, result.stderr
    assert "impressions" in result.stdout
    assert f"mstage prepare-data --interactions {out}/interactions.parquet" in result.stdout


def test_same_seed_gives_identical_files(cli, tmp_path):
    for name in ("a", "b"):
        args = ("--users", 30, "--items", 20, "--interactions", 300, "--seed", 5)
        assert cli("generate-data", "--out", tmp_path / name, *args).exit_code == 0
    for table in ("interactions", "users", "items"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / f"{table}.parquet"),
                                      pd.read_parquet(tmp_path / "b" / f"{table}.parquet"))


@pytest.mark.parametrize(("options", "message"), [
    (("--users", 0), "expected --users > 0, found 0; pass a positive count"),
    (("--items", -3), "expected --items > 0, found -3"),
    (("--users", 50, "--interactions", 10),
     "expected --interactions >= --users (every user gets at least one impression), "
     "found 10 < 50; raise --interactions or lower --users"),
    (("--ctr", 1.5), "expected a target CTR in (0, 1), found 1.5"),
])
def test_bad_options_exit_2_with_one_line(cli, tmp_path, options, message):
    result = cli("generate-data", "--out", tmp_path / "raw", *options)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "raw").exists()


def test_foreign_directory_needs_force(cli, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"\xff\xd8")
    small = ("--users", 10, "--items", 10, "--interactions", 50)
    result = cli("generate-data", "--out", out, *small)
    assert result.exit_code == 2
    assert f"found other files in {out}; pass another --out or --force" in result.stderr
    assert not (out / "interactions.parquet").exists()
    result = cli("generate-data", "--out", out, *small, "--force")
    assert result.exit_code == 0, result.stderr
    assert (out / "interactions.parquet").exists() and (out / "cat.jpg").exists()


def test_out_that_is_a_file_is_a_usage_error(cli, tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    result = cli("generate-data", "--out", target, "--users", 10, "--interactions", 50)
    assert result.exit_code == 2
    assert f"expected --out to be a directory, found a file at {target}" in result.stderr


def test_rerun_into_previous_output_needs_no_force(cli, tmp_path):
    out = tmp_path / "raw"
    small = ("--users", 10, "--items", 10, "--interactions", 50)
    assert cli("generate-data", "--out", out, *small).exit_code == 0
    result = cli("generate-data", "--out", out, *small, "--seed", 1, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["seed"] == 1


def test_missing_out_is_a_usage_error(cli):
    result = cli("generate-data", "--users", 10)
    assert result.exit_code == 2
    assert "--out" in result.stderr


def test_help_lists_generate_data(cli):
    result = cli("--help")
    assert result.exit_code == 0
    assert "generate-data" in result.stdout
