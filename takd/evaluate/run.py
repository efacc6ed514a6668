"""One model's evaluation: sampled generation and Rouge-L exactly as the MiniLLM protocol (reference §7), plus
exposure bias, calibration and an LLM judge when asked, as one tidy table.

Protocol: sampling with top_k 0, top_p 1, temperature 1, `no_repeat_ngram_size` 6, prompts ≤ 256 tokens,
≤ 256 new tokens; output decoded without special tokens, cut at EOS, stripped; Rouge-L F-measure from
`rouge_score` (stemming on), max over references, ×100, averaged; seeds 10..50, mean over seeds.
In-training validation differs as in the reference: one sample per prompt, no n-gram block.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd

from takd.config import ConfigError
from takd.data.examples import Example, encode_rows
from takd.data.rows import load_rows, references, write_jsonl
from takd.evaluate.config import PROTOCOL_SEEDS, EvalJob
from takd.evaluate.generation import generate
from takd.evaluate.metrics import mean_ci95, score
from takd.models.cards import add_evaluation


def evaluate_model(model, tokenizer, examples: list[Example], seeds: tuple[int, ...] = PROTOCOL_SEEDS, *,
                   max_new_tokens: int = 256, batch_size: int = 16, no_repeat_ngram_size: int = 6,
                   meta: dict | None = None, generations_path: Path | None = None) -> pd.DataFrame:
    """Tidy rows (…meta, dataset, seed, metric, value) for every seed; generations optionally kept as JSONL."""
    rows, gens = [], []
    for seed in seeds:
        preds = generate(model, tokenizer, examples, seed=seed, max_new_tokens=max_new_tokens,
                         batch_size=batch_size, no_repeat_ngram_size=no_repeat_ngram_size, progress=True)
        for metric, value in score(preds, [e.row for e in examples]).items():
            rows.append({**(meta or {}), "seed": seed, "metric": metric, "value": value})
        gens.extend({"seed": seed, "prompt_row": e.row, "generation": p} for e, p in zip(examples, preds,
                                                                                           strict=True))
    if generations_path is not None:
        write_jsonl(generations_path, gens)
    return pd.DataFrame(rows)


def run_evaluation(job: EvalJob) -> pd.DataFrame:
    """Every evaluation `job` asks for, as tidy rows; generations kept under `job.output_dir`."""
    from takd.models.loading import load_model, load_tokenizer_for

    model, tok = load_model(job.model), load_tokenizer_for(job.model)
    meta = {"model": job.model, "prompt_format": job.prompt_format, **job.meta}
    out = Path(job.output_dir)
    frames = []
    prompts = {}
    for ds in job.datasets:
        ex = prompts[ds] = _prompts(job, tok, ds)
        if not ex:
            raise ConfigError(f"dataset {ds} split {job.split}: no prompt fits max_prompt_tokens="
                              f"{job.max_prompt_tokens}")
        t0 = time.time()
        df = evaluate_model(model, tok, ex, tuple(job.seeds), max_new_tokens=job.max_new_tokens,
                            batch_size=job.batch_size, meta={**meta, "dataset": ds},
                            generations_path=out / f"{ds}.gen.jsonl")
        frames.append(df)
        for metric, grp in df.groupby("metric"):
            m, ci = mean_ci95(grp["value"].tolist())
            print(f"{ds:10s} {metric:12s} {m:6.2f} ± {ci:.2f}  ({len(ex)} prompts, {len(job.seeds)} seeds, "
                  f"{time.time() - t0:.0f}s)", flush=True)
        if job.judge_url:
            frames.append(_judge_rows(job, ds, meta))
    if job.exposure_bias and job.teacher:
        frames.append(_exposure_rows(model, tok, job, meta))
    if job.reverse_kl:
        frames.append(_reverse_kl_rows(model, tok, job, meta, prompts[job.datasets[0]]))
    if job.calibration:
        frames.append(_calibration_rows(model, tok, job.calibration, meta, job.prompt_format))
    df = pd.concat(frames, ignore_index=True)
    if add_evaluation(job.model, card_table(df, job)):
        print(f"evaluation recorded in {Path(job.model) / 'README.md'}")
    return df


def card_table(df: pd.DataFrame, job: EvalJob) -> str:
    """The model card's evaluation section: each metric's mean ± 95 % half-width over the sampling seeds."""
    lines = [f"takd.evaluate, split `{job.split}`, {job.prompt_format} prompts, sampling seeds "
             f"{', '.join(map(str, job.seeds))}, at most {job.max_new_tokens} new tokens"
             + (f"; reverse KL to `{job.teacher}`" if job.teacher and job.reverse_kl else "") + ".", "",
             "| dataset | metric | mean | ± 95 % | seeds |", "|---|---|---|---|---|"]
    scalar = df[df["position"].isna()] if "position" in df else df
    for (ds, metric), grp in scalar.groupby(["dataset", "metric"], sort=False):
        m, ci = mean_ci95(grp["value"].tolist())
        lines.append(f"| {ds} | {metric} | {m:.2f} | {ci:.2f} | {grp['seed'].nunique()} |")
    return "\n".join(lines)


def write_results(df: pd.DataFrame, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.csv.tmp"
    df.to_csv(tmp, index=False)
    tmp.replace(out / "results.csv")
    return out / "results.csv"


def _judge_rows(job: EvalJob, ds: str, meta: dict) -> pd.DataFrame:
    from takd.evaluate.judge import JudgeClient, JudgeUnavailable, judge_ratio, redact

    gens = [json.loads(x) for x in (Path(job.output_dir) / f"{ds}.gen.jsonl").read_text().splitlines() if x.strip()]
    first_seed = gens[0]["seed"]
    items = [(g["prompt_row"]["instruction"] + ("\n" + g["prompt_row"]["input"] if g["prompt_row"].get("input")
                                                else ""), references(g["prompt_row"])[0], g["generation"])
             for g in gens if g["seed"] == first_seed]
    try:
        res = judge_ratio(JudgeClient(job.judge_url, job.judge_model or "gpt-4"), items)
    except Exception as err:  # JudgeUnavailable, or a malformed reply: evaluation goes on without the judge
        if not isinstance(err, (JudgeUnavailable, ValueError)):
            raise
        print(f"judge skipped: {redact(str(err))}", file=sys.stderr)
        return pd.DataFrame()
    print(f"{ds:10s} judge_ratio  {res['judge_ratio']:6.2f}  ({res['items']} prompts, {res['skipped']} skipped)")
    return pd.DataFrame([{**meta, "dataset": ds, "seed": first_seed, "metric": "judge_ratio",
                          "value": res["judge_ratio"]}])


def _exposure_rows(model, tok, job: EvalJob, meta: dict) -> pd.DataFrame:
    from takd.evaluate.exposure_bias import exposure_bias
    from takd.models.loading import load_model

    ex = encode_rows(load_rows(job.datasets[0], job.split), tok, job.max_prompt_tokens, job.max_new_tokens,
                     with_response=False, prompt_format=job.prompt_format)[: job.exposure_prompts]
    res = exposure_bias(model, load_model(job.teacher), tok, ex, max_new_tokens=job.max_new_tokens)
    shown = min(15, job.max_new_tokens - 1)  # the reference prints index 15
    print(f"exposure bias: ExAccErr({shown + 1}) = {res['ex_acc_err'][shown]:.1f} % ({len(ex)} prompts)")
    return pd.DataFrame([{**meta, "dataset": "exposure_bias", "seed": 10, "position": pos + 1,
                          "metric": "ex_acc_err", "value": v} for pos, v in enumerate(res["ex_acc_err"])])


def _prompts(job: EvalJob, tok, ds: str) -> list[Example]:
    """`ds`'s prompts the evaluation uses: encoded in the job's format, the first `max_prompts` (0: all)."""
    ex = encode_rows(load_rows(ds, job.split), tok, job.max_prompt_tokens, job.max_new_tokens, with_response=False,
                     prompt_format=job.prompt_format)
    return ex[: job.max_prompts] if job.max_prompts else ex


def _reverse_kl_rows(model, tok, job: EvalJob, meta: dict, ex: list[Example]) -> pd.DataFrame:
    """KL(q‖p) per response token of the model q to its teacher p on q's own samples (`rev_kl`, with a teacher),
    the share of those answers that end with EOS (`eos_rate`, %) and their mean length (`response_len`)."""
    from takd.models.loading import load_model
    from takd.sampling import reverse_kl_over

    teacher = load_model(job.teacher) if job.teacher else None
    totals = reverse_kl_over(model, teacher, ex, tok.pad_token_id, tok.eos_token_id,
                             max_new_tokens=job.max_new_tokens, seed=job.seeds[0], batch_size=job.batch_size)
    values = {"eos_rate": 100 * totals["ended"] / totals["rows"], "response_len": totals["tokens"] / totals["rows"]}
    if teacher is not None:
        values = {"rev_kl": totals["rkl"] / max(totals["tokens"], 1.0), **values}
        print(f"reverse KL to {job.teacher}: {values['rev_kl']:.3f} nats/token", end="; ")
    print(f"{values['eos_rate']:.0f} % of answers end with EOS, {values['response_len']:.1f} tokens ({len(ex)} "
          "prompts)")
    return pd.DataFrame([{**meta, "dataset": job.datasets[0], "seed": job.seeds[0], "metric": k, "value": v}
                         for k, v in values.items()])


def _calibration_rows(model, tok, source: str, meta: dict, prompt_format: str) -> pd.DataFrame:
    from takd.evaluate.calibration import calibration

    rows = load_rows("builtin", "test") if source == "builtin" else load_rows(source, "test")
    res = calibration(model, tok, rows, prompt_format=prompt_format)
    print(f"calibration: ECE {res['ece']:.3f}, accuracy {res['accuracy']:.1f} % ({res['items']} items)")
    return pd.DataFrame([{**meta, "dataset": "calibration", "seed": 0, "metric": k, "value": res[k]}
                         for k in ("ece", "accuracy")])
