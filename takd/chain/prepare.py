"""Prepare everything a job needs, on a login node (compute nodes have no internet).

    python -m takd.prepare --models opt-13b,opt-6.7b,opt-1.3b --datasets dolly,selfinst
    python -m takd.prepare --models tiny-l,tiny-m,tiny-s            # the embedded default, no network

Hub models are downloaded into the HF cache ($HF_HOME); datasets are written as local JSONL under
$TAKD_HOME/data/<name>/{train,valid,test}.jsonl; the tiny family is built locally. Every artefact is then
verified by loading it offline, and the environment variables the jobs need are printed. Without network,
hub downloads fail fast with one line per missing item.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from takd import config as cfglib
from takd.data import rows as data
from takd.models import registry
from takd.paths import selfinst_file, takd_home

# Hub sources of the evaluation/training sets (downloaded only here, never inside a job).
DATASET_SOURCES = {
    "dolly": "databricks/databricks-dolly-15k",
}


def prepare_model(name: str) -> str:
    from takd.models import loading

    spec = registry.resolve(name)
    if spec.is_tiny:
        d = loading.prepare_tiny(spec.name)
        n = loading.count_parameters(loading.load_model(spec.name))
        return f"{name}: built locally at {d} ({n / 1e6:.2f}M parameters)"
    if registry.is_available_offline(name):
        return f"{name}: already in the HF cache"
    from huggingface_hub import snapshot_download

    path = snapshot_download(spec.hf_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    loading.load_tokenizer_for(name)
    return f"{name}: downloaded {spec.hf_id} -> {path}"


def prepare_dataset(name: str) -> str:
    out = data.data_dir(name)
    if name == data.BUILTIN:
        return "builtin: generated on the fly (deterministic), nothing to prepare"
    if (out / "train.jsonl").is_file() or (out / "test.jsonl").is_file():
        return f"{name}: already prepared at {out}"
    if name == "selfinst":
        src = Path(os.environ.get("TAKD_SELFINST", "")) if os.environ.get("TAKD_SELFINST") else selfinst_file()
        if src is None or not src.is_file():
            raise RuntimeError("selfinst: set TAKD_SELFINST to user_oriented_instructions.jsonl (Self-Instruct repo)")
        rows = data.selfinst_rows(src)
        data.write_jsonl(out / "test.jsonl", rows)
        data.write_jsonl(out / "valid.jsonl", rows)
        return f"selfinst: {len(rows)} tasks -> {out}"
    if name == "dolly":
        return _prepare_dolly(out)
    raise RuntimeError(f"{name}: no automatic download; place {{train,valid,test}}.jsonl with instruction/input/"
                       f"output fields (MiniLLM's processed files) under {out}")


def _prepare_dolly(out: Path) -> str:
    """Dolly-15k: MiniLLM's split (first 1000 rows valid after a fixed shuffle, 500 test, rest train)."""
    import random

    from datasets import load_dataset

    ds = load_dataset(DATASET_SOURCES["dolly"], split="train")
    rows = [{"instruction": r["instruction"], "input": r["context"], "output": r["response"]} for r in ds]
    random.Random(42).shuffle(rows)
    data.write_jsonl(out / "valid.jsonl", rows[:1000])
    data.write_jsonl(out / "test.jsonl", rows[1000:1500])
    data.write_jsonl(out / "train.jsonl", rows[1500:])
    return f"dolly: {len(rows)} rows -> {out}"


def hub_reachable(timeout_s: float = 5.0) -> bool:
    """One quick TCP probe of the HF endpoint, so an offline node fails in seconds, not after retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def needs_hub(kind: str, name: str) -> bool:
    if kind == "model":
        return not registry.resolve(name).is_tiny and not registry.is_available_offline(name)
    return name in DATASET_SOURCES and not (data.data_dir(name) / "train.jsonl").is_file()


def job_environment() -> dict[str, str]:
    """What every job needs to find the prepared artefacts offline."""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TAKD_HOME": str(takd_home())}
    if os.environ.get("HF_HOME"):
        env["HF_HOME"] = os.environ["HF_HOME"]
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m takd.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help="comma list of registry names / HF ids")
    ap.add_argument("--datasets", default="", help="comma list: builtin,dolly,selfinst,vicuna,sni,unni")
    args = ap.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    sets = [d for d in args.datasets.split(",") if d]
    if not names and not sets:
        ap.error("nothing to prepare: give --models and/or --datasets")
    from takd.models.loading import quiet_transformers

    quiet_transformers()
    failures = 0
    work = [("model", n, prepare_model) for n in names] + [("dataset", d, prepare_dataset) for d in sets]
    offline = None
    for kind, item, fn in work:
        try:
            if needs_hub(kind, item):
                offline = (not hub_reachable()) if offline is None else offline
                if offline:
                    print(f"error: {item}: the Hugging Face hub is unreachable from this node (no internet: "
                          "compute nodes never have it); run this command on a login node", file=sys.stderr)
                    failures += 1
                    continue
            print(fn(item), flush=True)
        except cfglib.ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            failures += 1
        except Exception as err:  # network errors come in many types; report each in one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"error: {item}: could not download ({type(err).__name__}: {first[:200]}); run this on a "
                  "login node with internet access", file=sys.stderr)
            failures += 1
    print("\njobs need (takd sets these itself when it submits):")
    for k, v in job_environment().items():
        print(f"  export {k}={v}")
    return 1 if failures else 0
