"""The paper's numbers beside ours: MiniLLM Table 1 (Rouge-L and GPT-4 feedback) and Figure 6 (ExAccErr by
generation length), kept as data files in `takd/configs/paper/` with their source in each file's header.

A result row matches a Table 1 row when its model is one of the authors' released checkpoints (its role and size),
or when it is a model of a run whose chain starts at the paper's teacher for that family: the teacher itself, the
student's MiniLLM stage straight from that teacher (label `direct`), and its SFT/KD/SeqKD baselines. A student
reached through a TA, or an init, has no Table 1 row.
"""

from __future__ import annotations

import pandas as pd

from takd.data.authors import PAPER_SETS
from takd.models import registry
from takd.paths import CONFIG_DIR

TABLE1_FILE = CONFIG_DIR / "paper" / "minillm_table1.csv"
FIGURE6_FILE = CONFIG_DIR / "paper" / "minillm_figure6.csv"
SOURCE = "MiniLLM Table 1 (Gu et al., ICLR 2024; arXiv 2306.08543 v4, https://arxiv.org/abs/2306.08543)"
FIGURE6_SOURCE = "MiniLLM Figure 6 (Gu et al., ICLR 2024; arXiv 2306.08543 v4), read off the figure (≈ ±0.2)"
LABEL_METHODS = {"direct": "minillm", "baseline-sft": "sft", "baseline-kd": "kd", "baseline-seqkd": "seqkd",
                 "teacher": "teacher"}


def table1() -> pd.DataFrame:
    return pd.read_csv(TABLE1_FILE, comment="#", dtype={"params": str})


def figure6() -> pd.DataFrame:
    return pd.read_csv(FIGURE6_FILE, comment="#")


def _size(spec: registry.ModelSpec) -> str:
    """The paper's name for a registry model's size: gpt2-120m -> 120M, opt-1.3b -> 1.3B."""
    return (spec.base or spec.name).rsplit("-", 1)[-1].upper()


def _spec(model: str) -> registry.ModelSpec | None:
    try:
        return registry.resolve(registry.base_model_name(str(model)))
    except Exception:  # a path that is gone, a name this registry does not know: no Table 1 row
        return None


def _paper_teacher(family: str) -> str | None:
    t = table1()
    rows = t[(t["family"] == family) & (t["method"] == "teacher")]
    return str(rows["params"].iloc[0]) if len(rows) else None


def table1_key(model: str, label: str, chain: str) -> tuple[str, str, str] | None:
    """(family, params, method) of the Table 1 row a result belongs to, or None."""
    spec = _spec(model)
    if spec is None:
        return None
    if spec.role:  # a released checkpoint: its role says which row
        return None if spec.role == "init" else (spec.family, _size(spec), spec.role)
    method = LABEL_METHODS.get(label)
    first = _spec(chain.split(",")[0]) if chain else None
    if method is None or first is None or _size(first) != _paper_teacher(spec.family):
        return None  # only a chain from the paper's teacher replicates a Table 1 row
    return spec.family, _size(spec), method


def replication(df: pd.DataFrame) -> pd.DataFrame:
    """Each measured Table 1 cell beside the paper's: Rouge-L mean ± 95 % half-width over sampling seeds, the
    paper's value, the difference, whether the paper's value lies inside our interval; GPT-4 feedback (judge_ratio)
    where a judge ran, else "not run"."""
    from takd.evaluate.metrics import mean_ci95

    if df.empty:
        return pd.DataFrame()
    paper = table1().set_index(["family", "params", "method"])
    chain = df["chain"] if "chain" in df else pd.Series("", index=df.index)
    sel = df.assign(chain=chain.fillna(""))
    sel = sel[sel["dataset"].isin(PAPER_SETS) & sel["metric"].isin(["rouge_l", "judge_ratio"])]
    rows = []
    for (run, stage, model, label, chain_, ds), grp in sel.groupby(
            ["run", "stage", "model", "label", "chain", "dataset"], sort=False):
        key = table1_key(model, label, chain_)
        if key is None or key not in paper.index:
            continue
        cell = paper.loc[key]
        rl = grp[grp["metric"] == "rouge_l"].sort_values("seed")["value"].tolist()
        if not rl:
            continue
        mean, ci = mean_ci95(rl)
        ref = float(cell[f"{ds}_rouge_l"])
        judge = grp[grp["metric"] == "judge_ratio"]["value"]
        gpt4_col = f"{ds}_gpt4"
        rows.append({"run": run, "stage": stage, "model": model, "paper row": " ".join(key), "dataset": ds,
                     "R-L ours": mean, "± 95 %": ci, "seeds": len(rl), "R-L paper": ref, "difference": mean - ref,
                     "paper in interval": "one seed" if len(rl) < 2 else ("yes" if abs(mean - ref) <= ci else "NO"),
                     "GPT-4 ours": float(judge.mean()) if len(judge) else "not run",
                     "GPT-4 paper": float(cell[gpt4_col]) if gpt4_col in cell and pd.notna(cell[gpt4_col]) else "-"})
    return pd.DataFrame(rows)


FIGURE6_LENGTHS = (5, 10, 25, 50, 100, 150, 200, 250)


def exposure_by_length(df: pd.DataFrame) -> pd.DataFrame:
    """ExAccErr (%) of every evaluated model at the paper's generation lengths (those the evaluation reached)."""
    if "position" not in df:
        return pd.DataFrame()
    eb = df[df["metric"] == "ex_acc_err"]
    if eb.empty:
        return pd.DataFrame()
    lengths = [n for n in FIGURE6_LENGTHS if n <= eb["position"].max()] or [int(eb["position"].max())]
    wide = eb[eb["position"].isin(lengths)].pivot_table(index=["run", "label", "stage"], columns="position",
                                                        values="value", sort=False)
    wide.columns = [str(int(c)) for c in wide.columns]
    return wide.reset_index()
