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
import sys
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


class JudgeDeadline(JudgeUnavailable):
    """The judge gave no answer before the evaluation's deadline."""


def redact(text: str) -> str:
    """`text` without any API key: the configured key itself, bearer tokens and sk-... keys become ***. Everything
    takd prints or raises about a judge reply goes through here (an endpoint may echo the request back)."""
    for key in filter(None, (os.environ.get("TAKD_JUDGE_API_KEY"), os.environ.get("OPENAI_API_KEY"))):
        text = text.replace(key, "***")
    text = re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)
    return re.sub(r"sk-[A-Za-z0-9_\-]{6,}", "sk-***", text)


def parse_scores(text: str) -> tuple[float, float]:
    """(gold score, model score) from the judge's first line, e.g. '8 6' or '8, 6.5'."""
    m = _SCORES.match(text.strip().splitlines()[0] if text.strip() else "")
    if not m:
        raise ValueError(f"judge reply has no two scores on its first line: {redact(text[:80])!r}")
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

    def complete(self, prompt: str, give_up_at: float | None = None) -> str:
        """The judge's reply to `prompt`; retries say so on stderr and stop at `give_up_at` (time.monotonic())."""
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
                    reply = resp.read()
                try:
                    return json.loads(reply)["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError):
                    raise ValueError(f"judge at {redact(self.url)} answered something else than a chat completion: "
                                     f"{redact(reply[:80].decode(errors='replace'))!r}") from None
            except urllib.error.HTTPError as err:
                if err.code < 500 and err.code != 429:
                    raise JudgeUnavailable(f"judge at {redact(self.url)} refused the request: HTTP {err.code}") \
                        from None
                last = f"HTTP {err.code}"
            except (TimeoutError, urllib.error.URLError) as err:
                reason = getattr(err, "reason", err)
                if isinstance(reason, OSError) and not isinstance(reason, TimeoutError) and attempt == 0:
                    raise JudgeUnavailable(f"judge at {redact(self.url)} is unreachable ({reason}); compute nodes are "
                                           "offline: run the judge where the endpoint can be reached") from None
                last = f"timeout/connection error ({type(reason).__name__})"
            wait = self.backoff_s * 2**attempt
            if give_up_at is not None and time.monotonic() + wait > give_up_at:
                raise JudgeDeadline(f"judge at {redact(self.url)} gave no answer before the deadline (last: {last})")
            if attempt < self.max_retries:
                print(f"judge: {last}; retry {attempt + 1}/{self.max_retries} in {wait:.0f} s", file=sys.stderr,
                      flush=True)
            time.sleep(wait)
        raise JudgeUnavailable(f"judge at {redact(self.url)} failed {self.max_retries + 1} times (last: {last})")

    def score(self, question: str, gold: str, answer: str, give_up_at: float | None = None) -> tuple[float, float]:
        return parse_scores(self.complete(TEMPLATE.format(question=question, gold=gold, answer=answer), give_up_at))


def judge_ratio(client: JudgeClient, items: list[tuple[str, str, str]], deadline_s: float = 3600.0,
                progress_every_s: float = 30.0) -> dict[str, float]:
    """items: (question, gold, model answer). Returns totals and the ratio Σ model / Σ gold × 100 over the items
    judged: a malformed reply skips its item (counted in `skipped`), an unreachable judge stops it all
    (JudgeUnavailable), and past `deadline_s` the rest is skipped too (JudgeDeadline if nothing was judged).
    A progress line every `progress_every_s`."""
    gold_total = model_total = 0.0
    judged = skipped = 0
    start = last = time.monotonic()
    for question, gold, answer in items:
        if time.monotonic() - start > deadline_s:
            skipped += len(items) - judged - skipped
            print(f"judge: {deadline_s:.0f} s deadline reached; the remaining items are skipped", file=sys.stderr)
            break
        try:
            g, m = client.score(question, gold, answer, give_up_at=start + deadline_s)
        except ValueError as err:  # a malformed reply: this item only
            skipped += 1
            print(f"judge: item skipped ({err})", file=sys.stderr)
            continue
        except JudgeDeadline as err:
            if not judged:
                raise
            skipped += len(items) - judged - skipped
            print(f"judge: {err}; the remaining items are skipped", file=sys.stderr)
            break
        gold_total, model_total, judged = gold_total + g, model_total + m, judged + 1
        if time.monotonic() - last > progress_every_s:
            last = time.monotonic()
            print(f"judge: {judged + skipped}/{len(items)} items ({skipped} skipped)", file=sys.stderr, flush=True)
    if not judged:
        raise ValueError(f"the judge gave no usable score for any of {len(items)} items")
    return {"judge_ratio": 100.0 * model_total / max(gold_total, 1e-9), "judge_model_total": model_total,
            "judge_gold_total": gold_total, "items": judged, "skipped": skipped}
