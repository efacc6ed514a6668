"""Results, report and the analysis notebook on the output of a real tiny-chain run."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from takd.report.cli import main as report_main
from takd.report.collect import collect, direct_vs_ta, summary

REPO = Path(__file__).resolve().parent.parent


def _assert_real_png(path: Path) -> None:
    img = mpimg.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0.01, path  # not blank


def test_results_rows_and_direct_vs_ta(fast_chain_run):
    run, rc, _ = fast_chain_run
    assert rc == 0
    df = collect([run])
    columns = {"run", "chain", "label", "stage", "model", "method", "dataset", "seed", "metric", "value"}
    assert columns <= set(df.columns)
    assert set(df[df["metric"] == "rouge_l"]["label"]) == {"teacher", "ta", "init", "via-ta", "direct"}
    d = direct_vs_ta(df)
    rl = df[(df["metric"] == "rouge_l") & (df["dataset"] == "builtin")]
    by_seed = rl.pivot_table(index="seed", columns="label", values="value")
    assert d.iloc[0]["delta"] == pytest.approx((by_seed["via-ta"] - by_seed["direct"]).mean())
    assert d.iloc[0]["seeds"] == 2
    # the same run passed twice (here also by another path) counts its seeds once: the same intervals
    twice = summary(collect([run, Path(run).parent / ".." / Path(run).parent.name / Path(run).name]))
    assert twice.equals(summary(df)) and set(twice["seeds"]) == {2}


def test_report_tables_and_figures(fast_chain_run, tmp_path):
    run, _, _ = fast_chain_run
    assert report_main([str(run), "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    s = summary(collect([run]))
    for _, r in s.iterrows():
        assert f"{r['mean']:.2f}" in report, r["stage"]
    for png in ["rouge_l.png", "curve_loss.png", "curve_rev_kl.png"]:
        _assert_real_png(tmp_path / "rep" / png)
    assert "Calibration" in report and "Exposure bias" in report
    page = (tmp_path / "rep" / "report.html").read_text()
    # the same figures as real HTML tables (pandas renders them), every figure inline
    tables = page.count('<table class="dataframe results">')
    assert tables == report.count("\n|---|") and tables >= 3 and "<pre>" not in page
    assert f"<td>{s.iloc[0]['stage']}</td>" in page and f"{s.iloc[0]['mean']:.2f}" in page
    assert page.count("<img ") == report.count("![")
    assert report_main([str(tmp_path)]) == 2  # not a run directory


def test_notebook_executes_from_analysis_with_inline_figures_and_matches_takd_results(fast_chain_run, tmp_path,
                                                                                       monkeypatch):
    """Opened from analysis/ as a researcher would: it finds the newest run under $TAKD_RUNS, shows its figures
    inline (the report's own plotting functions), and its tables equal takd.report's."""
    run, _, _ = fast_chain_run
    nb = nbformat.read(REPO / "analysis" / "direct_vs_ta.ipynb", as_version=4)
    out = tmp_path / "nb"
    monkeypatch.setenv("TAKD_RUNS", str(run.parent))
    monkeypatch.setenv("TAKD_ANALYSIS_OUT", str(out))
    monkeypatch.delenv("TAKD_ANALYSIS_RUNS", raising=False)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "analysis")}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    for png in ["rouge_l.png", "curve_loss.png", "curve_val_rev_kl.png"]:
        _assert_real_png(out / png)
    got = pd.read_csv(out / "summary.csv")
    want = summary(collect([run]))
    assert got["mean"].tolist() == pytest.approx(want["mean"].tolist())
    got_d = pd.read_csv(out / "direct_vs_ta.csv")
    assert got_d["delta"].tolist() == pytest.approx(direct_vs_ta(collect([run]))["delta"].tolist())
    last = nb.cells[-1]["outputs"][-1]["data"]["text/html"]  # the generations browser: answers side by side
    assert "<table" in last and "instruction" in last and "via-ta" in last and "direct" in last


def test_paired_notebook_files_are_in_sync():
    import jupytext

    py = jupytext.read(REPO / "analysis" / "direct_vs_ta.py")
    ipynb = nbformat.read(REPO / "analysis" / "direct_vs_ta.ipynb", as_version=4)
    assert [c.source for c in py.cells] == [c.source for c in ipynb.cells]


def test_per_round_values_are_plotted_once_per_round():
    from takd.report.build import new_values

    logged = pd.DataFrame({"step": [4, 1, 2, 3, 5], "value": [2.5, 3.0, 3.0, 2.5, 2.5]})  # rounds at steps 1 and 3
    assert new_values(logged)["step"].tolist() == [1, 3]


def test_every_student_method_is_compared_with_init_and_direct_paired_by_seed():
    from takd.report.collect import method_comparison, verdict

    values = {"init": [20.0, 22.0, 21.0], "direct": [30.0, 31.0, 32.0], "baseline-kd": [20.5, 21.0, 22.5],
              "teacher": [50.0, 50.0, 50.0]}
    df = pd.DataFrame([{"run": "r", "dataset": "d", "label": label, "seed": seed, "metric": "rouge_l", "value": v}
                       for label, vs in values.items() for seed, v in zip((10, 20, 30), vs, strict=True)])
    c = method_comparison(df).set_index(["student", "against"])
    assert sorted(c.index) == [("baseline-kd", "direct"), ("baseline-kd", "init"), ("direct", "init")]
    # direct − init per seed: 10, 9, 11 -> mean 10, sd 1, t(0.975, 2) = 4.303 -> ± 4.303/√3 = 2.484
    row = c.loc[("direct", "init")]
    assert row["delta"] == pytest.approx(10.0) and row["ci95"] == pytest.approx(4.303 / 3**0.5, abs=1e-3)
    assert row["verdict"] == "better" and c.loc[("baseline-kd", "direct")]["verdict"] == "worse"
    assert c.loc[("baseline-kd", "init")]["verdict"] == "within noise"  # +0.5, −1.0, +1.5: the interval spans 0
    assert verdict(3.0, float("nan"), 1) == "one seed: no interval"


def test_rouge_l_per_task_and_reference_length_bucket_from_the_generations(tmp_path):
    from takd.data.rows import write_jsonl
    from takd.report.collect import by_item_group, item_scores

    ev = tmp_path / "run" / "stages" / "eval-m"
    ev.mkdir(parents=True)
    pd.DataFrame([{"model": "m", "stage": "m", "label": "direct", "dataset": "builtin", "seed": 10,
                   "metric": "rouge_l", "value": 0.0}]).to_csv(ev / "results.csv", index=False)
    long = "one two three four five six seven eight nine ten eleven twelve"
    write_jsonl(ev / "builtin.gen.jsonl", [
        {"seed": 10, "prompt_row": {"instruction": "a", "output": "red fox", "task": "colour"},
         "generation": "red fox"},
        {"seed": 10, "prompt_row": {"instruction": "b", "output": ["blue", "green sky"], "task": "colour"},
         "generation": "wrong"},
        {"seed": 10, "prompt_row": {"instruction": "c", "output": long, "task": "reverse"}, "generation": long}])
    items = item_scores([tmp_path / "run"])
    assert items["bucket"].tolist() == ["[0,5]", "[0,5]", "[11,∞)"]  # a list of references: the longest's length
    tasks = by_item_group(items, "task").iloc[0]
    assert tasks["colour"] == pytest.approx(50.0) and tasks["reverse"] == pytest.approx(100.0)  # rouge ×100
    buckets = by_item_group(items, "bucket")
    assert list(buckets.columns)[-2:] == ["[0,5]", "[11,∞)"] and buckets.iloc[0]["[0,5]"] == pytest.approx(50.0)


def test_training_seed_replicates_are_pooled_and_paired_by_both_seeds(tmp_path):
    """Two training seeds of MiniLLM direct (stages -seed1, -seed2) against one init, three sampling seeds:
    direct − init is 3 at training seed 1 and 4 at seed 2 at every sampling seed, so the pooled difference is 3.5
    over 6 pairs; the replicates are one model in the summary (mean over 6 values, 2 training seeds)."""
    from takd.report.collect import method_comparison

    run = tmp_path / "run"
    rows = []
    for s in (10, 20, 30):
        rows.append({"stage": "init-tiny-s", "label": "init", "train_seed": None, "seed": s, "value": 10 + s / 10})
        for k in (1, 2):
            rows.append({"stage": f"minillm-tiny-l-to-tiny-s-seed{k}", "label": "direct", "train_seed": k, "seed": s,
                         "value": 12 + k + s / 10})
    for stage in {r["stage"] for r in rows}:
        d = run / "stages" / f"eval-{stage}"
        d.mkdir(parents=True)
        mine = [{**r, "model": "tiny-s", "method": "minillm", "teacher": "", "dataset": "builtin",
                 "metric": "rouge_l"} for r in rows if r["stage"] == stage]
        pd.DataFrame(mine).to_csv(d / "results.csv", index=False)
    df = collect([run, run])  # given twice: counted once
    c = method_comparison(df)
    row = c[(c["student"] == "direct") & (c["against"] == "init")].iloc[0]
    assert row["delta"] == pytest.approx(3.5) and row["seeds"] == 6 and row["verdict"] == "better"
    s = summary(df).set_index("label")
    assert s.loc["direct", "stage"] == "minillm-tiny-l-to-tiny-s" and s.loc["direct", "mean"] == pytest.approx(15.5)
    assert (s.loc["direct", "seeds"], s.loc["direct", "train_seeds"]) == (6, 2)
    assert (s.loc["init", "seeds"], s.loc["init", "train_seeds"]) == (3, 1)


def test_ta_size_curve_has_a_numeric_size_axis_intervals_and_the_direct_band(tmp_path):
    from takd.report.build import ta_size_curve, ta_sizes

    rows = [{"run": "r", "dataset": "d", "metric": "rouge_l", "label": label, "stage": stage, "seed": seed,
             "train_seed": 0, "value": base + seed / 100}
            for label, stage, base in [("via-ta", "minillm-opt-6.7b-to-opt-1.3b", 20.0),
                                       ("via-ta", "minillm-opt-2.7b-to-opt-1.3b", 22.0),
                                       ("direct", "minillm-opt-13b-to-opt-1.3b", 19.0)]
            for seed in (10, 20, 30)]
    sizes = ta_sizes(pd.DataFrame(rows))
    assert sizes["ta"].tolist() == ["opt-2.7b", "opt-6.7b"] and sizes["params_m"].tolist() == [2652, 6658]
    assert sizes["mean"].tolist() == pytest.approx([22.2, 20.2]) and (sizes["ci95"] > 0).all()
    _assert_real_png(ta_size_curve(pd.DataFrame(rows), tmp_path / "ta.png"))
