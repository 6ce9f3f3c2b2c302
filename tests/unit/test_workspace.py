"""Workspace: atomic publish, the lock, staleness and the next command."""

import json
import multiprocessing

import pytest

from mstage.errors import ArtifactMissing, UsageError, WorkspaceLocked
from mstage.workspace import Artifact, Workspace


def publish(ws, artifact, text="v1", files=None):
    with ws.build(artifact) as b:
        (b.dir / "payload.txt").write_text(text)
        b.config = {"k": text}
        b.metrics = {"m": 1.0}
        b.files = files or {}


def test_publish_records_manifest(tmp_path):
    ws = Workspace(tmp_path / "ws")
    publish(ws, Artifact.DATA)
    rec = ws.record(Artifact.DATA)
    assert (ws.path(Artifact.DATA) / "payload.txt").read_text() == "v1"
    assert rec["config"] == {"k": "v1"} and rec["metrics"] == {"m": 1.0}
    assert rec["seconds"] >= 0 and rec["mstage_version"]
    assert ws.state(Artifact.DATA) == ("ready", "")
    assert not (ws.root / ".staging").exists() or not any((ws.root / ".staging").iterdir())


def test_failed_build_keeps_previous_artifact(tmp_path):
    ws = Workspace(tmp_path / "ws")
    publish(ws, Artifact.DATA, "good")
    before = ws.record(Artifact.DATA)
    with pytest.raises(RuntimeError):
        with ws.build(Artifact.DATA) as b:
            (b.dir / "payload.txt").write_text("half")
            raise RuntimeError("boom")
    assert (ws.path(Artifact.DATA) / "payload.txt").read_text() == "good"
    assert ws.record(Artifact.DATA) == before
    assert not any((ws.root / ".staging").iterdir())


def test_interrupt_keeps_previous_artifact(tmp_path):
    ws = Workspace(tmp_path / "ws")
    publish(ws, Artifact.DATA, "good")
    with pytest.raises(KeyboardInterrupt):
        with ws.build(Artifact.DATA) as b:
            (b.dir / "payload.txt").write_text("half")
            raise KeyboardInterrupt
    assert (ws.path(Artifact.DATA) / "payload.txt").read_text() == "good"


def test_rebuilding_an_input_marks_dependents_stale(tmp_path):
    ws = Workspace(tmp_path / "ws")
    publish(ws, Artifact.DATA)
    publish(ws, Artifact.RETRIEVAL)
    assert ws.state(Artifact.RETRIEVAL)[0] == "ready"
    publish(ws, Artifact.DATA, "v2")
    state, reason = ws.state(Artifact.RETRIEVAL)
    assert state == "stale" and "data changed" in reason
    assert ws.next_command() == "mstage train-retrieval"


def test_changed_raw_file_marks_data_stale(tmp_path):
    raw = tmp_path / "raw.csv"
    raw.write_text("a,b\n1,2\n")
    ws = Workspace(tmp_path / "ws")
    publish(ws, Artifact.DATA, files={"interactions": raw})
    assert ws.state(Artifact.DATA)[0] == "ready"
    raw.write_text("a,b\n1,3\n")
    assert ws.state(Artifact.DATA)[0] == "stale"


def test_require_names_the_command(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(ArtifactMissing, match="run `mstage build-index` first"):
        ws.require(Artifact.INDEX)


def test_build_needs_upstream(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(ArtifactMissing, match="mstage prepare-data"):
        with ws.build(Artifact.RETRIEVAL):
            pass


def test_workspace_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(UsageError, match="found a file"):
        Workspace(f)


def _hold_lock(root, ready, release):
    with Workspace(root).lock("mstage train-retrieval"):
        ready.set()
        release.wait(10)


def test_second_writer_fails_with_clear_message(tmp_path):
    root = tmp_path / "ws"
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(root, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(WorkspaceLocked, match=r"locked by pid \d+ \(mstage train-retrieval\)"):
            with Workspace(root).build(Artifact.DATA):
                pass
    finally:
        release.set()
        holder.join(10)
    publish(Workspace(root), Artifact.DATA)  # free again once the holder is gone


def test_interrupted_swap_is_recovered(tmp_path):
    ws = Workspace(tmp_path / "ws")
    publish(ws, Artifact.DATA, "good")
    # Simulate a crash between "move old aside" and "move new in".
    target = ws.path(Artifact.DATA)
    target.rename(target.with_name(".data.previous"))
    ws2 = Workspace(ws.root)
    assert (ws2.path(Artifact.DATA) / "payload.txt").read_text() == "good"


def test_update_metrics_merges(tmp_path):
    ws = Workspace(tmp_path / "ws")
    publish(ws, Artifact.DATA)
    ws.update_metrics(Artifact.DATA, {"extra": 2})
    assert json.loads(ws.manifest_path.read_text())["artifacts"]["data"]["metrics"] == {
        "m": 1.0, "extra": 2}



# damage, a corrupt manifest, leftovers -----------------------------------------------------


def test_a_missing_or_changed_file_makes_the_artifact_damaged(tmp_path):
    from mstage.errors import ArtifactDamaged

    ws = Workspace(tmp_path / "ws")
    publish(ws, Artifact.DATA, "v1")
    assert ws.record(Artifact.DATA)["files"]["payload.txt"]["size"] == 2
    payload = ws.path(Artifact.DATA) / "payload.txt"
    payload.write_text("v2")  # same size, other bytes
    assert ws.state(Artifact.DATA) == ("damaged", "data/payload.txt changed")
    with pytest.raises(ArtifactDamaged, match=r"expected the data artifact as published, found "
                       r"data/payload.txt changed; rebuild it with `mstage prepare-data`"):
        ws.require(Artifact.DATA)
    payload.unlink()
    assert ws.state(Artifact.DATA) == ("damaged", "data/payload.txt missing")
    assert ws.next_command() == "mstage prepare-data"


def test_a_live_store_file_may_change_without_damage(tmp_path):
    ws = Workspace(tmp_path / "ws")
    publish(ws, Artifact.DATA)
    with ws.build(Artifact.FEATURES) as b:
        (b.dir / "online.db").write_bytes(b"rows")
    (ws.path(Artifact.FEATURES) / "online.db").write_bytes(b"rows written by a push")
    assert ws.state(Artifact.FEATURES) == ("ready", "")
    (ws.path(Artifact.FEATURES) / "online.db").unlink()
    assert ws.state(Artifact.FEATURES) == ("damaged", "features/online.db missing")


def test_file_digest_sees_the_end_of_large_files(tmp_path):
    from mstage.workspace import SAMPLE_BYTES, file_digest

    big = tmp_path / "big.bin"
    big.write_bytes(b"a" * (3 * SAMPLE_BYTES))
    before = file_digest(big)
    with open(big, "r+b") as f:
        f.seek(-1, 2)
        f.write(b"b")  # the last byte
    assert file_digest(big) != before


@pytest.mark.parametrize("text, found", [
    ('{"artifacts": {"data": {"finger', "JSONDecodeError"),
    ("[1, 2]", "TypeError"),
    ('{"artifacts": {"data": {"built_at": "x"}}}', "an artifact record lacks its fingerprint"),
    ('{"version": 1}', "KeyError"),
])
def test_a_corrupt_manifest_is_one_error_naming_the_repair(tmp_path, text, found):
    from mstage.errors import ManifestCorrupt

    ws = Workspace(tmp_path / "ws")
    publish(ws, Artifact.DATA)
    ws.manifest_path.write_text(text)
    with pytest.raises(ManifestCorrupt, match=rf"expected a readable manifest at "
                       rf"{ws.manifest_path}, found .*{found}.*; run `mstage status --repair`"):
        ws.state(Artifact.DATA)


def test_repair_rebuilds_the_manifest_from_disk_marking_what_it_cannot_know(tmp_path):
    ws = Workspace(tmp_path / "ws")
    publish(ws, Artifact.DATA)
    publish(ws, Artifact.RETRIEVAL)
    ws.manifest_path.write_text("garbage")
    assert ws.repair() == {"recovered": ["data", "retrieval"],
                           "missing": ["ranking", "features", "index", "ensemble"]}
    assert ws.state(Artifact.DATA) == ("ready", "") == ws.state(Artifact.RETRIEVAL)
    record = ws.record(Artifact.RETRIEVAL)
    assert record["inputs"] == {"data": ws.record(Artifact.DATA)["fingerprint"]}
    assert "config" in record["unverified"] and record["files"]["payload.txt"]["size"] == 2
    assert ws.next_command() == "mstage train-ranking"


def test_staging_left_by_a_killed_command_is_removed_by_the_next_lock(tmp_path):
    ws = Workspace(tmp_path / "ws")
    leftover = ws.root / ".staging" / "retrieval-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "query_tower.bin").write_bytes(b"x" * 100)
    publish(ws, Artifact.DATA)
    assert not leftover.exists()


def test_next_command_skips_an_artifact_whose_raw_input_is_gone(tmp_path):
    ws = Workspace(tmp_path / "ws")
    events = tmp_path / "events"  # a partitioned data set: a directory of files
    events.mkdir()
    (events / "part-0.parquet").write_bytes(b"rows")
    publish(ws, Artifact.DATA, files={"interactions": events})
    assert ws.state(Artifact.DATA) == ("ready", "")
    (events / "part-0.parquet").unlink()
    events.rmdir()
    assert ws.state(Artifact.DATA)[0] == "stale"
    # rebuilding data would fail for want of its input: the next usable step is named
    assert ws.next_command() == "mstage train-retrieval"
