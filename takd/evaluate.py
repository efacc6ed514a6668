"""Evaluation: sampled generation and Rouge-L exactly as the MiniLLM protocol (reference §7).

Protocol: sampling with top_k 0, top_p 1, temperature 1, `no_repeat_ngram_size` 6, prompts ≤ 256 tokens,
≤ 256 new tokens; output decoded without special tokens, cut at EOS, stripped; Rouge-L F-measure from
`rouge_score` (stemming on), max over references, ×100, averaged; seeds 10..50, mean over seeds.
In-training validation differs as in the reference: one sample per prompt, no n-gram block.

CLI: python -m takd.evaluate --model PATH [--dataset builtin] [--split test] [--seeds 10,20,30,40,50]
"""

from __future__ import annotations

import argparse
import math
import re
import string
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from rouge_score import rouge_scorer

from takd.data import Example, collate_prompts, encode_rows, iterate, load_rows, references, write_jsonl

PROTOCOL_SEEDS = (10, 20, 30, 40, 50)
_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, refs: list[str]) -> float:
    """Rouge-L F-measure ×100, maximum over references."""
    return 100.0 * max(_SCORER.score(r, prediction)["rougeL"].fmeasure for r in refs)


def _normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower, drop punctuation and articles, squeeze spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, refs: list[str]) -> float:
    return 100.0 * max(float(_normalize_answer(prediction) == _normalize_answer(r)) for r in refs)


@torch.no_grad()
def generate(model, tokenizer, examples: list[Example], *, seed: int, max_new_tokens: int, batch_size: int = 16,
             no_repeat_ngram_size: int = 0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             progress: bool = False, synced_gpus: bool = False) -> list[str]:
    """Sample one response per example. Deterministic for a seed; does not disturb the global RNG.

    synced_gpus: the model's weights are ZeRO-3 shards, so every rank calls this with the same number of batches
    and each `generate` keeps stepping until all ranks' sequences have ended."""
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    batches = list(iterate(examples, batch_size))
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc=f"generate seed={seed}", leave=False, file=sys.stderr,
                       mininterval=0.5 if sys.stderr.isatty() else 30.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for chunk in batches:
            batch = collate_prompts(chunk, tokenizer.pad_token_id)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model.generate(
                **batch, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p,
                max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size or None,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, synced_gpus=synced_gpus,
            )
            new = out[:, batch["input_ids"].shape[1]:]
            outputs.extend(cut_at_eos(t, tokenizer) for t in new.tolist())
    model.train(was_training)
    return outputs


def cut_at_eos(token_ids: list[int], tokenizer) -> str:
    if tokenizer.eos_token_id in token_ids:
        token_ids = token_ids[: token_ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def score(predictions: list[str], examples: list[Example]) -> dict[str, float]:
    refs = [references(e.row) for e in examples]
    rl = [rouge_l(p, r) for p, r in zip(predictions, refs, strict=True)]
    em = [exact_match(p, r) for p, r in zip(predictions, refs, strict=True)]
    return {"rouge_l": sum(rl) / len(rl), "exact_match": sum(em) / len(em)}


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a normal-approximation 95 % interval (t-quantile for n ≤ 30)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}.get(n, 1.96)
    return mean, t * sd / math.sqrt(n)


def evaluate_model(model, tokenizer, examples: list[Example], seeds: tuple[int, ...] = PROTOCOL_SEEDS, *,
                   max_new_tokens: int = 256, batch_size: int = 16, no_repeat_ngram_size: int = 6,
                   meta: dict | None = None, generations_path: Path | None = None) -> pd.DataFrame:
    """Tidy rows (…meta, dataset, seed, metric, value) for every seed; generations optionally kept as JSONL."""
    rows, gens = [], []
    for seed in seeds:
        preds = generate(model, tokenizer, examples, seed=seed, max_new_tokens=max_new_tokens,
                         batch_size=batch_size, no_repeat_ngram_size=no_repeat_ngram_size, progress=True)
        for metric, value in score(preds, examples).items():
            rows.append({**(meta or {}), "seed": seed, "metric": metric, "value": value})
        gens.extend({"seed": seed, "prompt_row": e.row, "generation": p} for e, p in zip(examples, preds,
                                                                                           strict=True))
    if generations_path is not None:
        write_jsonl(generations_path, gens)
    return pd.DataFrame(rows)


def run_evaluation(model_path: str, *, datasets: list[str], split: str = "test",
                   seeds: tuple[int, ...] = PROTOCOL_SEEDS, max_prompts: int = 0, max_new_tokens: int = 256,
                   max_prompt_tokens: int = 256, batch_size: int = 16, out: Path, meta: dict | None = None,
                   teacher: str | None = None, exposure_bias: bool = False, exposure_prompts: int = 50,
                   calibration: str | None = None, judge_url: str | None = None, judge_model: str | None = None
                   ) -> pd.DataFrame:
    """Every requested evaluation of one model as tidy rows; generations kept under `out`."""
    from takd.models import load_model, load_tokenizer_for

    model, tok = load_model(model_path), load_tokenizer_for(model_path)
    meta = {"model": model_path, **(meta or {})}
    frames = []
    for ds in datasets:
        ex = encode_rows(load_rows(ds, split), tok, max_prompt_tokens, max_new_tokens, with_response=False)
        ex = ex[:max_prompts] if max_prompts else ex
        t0 = time.time()
        df = evaluate_model(model, tok, ex, seeds, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            meta={**meta, "dataset": ds}, generations_path=out / f"{ds}.gen.jsonl")
        frames.append(df)
        for metric, grp in df.groupby("metric"):
            m, ci = mean_ci95(grp["value"].tolist())
            print(f"{ds:10s} {metric:12s} {m:6.2f} ± {ci:.2f}  ({len(ex)} prompts, {len(seeds)} seeds, "
                  f"{time.time() - t0:.0f}s)", flush=True)
        if judge_url:
            frames.append(_judge_rows(judge_url, judge_model, ds, out, meta))
    if exposure_bias and teacher:
        frames.append(_exposure_rows(model, tok, teacher, datasets[0], split, exposure_prompts, max_prompt_tokens,
                                     max_new_tokens, meta))
    if calibration:
        frames.append(_calibration_rows(model, tok, calibration, meta))
    return pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m takd.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="registry name or HF directory")
    ap.add_argument("--datasets", default="builtin", help="comma list: builtin,dolly,selfinst,vicuna,sni,unni")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seeds", default=",".join(map(str, PROTOCOL_SEEDS)))
    ap.add_argument("--max-prompts", type=int, default=0, help="evaluate the first N prompts only (0 = all)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--max-prompt-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None, help="folder for results.csv and generations (default: <model>/eval)")
    ap.add_argument("--teacher", default=None, help="with --exposure-bias: the teacher (registry name or HF dir)")
    ap.add_argument("--exposure-bias", action="store_true", help="ExAccErr(l) of --model against --teacher")
    ap.add_argument("--exposure-prompts", type=int, default=50, help="prompts for the exposure-bias estimate")
    ap.add_argument("--calibration", default=None, metavar="JSONL|builtin",
                    help="ECE (10 bins) and accuracy on classification items with `labels` (builtin: the built-in "
                         "task's parity/colour items)")
    ap.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL for the LLM judge")
    ap.add_argument("--judge-model", default=None, help="judge model name at --judge-url")
    args = ap.parse_args(argv)
    if args.exposure_bias and not args.teacher:
        ap.error("--exposure-bias needs --teacher")
    out = Path(args.out) if args.out else Path(args.model) / "eval"
    df = run_evaluation(args.model, datasets=args.datasets.split(","), split=args.split,
                        seeds=tuple(int(s) for s in args.seeds.split(",")), max_prompts=args.max_prompts,
                        max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
                        batch_size=args.batch_size, out=out, teacher=args.teacher, exposure_bias=args.exposure_bias,
                        exposure_prompts=args.exposure_prompts, calibration=args.calibration,
                        judge_url=args.judge_url, judge_model=args.judge_model)
    write_results(df, out)
    print(f"wrote {out / 'results.csv'}")
    return 0


def write_results(df: pd.DataFrame, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.csv.tmp"
    df.to_csv(tmp, index=False)
    tmp.replace(out / "results.csv")
    return out / "results.csv"


def _judge_rows(url: str, judge_model: str | None, ds: str, out: Path, meta: dict) -> pd.DataFrame:
    import json

    from takd.judge import JudgeClient, JudgeUnavailable, judge_ratio

    gens = [json.loads(x) for x in (out / f"{ds}.gen.jsonl").read_text().splitlines() if x.strip()]
    first_seed = gens[0]["seed"]
    items = [(g["prompt_row"]["instruction"] + ("\n" + g["prompt_row"]["input"] if g["prompt_row"].get("input")
                                                else ""), references(g["prompt_row"])[0], g["generation"])
             for g in gens if g["seed"] == first_seed]
    try:
        res = judge_ratio(JudgeClient(url, judge_model or "gpt-4"), items)
    except Exception as err:  # JudgeUnavailable, or a malformed reply: evaluation goes on without the judge
        if not isinstance(err, (JudgeUnavailable, ValueError)):
            raise
        print(f"judge skipped: {err}", file=sys.stderr)
        return pd.DataFrame()
    print(f"{ds:10s} judge_ratio  {res['judge_ratio']:6.2f}  ({res['items']} prompts)")
    return pd.DataFrame([{**meta, "dataset": ds, "seed": first_seed, "metric": "judge_ratio",
                          "value": res["judge_ratio"]}])


def _exposure_rows(model, tok, teacher: str, dataset: str, split: str, n_prompts: int, max_prompt_tokens: int,
                   max_new_tokens: int, meta: dict) -> pd.DataFrame:
    from takd.exposure_bias import exposure_bias
    from takd.models import load_model

    ex = encode_rows(load_rows(dataset, split), tok, max_prompt_tokens, max_new_tokens, with_response=False)
    res = exposure_bias(model, load_model(teacher), tok, ex[:n_prompts], max_new_tokens=max_new_tokens)
    shown = min(15, max_new_tokens - 1)  # the reference prints index 15
    print(f"exposure bias: ExAccErr({shown + 1}) = {res['ex_acc_err'][shown]:.1f} % ({len(ex[:n_prompts])} prompts)")
    return pd.DataFrame([{**meta, "dataset": "exposure_bias", "seed": 10, "position": pos + 1,
                          "metric": "ex_acc_err", "value": v} for pos, v in enumerate(res["ex_acc_err"])])


def _calibration_rows(model, tok, source: str, meta: dict) -> pd.DataFrame:
    from takd.calibration import calibration

    rows = load_rows("builtin", "test") if source == "builtin" else load_rows(source, "test")
    res = calibration(model, tok, rows)
    print(f"calibration: ECE {res['ece']:.3f}, accuracy {res['accuracy']:.1f} % ({res['items']} items)")
    return pd.DataFrame([{**meta, "dataset": "calibration", "seed": 0, "metric": k, "value": res[k]}
                         for k in ("ece", "accuracy")])
