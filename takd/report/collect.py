"""Collect evaluation rows from run directories into one tidy DataFrame, and summarise direct vs via-TA.

Rows: run, chain, label (teacher | ta | init | via-ta | direct | baseline-<m>), stage, model, method, teacher,
dataset, train_seed, seed, metric, value. Interval: mean ± t-based 95 % half-width across seeds.

Training seeds (`takd.plan --train-seeds`): the replicates of a stage (`<stage>-seed<k>`, train_seed k) are pooled:
a model's mean and interval are over every (training seed, sampling seed) pair, and paired comparisons pair
(training seed, sampling seed); a stage trained once (train_seed 0: the teacher, the inits) pairs with every
replicate at the same sampling seed. Runs given twice count once.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import yaml

from takd.evaluate.metrics import mean_ci95

LABEL_ORDER = ["teacher", "ta", "init", "via-ta", "direct", "baseline-sft", "baseline-kd", "baseline-seqkd"]


def unique_runs(run_dirs: list[str | Path]) -> list[Path]:
    """Each run once, in the order given: a run passed twice (or by two paths) must not count its seeds twice."""
    return list(dict.fromkeys(Path(r).resolve() for r in run_dirs))


def collect(run_dirs: list[str | Path]) -> pd.DataFrame:
    frames = []
    for run in unique_runs(run_dirs):
        plan = yaml.safe_load((run / "plan.yaml").read_text()) if (run / "plan.yaml").is_file() else {}
        for f in sorted((run / "stages").glob("eval-*/results.csv")):
            df = pd.read_csv(f)
            df.insert(0, "run", run.name)
            df.insert(1, "chain", ",".join(plan.get("chain", [])))
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["run", "chain", "label", "stage", "model", "method", "dataset", "train_seed",
                                     "seed", "metric", "value"])
    return with_train_seed(pd.concat(frames, ignore_index=True))


def with_train_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Every row's training seed as an integer: 0 for a stage trained once, and for rows that carry none."""
    seeds = df["train_seed"] if "train_seed" in df else pd.Series(0, index=df.index)
    return df.assign(train_seed=seeds.fillna(0).astype(int))


def replicate_of(stage: str) -> str:
    """The stage a training-seed replicate belongs to: `minillm-a-to-b-seed2` -> `minillm-a-to-b`."""
    return re.sub(r"-seed\d+$", "", str(stage))


def summary(df: pd.DataFrame, metric: str = "rouge_l") -> pd.DataFrame:
    """Mean and 95 % half-width per (run, label, stage, model, dataset), over its seeds: sampling seeds, and the
    training seeds of its replicates pooled (`seeds` counts the pairs, `train_seeds` the replicates)."""
    rows = []
    keys = ["run", "label", "stage", "model", "dataset"]
    sel = with_train_seed(df[df["metric"] == metric]).assign(stage=lambda d: d["stage"].map(replicate_of))
    for key, grp in sel.groupby(keys, sort=False):
        mean, ci = mean_ci95(grp.sort_values(["train_seed", "seed"])["value"].tolist())
        rows.append({**dict(zip(keys, key, strict=True)), "mean": mean, "ci95": ci, "seeds": len(grp),
                     "train_seeds": grp["train_seed"].nunique()})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["order"] = out["label"].map({k: i for i, k in enumerate(LABEL_ORDER)}).fillna(99)
    return out.sort_values(["run", "dataset", "order"]).drop(columns="order").reset_index(drop=True)


STUDENT_METHODS = ["via-ta", "direct", "baseline-sft", "baseline-kd", "baseline-seqkd"]


def paired_table(grp: pd.DataFrame) -> pd.DataFrame:
    """Values by (train_seed, seed) × label. A label trained once (train_seed 0) is repeated for every training seed
    of the replicated labels, so each replicate pairs with it at the same sampling seed."""
    grp = with_train_seed(grp)
    shared = grp[grp["train_seed"] == 0].pivot_table(index="seed", columns="label", values="value")
    replicated = grp[grp["train_seed"] != 0]
    if replicated.empty:
        return shared
    wide = replicated.pivot_table(index=["train_seed", "seed"], columns="label", values="value")
    return wide.join(shared.drop(columns=[c for c in shared.columns if c in wide.columns]), on="seed")


def paired_delta(wide: pd.DataFrame, a: str, b: str) -> tuple[float, float, int]:
    """Mean and 95 % half-width of a − b over the seeds both were evaluated with (seed-indexed columns a, b)."""
    diff = (wide[a] - wide[b]).dropna().tolist()
    mean, ci = mean_ci95(diff)
    return mean, ci, len(diff)


def verdict(delta: float, ci95: float, seeds: int) -> str:
    """A plain reading of a paired difference: outside its 95 % interval or not."""
    if seeds < 2 or ci95 != ci95:  # one seed: no interval to judge by
        return "one seed: no interval"
    if delta - ci95 > 0:
        return "better"
    return "worse" if delta + ci95 < 0 else "within noise"


def direct_vs_ta(df: pd.DataFrame, metric: str = "rouge_l") -> pd.DataFrame:
    """Per dataset: student via TA − direct, paired by seed, with its 95 % interval."""
    rows = []
    sel = df[(df["metric"] == metric) & df["label"].isin(["via-ta", "direct"])]
    for (run, ds), grp in sel.groupby(["run", "dataset"]):
        wide = paired_table(grp)
        if {"via-ta", "direct"} <= set(wide.columns):
            mean, ci, n = paired_delta(wide, "via-ta", "direct")
            rows.append({"run": run, "dataset": ds, "via_ta": wide["via-ta"].mean(), "direct": wide["direct"].mean(),
                         "delta": mean, "ci95": ci, "seeds": n})
    return pd.DataFrame(rows)


def method_comparison(df: pd.DataFrame, metric: str = "rouge_l") -> pd.DataFrame:
    """The paper's comparison for the student: every student method (MiniLLM via TA and direct, the SFT/KD/SeqKD
    baselines) against its SFT init and against MiniLLM direct, paired by sampling seed, with the 95 % interval of
    the difference and a plain verdict (better / worse / within noise)."""
    rows = []
    sel = df[(df["metric"] == metric) & df["label"].isin(["init", *STUDENT_METHODS])]
    for (run, ds), grp in sel.groupby(["run", "dataset"], sort=False):
        wide = paired_table(grp)
        for student in [m for m in STUDENT_METHODS if m in wide.columns]:
            for against in [r for r in ("init", "direct") if r in wide.columns and r != student]:
                mean, ci, n = paired_delta(wide, student, against)
                rows.append({"run": run, "dataset": ds, "student": student, "against": against,
                             "student_mean": wide[student].mean(), "against_mean": wide[against].mean(),
                             "delta": mean, "ci95": ci, "seeds": n, "verdict": verdict(mean, ci, n)})
    return pd.DataFrame(rows)


LENGTH_BUCKETS = ((0, 5, "[0,5]"), (6, 10, "[6,10]"), (11, 10**9, "[11,∞)"))


def length_bucket(reference: str) -> str:
    """The paper's buckets of the reference answer's length, in words (the longest reference when there are several)."""
    n = len(reference.split())
    return next(name for lo, hi, name in LENGTH_BUCKETS if lo <= n <= hi)


def _generated(run_dirs: list[str | Path]):
    """(run name, eval meta row, dataset, one generation record) for every `<dataset>.gen.jsonl` of the runs."""
    from takd.data.rows import read_jsonl

    for run in unique_runs(run_dirs):
        for results in sorted((run / "stages").glob("eval-*/results.csv")):
            meta = pd.read_csv(results, nrows=1).iloc[0]
            for gen_file in sorted(results.parent.glob("*.gen.jsonl")):
                for g in read_jsonl(gen_file):
                    yield run.name, meta, gen_file.name.removesuffix(".gen.jsonl"), g


def item_scores(run_dirs: list[str | Path]) -> pd.DataFrame:
    """One row per generated answer, from each evaluation's `<dataset>.gen.jsonl`: run, label, stage, dataset,
    seed, task (the row's `task`, else "all"), reference-length bucket and its Rouge-L."""
    from takd.data.rows import references
    from takd.evaluate.metrics import rouge_l

    rows = []
    for run, meta, dataset, g in _generated(run_dirs):
        refs = references(g["prompt_row"])
        rows.append({"run": run, "label": meta.get("label", ""), "stage": meta.get("stage", ""), "dataset": dataset,
                     "seed": g["seed"], "task": g["prompt_row"].get("task", "all"),
                     "bucket": length_bucket(max(refs, key=lambda r: len(r.split()))),
                     "rouge_l": rouge_l(g["generation"], refs)})
    return pd.DataFrame(rows)


def generations(run_dirs: list[str | Path], seed: int | None = None) -> pd.DataFrame:
    """The answers side by side: one row per (run, dataset, prompt) with its task, instruction, reference, and one
    column per evaluated model (its label) holding that model's answer at one sampling seed (default: the first)."""
    from takd.data.rows import references, shown_instruction

    rows = [{"run": run, "dataset": dataset, "task": g["prompt_row"].get("task", "all"),
             "instruction": shown_instruction(g["prompt_row"]), "reference": references(g["prompt_row"])[0],
             "label": meta.get("label", ""), "seed": g["seed"], "answer": g["generation"]}
            for run, meta, dataset, g in _generated(run_dirs)]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df = df[df["seed"] == (df["seed"].min() if seed is None else seed)]
    wide = df.pivot_table(index=["run", "dataset", "task", "instruction", "reference"], columns="label",
                          values="answer", aggfunc="first", sort=False).reset_index()
    wide.columns.name = None
    order = [c for c in LABEL_ORDER if c in wide.columns]
    return wide[["run", "dataset", "task", "instruction", "reference", *order,
                 *[c for c in wide.columns if c not in order and c not in ("run", "dataset", "task", "instruction",
                                                                         "reference")]]]


def by_item_group(items: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean Rouge-L per (run, dataset, label) and value of `column` (task or bucket): rows = models, columns = groups;
    a group every model scores 0 on shows as a column of zeros."""
    if items.empty:
        return items
    order = {k: i for i, k in enumerate(LABEL_ORDER)}
    table = items.pivot_table(index=["run", "dataset", "label", "stage"], columns=column, values="rouge_l",
                              aggfunc="mean").reset_index()
    table.columns.name = None
    if column == "bucket":  # the paper's order, not the alphabet's
        keep = [c for c in table.columns if c not in {name for *_, name in LENGTH_BUCKETS}]
        table = table[keep + [name for *_, name in LENGTH_BUCKETS if name in table.columns]]
    return table.sort_values(["run", "dataset", "label"], key=lambda c: c.map(order) if c.name == "label" else c)


def print_summary(run_dir: str | Path) -> None:
    df = collect([run_dir])
    if df.empty:
        print("no evaluation results yet")
        return
    (Path(run_dir) / "results.csv").write_text(df.to_csv(index=False))
    s = summary(df)
    print("\nRouge-L (mean ± 95% CI over seeds):")
    for _, r in s.iterrows():
        print(f"  {r['dataset']:9s} {r['label']:15s} {r['stage']:32s} {r['mean']:6.2f} ± {r['ci95']:.2f}")
    d = direct_vs_ta(df)
    for _, r in d.iterrows():
        print(f"\n{r['dataset']}: student via TA {r['via_ta']:.2f} vs direct {r['direct']:.2f}: "
              f"delta {r['delta']:+.2f} ± {r['ci95']:.2f} ({r['seeds']} seeds)")
    print(f"\nall rows: {Path(run_dir) / 'results.csv'}")
