# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Direct vs teacher-assistant distillation
#
# Loads one or more takd run directories through `takd.report` (the same functions the report uses), shows every
# model's Rouge-L, the student distilled via the assistant against the direct teacher → student baseline, every
# student method against its init, the training curves, and a browser of the generations per task.
# Parameters (papermill-style; or set `TAKD_ANALYSIS_RUNS`, comma-separated, and `TAKD_ANALYSIS_OUT`):
# `RUN_DIRS` defaults to the newest run found under `./runs`, `../runs` (the repository's, when this notebook is
# opened from `analysis/`), `$TAKD_RUNS` and `$SCRATCH/takd-runs`.

# %% tags=["parameters"]
RUN_DIRS: list[str] = []
OUT_DIR = "out"

# %%
import os
from pathlib import Path

import pandas as pd
from IPython.display import Image, display

from takd.report.build import plot_curves, plot_rouge, training_curves
from takd.report.collect import collect, direct_vs_ta, generations, method_comparison, summary


def find_runs() -> list[str]:
    """The newest run directory (one holding plan.yaml) where takd puts runs."""
    roots = [Path("runs"), Path("..") / "runs"]
    roots += [Path(os.environ["TAKD_RUNS"])] if os.environ.get("TAKD_RUNS") else []
    roots += [Path(os.environ["SCRATCH"]) / "takd-runs"] if os.environ.get("SCRATCH") else []
    plans = [p for root in roots if root.is_dir() for p in root.glob("*/plan.yaml")]
    if not plans:
        raise SystemExit(f"no run found under {', '.join(map(str, roots))}: run the README's main command, or set "
                         "RUN_DIRS")
    return [str(max(plans, key=lambda p: p.stat().st_mtime).parent)]


if os.environ.get("TAKD_ANALYSIS_RUNS"):
    RUN_DIRS = os.environ["TAKD_ANALYSIS_RUNS"].split(",")
OUT_DIR = os.environ.get("TAKD_ANALYSIS_OUT", OUT_DIR)
runs = [Path(r) for r in (RUN_DIRS or find_runs())]
out = Path(OUT_DIR)
out.mkdir(parents=True, exist_ok=True)
pd.set_option("display.max_colwidth", 90)
print("runs:", ", ".join(map(str, runs)))

# %% [markdown]
# ## Every evaluated model

# %%
df = collect(runs)
table = summary(df)
table.to_csv(out / "summary.csv", index=False)
display(Image(plot_rouge(table, out / "rouge_l.png")))
table

# %% [markdown]
# ## Student via TA − direct (paired by seed), and every student method against its init and against direct

# %%
delta = direct_vs_ta(df)
delta.to_csv(out / "direct_vs_ta.csv", index=False)
display(delta)
method_comparison(df)

# %% [markdown]
# ## Training curves (each stage's own steps)

# %%
curves = training_curves(runs[0])
for metric, kind, title in [("loss", "train", "training loss"),
                            ("val_rev_kl", "eval", "held-out reverse KL to the teacher"),
                            ("val_rouge_l", "eval", "validation Rouge-L")]:
    png = plot_curves(curves, metric, kind, out / f"curve_{metric}.png", title)
    if png is not None:
        display(Image(png))

# %% [markdown]
# ## Generations, side by side
#
# One row per prompt: its task, instruction, reference and every model's answer (first sampling seed).
# `browse(task)` shows another task; `tasks` lists them.

# %%
answers = generations(runs)
tasks = sorted(answers["task"].unique()) if not answers.empty else []


def browse(task: str, n: int = 5) -> pd.DataFrame:
    return answers[answers["task"] == task].head(n)


print("tasks:", ", ".join(tasks))
browse(tasks[0]) if tasks else answers
