"""Scores of generated text (torch-free): Rouge-L and exact match as the MiniLLM protocol computes them
(reference §7), and the mean with its 95 % interval over sampling seeds."""

from __future__ import annotations

import math
import re
import string

from rouge_score import rouge_scorer

from takd.data.rows import references

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
_T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}


def rouge_l(prediction: str, refs: list[str]) -> float:
    """Rouge-L F-measure ×100 (rouge_score, stemming on), maximum over references."""
    return 100.0 * max(_SCORER.score(r, prediction)["rougeL"].fmeasure for r in refs)


def _normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower, drop punctuation and articles, squeeze spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, refs: list[str]) -> float:
    return 100.0 * max(float(_normalize_answer(prediction) == _normalize_answer(r)) for r in refs)


def score(predictions: list[str], rows: list[dict]) -> dict[str, float]:
    """Mean Rouge-L and exact match of one prediction per row against the row's references."""
    refs = [references(r) for r in rows]
    rl = [rouge_l(p, r) for p, r in zip(predictions, refs, strict=True)]
    em = [exact_match(p, r) for p, r in zip(predictions, refs, strict=True)]
    return {"rouge_l": sum(rl) / len(rl), "exact_match": sum(em) / len(em)}


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95 % interval (t-quantile for n ≤ 10, normal beyond)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, _T95.get(n, 1.96) * sd / math.sqrt(n)
