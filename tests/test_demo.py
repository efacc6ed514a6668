"""The embedded default's MiniLLM stage does what the demo claims: its held-out reverse KL to the teacher falls,
by more than the estimator's own noise.

Both stages are built from the tiny profile's own sections (the README main command's settings, not a test
profile): the student is tiny-s after the profile's `init:` SFT, as in the demo, and the MiniLLM stage runs the
profile's `distill:` section to its end towards the shared short-trained tiny-m teacher (the demo's teacher is a
tiny-l trained for 4 minutes: too long for a test). The first validation is the start's (step 0, before any
update, as the reference's PPO trainer evaluates), the last the distilled student's. The noise is the spread of the
same estimate on the start model at three sampling seeds. The demo's own curves are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json

from takd.chain.profiles import load_profile, profile_path, profile_stage
from takd.models.loading import load_model
from takd.train.run import run_stage
from takd.train.validation import held_out_reverse_kl, validation_examples

NOISE_SEEDS = (1, 2, 3)


def _evals(stage_dir) -> list[dict]:
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "eval"]


def test_demo_minillm_stage_lowers_held_out_reverse_kl(trained_teacher, tokenizer, tmp_path):
    profile = load_profile(profile_path("tiny"))
    init = run_stage(profile_stage(profile, "init", "sft", "tiny-s", name="init-demo", student="tiny-s",
                                   output_dir=str(tmp_path / "init"), tensorboard=False))
    cfg = profile_stage(profile, "distill", "minillm", "tiny-s", name="minillm-demo", student=str(init),
                        teacher=str(trained_teacher), output_dir=str(tmp_path / "minillm"), tensorboard=False)
    assert cfg.max_steps >= 4 * cfg.eval_every_steps and cfg.eval_at_start  # the demo's curve has 5 points
    run_stage(cfg)
    evals = _evals(tmp_path / "minillm")
    assert [e["step"] for e in evals] == list(range(0, cfg.max_steps + 1, cfg.eval_every_steps))
    start, end = evals[0]["val_rev_kl"], evals[-1]["val_rev_kl"]
    student, teacher = load_model(str(init)), load_model(str(trained_teacher))
    examples = validation_examples(cfg, tokenizer, cfg.minillm.val_rev_kl_prompts)  # the trainer's prompts
    at_seeds = [held_out_reverse_kl(student, teacher, examples, tokenizer, max_new_tokens=cfg.max_new_tokens, seed=s)
                for s in NOISE_SEEDS]
    noise = max(at_seeds) - min(at_seeds)
    assert end < start - 2 * noise, f"held-out reverse KL {start:.3f} -> {end:.3f}; start at seeds {at_seeds}"
