"""`mstage recommend`: top-k items for users, in-process or from a running Triton server.

One user (`--user-id`) or many (`--user-ids-file FILE`, `-` for stdin, one id per line),
answered in batches and printed as each batch arrives: a table per user, or one JSON line
per user with `--json`. Malformed lines are reported on stderr by line number and skipped;
the command fails (exit 2) only when no line is valid. With `--server`, users already
answered when the server stops are kept, the rest are listed on stderr (exit 1).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import typer

from mstage.cli.app import check_catalog, command, require_built, server_address, session
from mstage.columns import PAD
from mstage.errors import InputError, ServerError, UsageError


@dataclass
class UserIds:
    """The user's ids to answer (in the workspace's id form), and the input lines that were
    not ids (line number, text, why)."""

    ids: list[int | str]
    malformed: list[tuple[int, str, str]]


def read_user_ids(source: str, users) -> UserIds:
    """One id per line from a file or `-` (stdin), parsed by the users' IdMap; blank lines
    and `#` comments are skipped."""
    from pathlib import Path

    from mstage.data.readers import require_file

    if source == "-":
        lines = sys.stdin.read().splitlines()
    else:
        path = Path(source)
        require_file(path, "a file of user ids (one per line)",
                     "pass an existing file or - for stdin")
        lines = path.read_text(errors="replace").splitlines()
    ids, malformed = [], []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            ids.append(users.parse(text))
        except UsageError as e:
            malformed.append((number, text, str(e)))
    return UserIds(ids, malformed)


def workspace_ids(ws):
    """The (users, items) IdMaps prepare-data kept; integer ids when there is no data."""
    from mstage.data.ids import IdMap
    from mstage.workspace import Artifact

    if not ws.exists(Artifact.DATA):
        return IdMap("user", None), IdMap("item", None)
    data = ws.path(Artifact.DATA)
    return IdMap.load(data, "users"), IdMap.load(data, "items")


def _score(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def answers_from_arrays(users, item_ids, scores, fallback, items, explain=None,
                        history_only=None) -> list[dict[str, Any]]:
    """Per user: the JSON-ready answer in the user's ids (`items`: the items' IdMap), with
    the -1 padding of the id matrix dropped; with `explain`, `"history_only": true` for a user
    the model never saw, answered from the history the store holds (`mstage push-events`)."""
    out = []
    for row, user in enumerate(users):
        keep = item_ids[row] != PAD
        answer = {
            "user_id": user,
            "item_ids": items.to_user(item_ids[row][keep]),
            "scores": [_score(v) for v in scores[row][keep]],
            "fallback": bool(fallback[row]),
        }
        if explain is not None and history_only is not None and history_only[row]:
            answer["history_only"] = True
        if explain is not None:
            answer["explain"] = [entry | {"item_id": items.to_user([entry["item_id"]])[0]}
                                 for entry in explain[row]]
        out.append(answer)
    return out


def _chunks(values: list, size: int) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def open_answerer(s, serving, server: str | None, protocol: str):
    """The in-process Recommender or a Triton client (both `Recommends`), and the item
    attributes shown beside answers (a function of internal item ids -> DataFrame or None)."""
    import dataclasses

    from mstage.workspace import Artifact

    if server is None:
        from mstage.pipeline.recommender import SERVED_ARTIFACTS, Recommender

        require_built(s.workspace, SERVED_ARTIFACTS)
        config = dataclasses.replace(s.config, serving=serving)
        recommender = Recommender.from_workspace(s.workspace, config)
        return recommender, recommender.item_attributes
    from mstage.serving.client import RecommenderClient

    client = RecommenderClient(server, protocol)
    try:
        client.batch_size  # noqa: B018 - the first call contacts the server
    except BaseException:
        client.close()
        raise
    if not s.workspace.exists(Artifact.FEATURES):
        return client, lambda item_ids: None
    from mstage.features.online import ItemAttributes

    return client, ItemAttributes(s.workspace.path(Artifact.FEATURES))


def current_server(s) -> str | None:
    """The gRPC address of the server `mstage serve --detach` runs for this workspace, when
    it serves the current ensemble and that ensemble is up to date; else None."""
    from mstage.serving.server import running_server
    from mstage.workspace import Artifact

    ws = s.workspace
    endpoints = running_server(ws.logs_dir)
    record = ws.record(Artifact.ENSEMBLE) if endpoints is not None else None
    if not record or endpoints.ensemble != record["fingerprint"] or \
            ws.state(Artifact.ENSEMBLE)[0] != "ready":
        return None
    s.log(f"answering from the server running for this workspace (grpc://"
          f"{endpoints.grpc_url}); --in-process runs the pipeline here")
    return endpoints.grpc_url


def check_served_top_k(ws, top_k: int) -> None:
    """A served ensemble answers at most the candidates it was built to retrieve."""
    from mstage.workspace import Artifact

    record = ws.record(Artifact.ENSEMBLE) if ws.exists(Artifact.ENSEMBLE) else None
    built = (record or {}).get("config", {}).get("serving", {}).get("candidates")
    if built is not None and top_k > built:
        raise UsageError(f"expected --top-k <= the {built} candidates the served ensemble "
                         f"retrieves, found {top_k}; rebuild it with `mstage build-ensemble "
                         f"--candidates {top_k}` and restart the server")


def answer(recommender, users: list, ids, top_k: int, explain: bool):
    """JSON-ready answers for `users` (the user's ids; `ids`: their users' and items'
    IdMaps) and, in-process, each stage's timing."""
    user_ids, item_ids = ids
    ids = user_ids.to_internal(users)
    if explain:
        result = recommender.recommend(ids, top_k, explain=True)
    else:
        result = recommender.recommend(ids, top_k)
    stages = [{"name": t.name, "seconds": round(t.seconds, 6), "items_in": int(t.items_in),
               "items_out": int(t.items_out)} for t in result.timings]
    return answers_from_arrays(users, result.item_ids, result.scores, result.fallback,
                               item_ids, result.explain,
                               getattr(result, "history_only", None)), stages


def _check_options(user_id, user_ids_file, candidates, explain, seed, server, protocol) -> None:
    """Option combinations; values are checked by the config types."""
    if (user_id is None) == (user_ids_file is None):
        found = "both" if user_id is not None else "neither"
        raise UsageError(f"expected exactly one of --user-id or --user-ids-file, found {found}")
    if protocol not in ("grpc", "http"):
        raise UsageError(f"expected --protocol grpc or http, found {protocol!r}")
    if server is None and protocol != "grpc":
        raise UsageError("expected --protocol only with --server HOST:PORT, found it alone")
    if server is not None:
        for flag, value in (("--explain", explain or None), ("--candidates", candidates),
                            ("--seed", seed)):
            if value is not None:
                raise UsageError(
                    f"expected {flag} only in-process, found it with --server; the served "
                    "ensemble fixes candidates and ordering when it is built "
                    "(`mstage build-ensemble`), and cannot explain its stages")


@command("recommend")
def recommend(
    user_id: str = typer.Option(None, "--user-id", metavar="ID",
                                help="The user to recommend for, as the data writes it "
                                "(42, u-00042)."),
    user_ids_file: str = typer.Option(
        None, "--user-ids-file", metavar="FILE",
        help="A file of user ids, one per line (- reads stdin); answered in batches."),
    top_k: int = typer.Option(None, "--top-k", metavar="K",
                              help="Items per user. (default: serving.top_k, 10)"),
    candidates: int = typer.Option(
        None, "--candidates", metavar="N",
        help="Candidates retrieved before filtering and scoring (>= top-k; in-process only). "
             "(default: serving.candidates, 200)"),
    explain: bool = typer.Option(False, "--explain", help="Show each stage's item counts and "
                                 "time, and each item's retrieval and ranking score."),
    seed: int = typer.Option(None, "--seed", help="Seed of softmax-sampling ordering "
                             "(in-process only). (default: ordering.seed)"),
    server: str = typer.Option(None, "--server", metavar="HOST:PORT",
                               help="Ask this Triton server instead of running in-process."),
    protocol: str = typer.Option("grpc", "--protocol", help="grpc or http (with --server)."),
    in_process: bool = typer.Option(False, "--in-process", help="Run the pipeline here even "
                                    "when a server serves this workspace's ensemble."),
) -> None:
    """Recommend items for users: a table per user, or one JSON line per user with --json.

    Without --server, a server that `mstage serve --detach` runs for this workspace answers
    when it serves the current ensemble (fast: no model loads here); else in-process."""
    from mstage.config import override

    _check_options(user_id, user_ids_file, candidates, explain, seed, server, protocol)
    if in_process and server is not None:
        raise UsageError("expected --in-process or --server, found both; pass one")
    server = server_address(server)
    s = session()
    if server is None and not (in_process or explain or candidates or seed is not None):
        server = current_server(s)
    if server is not None:
        check_served_top_k(s.workspace, top_k or s.config.serving.top_k)
    if server is None:  # before the config's candidates >= top_k, which would advise raising
        top_k_key = "--top-k" if top_k is not None else "serving.top_k"
        check_catalog(s.workspace, {top_k_key: s.config.serving.top_k if top_k is None else top_k,
                                    "--candidates": candidates})
    serving = override(s.config.serving, flags=True, top_k=top_k, candidates=candidates)
    if seed is not None:
        import dataclasses

        ordering = override(s.config.ordering, flags=True, seed=seed)
        s.config = dataclasses.replace(s.config, ordering=ordering)
    ids = workspace_ids(s.workspace)
    if user_id is not None:
        users = UserIds([ids[0].parse(user_id)], [])
    else:
        users = read_user_ids(user_ids_file, ids[0])
        where = "stdin" if user_ids_file == "-" else user_ids_file
        for number, _, why in users.malformed:
            s.warn(f"{where} line {number}: {why}; skipped")
        if not users.ids:
            raise InputError(f"expected at least one user id in {where}, found none "
                             f"({len(users.malformed)} malformed line(s))")

    recommender, attributes = open_answerer(s, serving, server, protocol)
    try:
        for warning in getattr(recommender, "warnings", []):
            s.warn(warning)
        _answer_all(recommender, users.ids, ids, serving.top_k, explain,
                    _printer(s, attributes, ids[1], explain), server)
    finally:
        recommender.close()


def _answer_all(recommender, users: list, ids, top_k: int, explain: bool, emit: Callable,
                server: str | None) -> None:
    """Ask in chunks, printing each as it arrives; a server failure after some answers
    names the users left unanswered."""
    answered = 0
    try:
        for chunk in _chunks(users, recommender.batch_size):
            answers, stages = answer(recommender, chunk, ids, top_k, explain)
            emit(answers, stages)
            answered += len(chunk)
    except ServerError as e:
        if answered == 0:
            raise
        rest = users[answered:]
        raise ServerError(
            f"expected answers for all {len(users)} users, found {len(rest)} unanswered when "
            f"{server} stopped answering (user ids: {', '.join(map(str, rest))}); {e}"
        ) from None


def _printer(s, attributes: Callable, items, explain: bool) -> Callable:
    """Prints answers; `attributes` of internal item ids, shown under the user's ids."""
    def emit(answers: list[dict[str, Any]], stages: list[dict[str, Any]]) -> None:
        if s.json:
            for answer in answers:
                line = answer | ({"stages": stages, "batch_users": len(answers)}
                                 if explain else {})
                sys.stdout.write(_json(line) + "\n")
            sys.stdout.flush()
            return
        from mstage.cli.render import recommendations_table, stages_table

        if explain and stages:
            s.out.print(stages_table(stages, len(answers)))
        for answer in answers:
            shown = attributes(items.to_internal(answer["item_ids"]))
            if shown is not None:
                shown["item_id"] = answer["item_ids"]
            s.out.print(recommendations_table(answer, shown))

    return emit


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(", ", ": "))
