"""Does MiniLLM improve the student over its SFT init on the built-in task? (issue: MiniLLM trainer)

    python benchmarks/minillm_vs_init.py [--run-dir RUN] [--seeds 1,2,3] [--steps 48]

Teacher = SFT'd tiny-l, student init = SFT'd tiny-s (both taken from RUN, a finished embedded-default run, or
trained here with the tiny chain profile). For each training seed, MiniLLM trains tiny-s from that same init;
the init and every MiniLLM student are evaluated on the held-out test split (200 prompts, sampling seeds
10/20/30, Rouge-L). Prints one row per model and appends a block to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import tempfile
import time
from pathlib import Path

import torch

from takd.chain.profiles import load_profile, profile_stage
from takd.data.examples import encode_rows
from takd.data.rows import load_rows
from takd.evaluate.metrics import mean_ci95
from takd.evaluate.run import evaluate_model
from takd.models.loading import load_model, load_tokenizer_for, quiet_transformers
from takd.paths import CONFIG_DIR
from takd.train.run import run_stage

HERE = Path(__file__).resolve().parent


def rouge(model_dir: str, seeds=(10, 20, 30), n_prompts: int = 200) -> tuple[float, float]:
    tok = load_tokenizer_for(model_dir)
    ex = encode_rows(load_rows("builtin", "test"), tok, 128, 32, with_response=False)[:n_prompts]
    df = evaluate_model(load_model(model_dir), tok, ex, seeds, max_new_tokens=32)
    return mean_ci95(df[df["metric"] == "rouge_l"]["value"].tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=None, help="a finished embedded-default run (reuses its teacher and init)")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=48)
    args = ap.parse_args()
    quiet_transformers()
    torch.set_num_threads(2)
    profile = load_profile(CONFIG_DIR / "chains" / "tiny.yaml")
    work = Path(tempfile.mkdtemp(prefix="minillm-vs-init-"))
    if args.run_dir:
        teacher = str(Path(args.run_dir) / "stages" / "sft-tiny-l" / "final")
        init = str(Path(args.run_dir) / "stages" / "init-tiny-s" / "final")
    else:
        teacher = str(run_stage(profile_stage(profile, "sft", "sft", "tiny-l", name="teacher", student="tiny-l",
                                              output_dir=str(work / "teacher"))))
        init = str(run_stage(profile_stage(profile, "init", "sft", "tiny-s", name="init", student="tiny-s",
                                           output_dir=str(work / "init"))))
    rows = [("tiny-l teacher (SFT)", *rouge(teacher)), ("tiny-s init (SFT)", *rouge(init))]
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.time()
        cfg = profile_stage(profile, "distill", "minillm", "tiny-s", name=f"minillm-seed{seed}", student=init,
                            teacher=teacher, output_dir=str(work / f"minillm-{seed}"), seed=seed,
                            max_steps=args.steps, tensorboard=False)
        final = str(run_stage(cfg))
        rows.append((f"tiny-s MiniLLM seed {seed} ({time.time() - t0:.0f}s training)", *rouge(final)))
    lines = [f"| {name} | {m:.2f} ± {ci:.2f} |" for name, m, ci in rows]
    block = "\n".join([
        f"\n## MiniLLM tiny-l → tiny-s vs its SFT init — {dt.date.today()} — {platform.node()} "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads)",
        f"Command: `python benchmarks/minillm_vs_init.py {'--run-dir ' + args.run_dir if args.run_dir else ''} "
        f"--seeds {args.seeds} --steps {args.steps}`. Held-out test split, 200 prompts, sampling seeds 10/20/30; "
        "± is the 95 % interval over sampling seeds.",
        "", "| model | Rouge-L |", "|---|---|", *lines, ""])
    print(block)
    with open(HERE / "RESULTS.md", "a") as fh:
        fh.write(block)


if __name__ == "__main__":
    main()
