"""`mstage status`: what is built, stale or damaged, the server running, and what to run next."""

import typer

from mstage.cli.app import command, session, table

COLOURS = {"ready": "green", "stale": "yellow", "missing": "red", "damaged": "red"}


def _server(ws) -> dict | None:
    """The workspace's detached server, and whether it serves the current ensemble."""
    from mstage.serving.server import running_server
    from mstage.workspace import Artifact

    endpoints = running_server(ws.logs_dir)
    if endpoints is None:
        return None
    record = ws.record(Artifact.ENSEMBLE) or {}
    current = bool(endpoints.ensemble) and endpoints.ensemble == record.get("fingerprint")
    return {"pid": endpoints.pid, "grpc": endpoints.grpc_url, "http": endpoints.http_url,
            "repository": endpoints.repository, "current": current}


@command("status")
def status(
    repair: bool = typer.Option(False, "--repair", help="Rebuild a corrupt manifest.json from "
                                "the artifacts on disk (their config and metrics are lost)."),
) -> None:
    """Show each artifact's state (missing / ready / stale / damaged), a running server, and
    the next command to run."""
    from mstage.workspace import Artifact

    s = session()
    ws = s.workspace
    if repair:
        repaired = ws.repair()
        s.warn(f"manifest rebuilt from disk: {', '.join(repaired['recovered']) or 'nothing'} "
               "recovered; their config, metrics and inputs are marked unverified")
    rows = []
    for artifact in Artifact:
        state, reason = ws.state(artifact)
        rec = ws.record(artifact) or {}
        rows.append({
            "artifact": artifact.dirname,
            "state": state,
            "reason": reason,
            "built_at": rec.get("built_at"),
            "seconds": rec.get("seconds"),
            "command": f"mstage {artifact.command}",
        })
    server = _server(ws)
    result = {"workspace": str(ws.root), "artifacts": rows, "server": server,
              "next": ws.next_command()}

    def render(console):
        def state(r):
            reason = f" ({r['reason']})" if r["reason"] else ""
            return f"[{COLOURS[r['state']]}]{r['state']}[/]{reason}"

        console.print(table(
            f"workspace {ws.root}",
            ["artifact", "state", "built", "seconds", "built by"],
            [(r["artifact"], state(r), r["built_at"] or "-",
              "-" if r["seconds"] is None else r["seconds"], r["command"]) for r in rows],
        ))
        if server:
            serves = ("the current ensemble" if server["current"] else
                      "an older or another repository; `mstage stop` then `mstage serve` "
                      "to serve the current one")
            console.print(f"server: pid {server['pid']}, grpc {server['grpc']}, http "
                          f"{server['http']}, serving {serves}")
        console.print(f"next: {result['next']}" if result["next"] else "everything is up to date")

    s.emit(result, render)
