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
# Loads one or more takd run directories through `takd.report.collect`, shows every model's Rouge-L, the student
# distilled via the assistant against the direct teacher → student baseline, and the training curves.
# Parameters (papermill-style; or set `TAKD_ANALYSIS_RUNS`, comma-separated, and `TAKD_ANALYSIS_OUT`):
# `RUN_DIRS` defaults to the newest embedded-default run under `./runs`.

# %% tags=["parameters"]
RUN_DIRS: list[str] = []
OUT_DIR = "analysis/out"

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from takd.report.build import training_curves
from takd.report.collect import collect, direct_vs_ta, summary

if os.environ.get("TAKD_ANALYSIS_RUNS"):
    RUN_DIRS = os.environ["TAKD_ANALYSIS_RUNS"].split(",")
OUT_DIR = os.environ.get("TAKD_ANALYSIS_OUT", OUT_DIR)
if not RUN_DIRS:
    candidates = sorted(Path("runs").glob("tiny-l-tiny-m-tiny-s-*/plan.yaml"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise SystemExit("no run found: run the README's main command first, or set RUN_DIRS")
    RUN_DIRS = [str(candidates[-1].parent)]
runs = [Path(r) for r in RUN_DIRS]
out = Path(OUT_DIR)
out.mkdir(parents=True, exist_ok=True)
print("runs:", ", ".join(map(str, runs)))

# %% [markdown]
# ## Every evaluated model

# %%
df = collect(runs)
table = summary(df)
table.to_csv(out / "summary.csv", index=False)
table

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.bar([f"{r.label}\n{r.model}" for r in table.itertuples()], table["mean"], yerr=table["ci95"].fillna(0), capsize=4)
ax.set_ylabel("Rouge-L")
ax.set_title("Rouge-L (mean ± 95% CI over seeds)")
fig.tight_layout()
fig.savefig(out / "rouge_l.png", dpi=100)

# %% [markdown]
# ## Student via TA − direct (paired by seed)

# %%
delta = direct_vs_ta(df)
delta.to_csv(out / "direct_vs_ta.csv", index=False)
delta

# %% [markdown]
# ## Training curves

# %%
curves = training_curves(runs[0])
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for ax, metric in zip(axes, ["loss", "rev_kl"], strict=True):
    sel = curves[(curves["metric"] == metric) & (curves["kind"] == "train")]
    for stage, grp in sel.groupby("stage"):
        ax.plot(grp["step"], grp["value"], label=stage)
    ax.set_title(metric)
    ax.set_xlabel("step")
axes[0].legend(fontsize=6)
fig.tight_layout()
fig.savefig(out / "curves.png", dpi=100)
