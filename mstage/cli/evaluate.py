"""`mstage evaluate`: popularity, retrieval alone and the whole pipeline on the test split."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mstage.cli.app import command, parse_int_list, session, table

COLUMNS = ("recall", "ndcg", "hitrate", "coverage")


@command("evaluate")
def evaluate(
    k: str = typer.Option("10,20,100", "--k", metavar="K,K", help="Cut-offs k."),
    split: str = typer.Option("user-temporal", "--split",
                              help="user-temporal (default) or global (docs/evaluation.md)."),
    users: int = typer.Option(None, "--users", min=1, metavar="N",
                              help="Evaluate a seeded sample of N users (faster)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --users sample."),
    plot: Path = typer.Option(None, "--plot", metavar="FILE.png",
                              help="Also draw recall@k and NDCG@k per model into a PNG."),
) -> None:
    """Measure recall, NDCG, hit rate and coverage of popularity, EASE, retrieval and the
    pipeline, with standard errors and the pipeline's paired differences to each."""
    from mstage.evaluation.evaluate import evaluate_workspace, manifest_summary
    from mstage.evaluation.plots import check_png_path, plot_quality
    from mstage.workspace import Artifact

    ks = parse_int_list(k, "--k")
    if plot is not None:
        check_png_path(plot)
    s = session()
    ws = s.workspace
    report = evaluate_workspace(ws, s.config, ks=ks, split=split, users=users, seed=seed,
                                reporter=s.progress())
    for note in report.notes:
        s.warn(note)

    result = report.as_dict()
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    report_path = ws.reports_dir / f"evaluate-{split}.json"
    report_path.write_text(json.dumps(result, indent=2))
    result["report"] = str(report_path)
    ws.update_metrics(Artifact.DATA, {f"evaluate_{split}": manifest_summary(report, ws)})
    if plot is not None:
        result["plot"] = str(plot_quality(
            report.rows, report.ks, plot,
            f"{split} split, {report.users} users"))

    def render(console):
        models = list(report.rows)
        names = [f"{m}@{kk}" for m in COLUMNS for kk in report.ks]
        stats = report.stats

        def cell(model: str, name: str) -> str:
            value = report.rows[model].get(name, float("nan"))
            se = report.standard_errors.get(model, {}).get(name)
            return f"{value:.4f}" + ("" if se is None else f" ±{se:.4f}")

        console.print(table(
            f"test metrics ± standard error, {split} split, {report.users} evaluated users "
            f"(train {stats['train_users']} users / {stats['train_items']} items / "
            f"{stats['train_interactions']} interactions)", ["metric", *models],
            [(n, *[cell(m, n) for m in models]) for n in names]))
        shown = [f"{m}@{kk}" for kk in report.ks[:2] for m in ("recall", "ndcg")]
        console.print(table(
            "paired differences, mean over the same users [95 % interval]",
            ["comparison", *shown],
            [(pair, *[_interval(diffs[n]) for n in shown])
             for pair, diffs in report.comparisons.items()]))
        if report.ease:
            console.print(f"EASE L2 weight {report.ease['l2']:g}, chosen on validation "
                          f"(recall@20 {report.ease['validation_recall@20']:.4f})")
        auc = report.ranking.get("test_auc")
        extras = report.pipeline
        console.print(
            f"ranker test AUC: {'-' if auc is None else f'{auc:.4f}'}   "
            f"pipeline fallback share: {extras.get('fallback_share', 0.0):.4f}")
        console.print(f"report: {report_path}" + (f"   plot: {result['plot']}"
                                                   if plot is not None else ""))

    s.emit(result, render)


def _interval(diff: dict[str, float]) -> str:
    return f"{diff['difference']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"
