"""Calibration of classification-as-generation (the paper's SST2/BoolQ protocol, reference §7, §8).

Each item is an instruction row with `labels` (the label words) and `output` (the gold label). The model's
probability of each label is that of its full token sequence after the prompt, renormalised over the labels;
the prediction is the argmax and its confidence the renormalised probability. ECE with B equal-width bins:

    ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b|
"""

from __future__ import annotations

import torch

from takd.data.examples import prompt_text


def expected_calibration_error(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 10) -> float:
    """ECE over equal-width confidence bins (0, 1/B], …, ((B−1)/B, 1]. confidences [N] in [0, 1], correct [N]."""
    confidences, correct = confidences.double(), correct.double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    ece = torch.zeros((), dtype=torch.float64)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidences > lo) & (confidences <= hi) if lo > 0 else (confidences >= lo) & (confidences <= hi)
        if in_bin.any():
            ece += in_bin.double().mean() * (correct[in_bin].mean() - confidences[in_bin].mean()).abs()
    return float(ece)


@torch.no_grad()
def label_probabilities(model, tokenizer, row: dict, prompt_format: str = "alpaca") -> torch.Tensor:
    """P(label | prompt) for each label word, renormalised over the labels. Returns [n_labels]."""
    text = prompt_text(row, tokenizer, prompt_format)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    scores = []
    for label in row["labels"]:
        full = tokenizer(text + label, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([full], device=model.device)
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        targets = ids[0, 1:]
        scores.append(logp.gather(-1, targets[:, None]).squeeze(-1)[len(prompt) - 1:].sum())
    return torch.softmax(torch.stack(scores), 0).cpu()


def calibration(model, tokenizer, rows: list[dict], n_bins: int = 10, prompt_format: str = "alpaca"
                ) -> dict[str, float]:
    rows = [r for r in rows if r.get("labels")]
    if not rows:
        raise ValueError("no classification items: rows need a `labels` list of label words")
    conf, correct = [], []
    for r in rows:
        probs = label_probabilities(model, tokenizer, r, prompt_format)
        best = int(probs.argmax())
        conf.append(float(probs[best]))
        correct.append(float(r["labels"][best] == r["output"]))
    c, k = torch.tensor(conf), torch.tensor(correct)
    return {"ece": expected_calibration_error(c, k, n_bins), "accuracy": 100.0 * float(k.mean()), "items": len(rows)}
