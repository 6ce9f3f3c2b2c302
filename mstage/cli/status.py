"""`mstage status`: what is built, what is stale, and what to run next."""

from mstage.cli.app import command, session, table


@command("status")
def status() -> None:
    """Show each artifact's state (missing / ready / stale) and the next command to run."""
    from mstage.workspace import Artifact

    s = session()
    ws = s.workspace
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
    result = {"workspace": str(ws.root), "artifacts": rows, "next": ws.next_command()}

    def render(console):
        colour = {"ready": "green", "stale": "yellow", "missing": "red"}

        def state(r):
            reason = f" ({r['reason']})" if r["reason"] else ""
            return f"[{colour[r['state']]}]{r['state']}[/]{reason}"

        console.print(table(
            f"workspace {ws.root}",
            ["artifact", "state", "built", "seconds", "built by"],
            [(r["artifact"], state(r), r["built_at"] or "-",
              "-" if r["seconds"] is None else r["seconds"], r["command"]) for r in rows],
        ))
        console.print(f"next: {result['next']}" if result["next"] else "everything is up to date")

    s.emit(result, render)
