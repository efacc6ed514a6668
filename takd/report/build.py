"""A Markdown + HTML report of one or more chain runs (`python -m takd.report RUN_DIR [RUN_DIR ...]`).

Sections: Rouge-L of every evaluated model (mean ± 95 % interval over seeds), each Table 1 cell of the paper beside
ours when a model matches a Table 1 row (`takd.report.paper`), the direct-vs-TA table per
dataset (student via TA − direct, paired by seed), the TA-size curve when runs or a sweep used several TAs,
calibration and exposure bias when evaluated, and training curves (loss, reverse KL to the teacher, response
length) read from each stage's metrics.jsonl. Figures are PNG files beside the report.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: clusters and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from takd.paths import git_revision  # noqa: E402
from takd.report.collect import (  # noqa: E402
    by_item_group,
    collect,
    direct_vs_ta,
    item_scores,
    method_comparison,
    replicate_of,
    summary,
    unique_runs,
)
from takd.report.paper import FIGURE6_SOURCE, exposure_by_length, figure6, replication  # noqa: E402
from takd.report.paper import SOURCE as PAPER_SOURCE  # noqa: E402
from takd.train.metrics_log import read_metrics  # noqa: E402


def training_curves(run_dir: Path) -> pd.DataFrame:
    """Train/eval rows of every stage's metrics.jsonl: stage, step, kind, metric, value."""
    rows = []
    for f in sorted((run_dir / "stages").glob("*/metrics.jsonl")):
        for r in read_metrics(f):
            for k, v in r.items():
                if k not in ("step", "kind"):
                    rows.append({"run": run_dir.name, "stage": f.parent.name, "step": r["step"], "kind": r["kind"],
                                 "metric": k, "value": v})
    return pd.DataFrame(rows)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rouge(s: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['label']}\n{r['model']}" for _, r in s.iterrows()]
    ax.bar(range(len(s)), s["mean"], yerr=s["ci95"].fillna(0), capsize=4, color="#4C72B0")
    ax.set_xticks(range(len(s)), labels, fontsize=8)
    ax.set_ylabel("Rouge-L")
    ax.set_title("Rouge-L by model (mean ± 95% CI over seeds)")
    return _save(fig, path)


def new_values(points: pd.DataFrame) -> pd.DataFrame:
    """A stage's points without re-logged repeats: a per-round statistic (rollout reverse KL, response length) is
    logged at every step of its round, and plotted once, at the round's first step."""
    points = points.sort_values("step")
    return points[points["value"].ne(points["value"].shift())]


def plot_curves(curves: pd.DataFrame, metric: str, kind: str, path: Path, title: str) -> Path | None:
    sel = curves[(curves["metric"] == metric) & (curves["kind"] == kind)]
    if sel.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for stage, grp in sel.groupby("stage"):
        grp = new_values(grp)
        ax.plot(grp["step"], grp["value"], marker=".", label=stage)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def ta_sizes(df: pd.DataFrame) -> pd.DataFrame:
    """Student Rouge-L per teacher assistant, one row per TA (replicates pooled): the TA's stage, its model and
    parameter count, mean and 95 % half-width over the (training, sampling) seeds."""
    from takd.evaluate.metrics import mean_ci95
    from takd.models.registry import resolve

    via = df[(df["metric"] == "rouge_l") & (df["label"] == "via-ta")]
    rows = []
    for stage, grp in via.groupby(via["stage"].map(replicate_of)):
        ta = stage.split("-to-")[0].split("-", 1)[1]  # <method>-<TA>-to-<student>
        try:
            params = resolve(ta).params_m
        except Exception:  # a TA the registry cannot size (a directory that moved): no point on the size axis
            continue
        mean, ci = mean_ci95(grp["value"].tolist())
        rows.append({"stage": stage, "ta": ta, "params_m": params, "mean": mean, "ci95": ci, "n": len(grp)})
    return pd.DataFrame(rows).sort_values("params_m") if rows else pd.DataFrame()


def ta_size_curve(df: pd.DataFrame, path: Path, sizes: pd.DataFrame | None = None) -> Path | None:
    """The student's Rouge-L against the TA's size in parameters (log axis, 95 % intervals), with the direct
    teacher → student student as a band: drawn when there are several TAs (`sizes`: `ta_sizes(df)`, when the
    caller has it already)."""
    from takd.evaluate.metrics import mean_ci95

    sizes = ta_sizes(df) if sizes is None else sizes
    if len(sizes) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.errorbar(sizes["params_m"], sizes["mean"], yerr=sizes["ci95"].fillna(0), marker="o", capsize=4,
                label="student via TA")
    for x, y, name in zip(sizes["params_m"], sizes["mean"], sizes["ta"], strict=True):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    direct = df[(df["metric"] == "rouge_l") & (df["label"] == "direct")]["value"].tolist()
    if direct:
        mean, ci = mean_ci95(direct)
        ax.axhline(mean, color="grey", linestyle="--", label="direct (no TA)")
        if ci == ci:
            ax.axhspan(mean - ci, mean + ci, color="grey", alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("teacher assistant parameters (millions)")
    ax.set_ylabel("student Rouge-L")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _md_table(df: pd.DataFrame, floatfmt: str = "{:.2f}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(floatfmt.format(v) if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


def build_report(run_dirs: list[Path], out: Path) -> Path:
    run_dirs = unique_runs(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    df = collect(run_dirs)
    df.to_csv(out / "results.csv", index=False)
    s = summary(df)
    d = direct_vs_ta(df)
    generated = f"Generated {dt.datetime.now().isoformat(timespec='seconds')} from takd commit {git_revision()}."
    md: list[str | pd.DataFrame] = [f"# takd report: {', '.join(r.name for r in run_dirs)}", generated, ""]
    if "prompt_format" in df and df["prompt_format"].notna().any():
        formats = ", ".join(sorted(df["prompt_format"].dropna().unique()))
        md += [f"Prompt format: {formats} (alpaca: the reference's template; chat: each tokenizer's chat template).",
               ""]
    if not s.empty:
        md += ["## Rouge-L (mean ± 95 % CI over sampling seeds)", "",
               s[["run", "dataset", "label", "stage", "model", "mean", "ci95", "seeds", "train_seeds"]], "",
               f"![Rouge-L]({plot_rouge(s, out / 'rouge_l.png').name})", ""]
    rep = replication(df)
    if not rep.empty:
        outside = int((rep["paper in interval"] == "NO").sum())
        md += [f"## Against the paper: {PAPER_SOURCE}", "",
               f"{len(rep)} Table 1 cells measured; in {outside} the paper's value lies outside our 95 % interval over "
               "sampling seeds. That interval covers sampling only, not training: a cell outside it says these "
               "weights and this evaluation differ from the paper's by more than sampling noise. The GPT-4 column "
               "needs a judge (--judge-url).", "", rep, ""]
    if not d.empty:
        md += ["## Student via TA vs direct (paired by seed)", "", d, ""]
    c = method_comparison(df)
    if not c.empty:
        md += ["## Every student method against its SFT init and against MiniLLM direct (Rouge-L, paired by seed; "
               "verdict: the 95 % interval of the difference excludes 0 or not)", "", c, ""]
    items = item_scores(run_dirs)
    if not items.empty:
        md += ["## Rouge-L per task (mean over items and seeds)", "", by_item_group(items, "task"), "",
               "## Rouge-L by reference length in words (the paper's buckets)", "", by_item_group(items, "bucket"), ""]
    rkl = df[df["metric"].isin(["rev_kl", "eos_rate", "response_len"])]
    if not rkl.empty:
        md += ["## Held-out reverse KL to the teacher (nats/token, the model's own samples; EOS share %, mean length)",
               "", rkl.pivot_table(index=["label", "stage"], columns="metric", values="value",
                                   sort=False).reset_index(), ""]
    sizes = ta_sizes(df)
    ta = ta_size_curve(df, out / "ta_size.png", sizes)
    if ta:
        md += ["## TA-size curve (the student's Rouge-L by the assistant's size; dashed: direct, no TA)", "",
               sizes, "", f"![TA size]({ta.name})", ""]
    extra = df[df["metric"].isin(["ece", "accuracy"])]
    if not extra.empty:
        md += ["## Calibration (built-in classification items)", "",
               extra.pivot_table(index=["label", "stage"], columns="metric", values="value").reset_index(), ""]
    eb = exposure_by_length(df)
    if not eb.empty:
        md += ["## Exposure bias: ExAccErr (%) by generation length, against each model's teacher", "", eb, "",
               f"For comparison, {FIGURE6_SOURCE}, GPT-2 125M students of GPT-2 1.5B on Dolly:", "", figure6(), ""]
    curves = pd.concat([training_curves(r) for r in run_dirs], ignore_index=True)
    if not curves.empty:
        curves.to_csv(out / "curves.csv", index=False)
        md += ["## Training curves", ""]
        for metric, kind, title in [("loss", "train", "training loss"), ("rev_kl", "train", "reverse KL to teacher "
                                    "(pure-student samples, once per rollout round)"),
                                    ("response_len", "train", "rollout response length"),
                                    ("val_rev_kl", "eval", "held-out reverse KL to the teacher at each validation"),
                                    ("val_rouge_l", "eval", "validation Rouge-L")]:
            png = plot_curves(curves, metric, kind, out / f"curve_{metric}.png", title)
            if png:
                md += [f"![{title}]({png.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(_md_table(x) if isinstance(x, pd.DataFrame) else x for x in md))
    _write_html(md, report.with_suffix(".html"))
    return report


def _write_html(blocks: list[str | pd.DataFrame], out: Path) -> Path:
    """The report as one HTML page: tables rendered by pandas (real <table> elements), figures inline."""
    import html

    body = []
    for block in blocks:
        if isinstance(block, pd.DataFrame):
            body.append(block.to_html(index=False, border=0, float_format=lambda v: f"{v:.2f}", na_rep="",
                                      classes="results"))
        elif block.startswith("![") and "](" in block:
            src = block.split("](")[1].rstrip(")")
            body.append(f'<p><img src="{html.escape(src)}" style="max-width:100%"></p>')
        elif block.startswith("#"):
            level = len(block) - len(block.lstrip("#"))
            body.append(f"<h{level}>{html.escape(block.lstrip('# '))}</h{level}>")
        elif block:
            body.append(f"<p>{html.escape(block)}</p>")
    style = ("body{font-family:sans-serif;max-width:70em;margin:auto} table.results{border-collapse:collapse;"
             "margin:1em 0} table.results td,table.results th{padding:.2em .7em;border-bottom:1px solid #ccc;"
             "text-align:right}")
    out.write_text(f"<html><head><meta charset='utf-8'><style>{style}</style></head><body>\n" + "\n".join(body)
                   + "\n</body></html>\n")
    return out
