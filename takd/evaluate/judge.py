"""LLM-judge evaluation: the MiniLLM paper's GPT-4 feedback protocol against any OpenAI-compatible endpoint.

For each prompt the judge sees the instruction, the gold response and the model's response, and scores both
from 1 to 10; the reported number is Σ model scores / Σ gold scores × 100 (reference §7).

The endpoint is `--judge-url` (e.g. a vLLM server or an API); the key comes only from the environment
(`TAKD_JUDGE_API_KEY`, else `OPENAI_API_KEY`) and is never printed or written. Compute nodes are offline:
an unreachable endpoint raises `JudgeUnavailable` with a one-line message instead of hanging.
HTTP 5xx, 429 and timeouts are retried with exponential backoff.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
TEMPLATE = (
    "[Question]\n{question}\n\n[The Start of Assistant 1's Answer]\n{gold}\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer}\n[The End of Assistant 2's Answer]\n\n"
    "[System]\nWe would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above.\nPlease rate the helpfulness, relevance, accuracy, and level of details of their "
    "responses. Each assistant receives an overall score on a scale of 1 to 10, where a higher score indicates better "
    "overall performance.\nPlease first output a single line containing only two values indicating the scores for "
    "Assistant 1 and 2, respectively. The two scores are separated by a space. In the subsequent line, please provide "
    "a comprehensive explanation of your evaluation."
)
_SCORES = re.compile(r"^\s*(\d+(?:\.\d+)?)[\s,]+(\d+(?:\.\d+)?)")


class JudgeUnavailable(RuntimeError):
    """The judge endpoint cannot be reached (offline node) or keeps failing."""


def parse_scores(text: str) -> tuple[float, float]:
    """(gold score, model score) from the judge's first line, e.g. '8 6' or '8, 6.5'."""
    m = _SCORES.match(text.strip().splitlines()[0] if text.strip() else "")
    if not m:
        raise ValueError(f"judge reply has no two scores on its first line: {text[:80]!r}")
    return float(m.group(1)), float(m.group(2))


@dataclass
class JudgeClient:
    url: str  # base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1
    model: str
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0

    def _key(self) -> str | None:
        return os.environ.get("TAKD_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")

    def complete(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 512,
                           "messages": [{"role": "system", "content": SYSTEM},
                                        {"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self._key():
            headers["Authorization"] = f"Bearer {self._key()}"
        last = ""
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(self.url.rstrip("/") + "/chat/completions", data=body, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as err:
                if err.code < 500 and err.code != 429:
                    raise JudgeUnavailable(f"judge at {self.url} refused the request: HTTP {err.code}") from None
                last = f"HTTP {err.code}"
            except (TimeoutError, urllib.error.URLError) as err:
                reason = getattr(err, "reason", err)
                if isinstance(reason, OSError) and not isinstance(reason, TimeoutError) and attempt == 0:
                    raise JudgeUnavailable(f"judge at {self.url} is unreachable ({reason}); compute nodes are "
                                           "offline: run the judge where the endpoint can be reached") from None
                last = f"timeout/connection error ({type(reason).__name__})"
            time.sleep(self.backoff_s * 2**attempt)
        raise JudgeUnavailable(f"judge at {self.url} failed {self.max_retries + 1} times (last: {last})")

    def score(self, question: str, gold: str, answer: str) -> tuple[float, float]:
        return parse_scores(self.complete(TEMPLATE.format(question=question, gold=gold, answer=answer)))


def judge_ratio(client: JudgeClient, items: list[tuple[str, str, str]]) -> dict[str, float]:
    """items: (question, gold, model answer). Returns totals and the ratio Σ model / Σ gold × 100."""
    gold_total = model_total = 0.0
    for question, gold, answer in items:
        g, m = client.score(question, gold, answer)
        gold_total, model_total = gold_total + g, model_total + m
    return {"judge_ratio": 100.0 * model_total / max(gold_total, 1e-9), "judge_model_total": model_total,
            "judge_gold_total": gold_total, "items": len(items)}
