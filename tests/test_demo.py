"""The embedded default's MiniLLM stage does what the demo claims: its held-out reverse KL to the teacher falls.

The stage is built from the tiny profile's own `distill:` section (the README main command's MiniLLM settings:
steps, rollouts, learning rate, validation cadence; not a test profile) and run to the end from the random-init
tiny-s towards a short-trained tiny-m teacher. The first validation is the start's (step 0, before any update, as
the reference's PPO trainer evaluates), the last the distilled student's. A random start makes the fall large
against the noise of 100 sampled answers; two SFT'd tiny models would start within ~0.05 nats of each other. The
demo's own curves (SFT'd inits) are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json

from takd.chain.profiles import load_profile, profile_path, profile_stage
from takd.train.run import run_stage


def _evals(stage_dir) -> list[dict]:
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "eval"]


def test_demo_minillm_stage_lowers_held_out_reverse_kl(trained_teacher, tmp_path):
    profile = load_profile(profile_path("tiny"))
    cfg = profile_stage(profile, "distill", "minillm", "tiny-s", name="minillm-demo", student="tiny-s",
                        teacher=str(trained_teacher), output_dir=str(tmp_path / "minillm"), tensorboard=False)
    assert cfg.max_steps >= 4 * cfg.eval_every_steps and cfg.eval_at_start  # the demo's curve has 5 points
    run_stage(cfg)
    evals = _evals(tmp_path / "minillm")
    assert [e["step"] for e in evals] == list(range(0, cfg.max_steps + 1, cfg.eval_every_steps))
    start, end = evals[0]["val_rev_kl"], evals[-1]["val_rev_kl"]
    assert end < 0.5 * start, f"held-out reverse KL {start:.3f} -> {end:.3f}"
