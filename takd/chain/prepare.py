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
from takd.config import NotPrepared
from takd.data import rows as data
from takd.errors import cli
from takd.models import registry
from takd.models.snapshots import NoWeights, cached_snapshot, hub_cache_dir, select_download, snapshot_problems
from takd.paths import selfinst_file, takd_home

# Hub sources of the evaluation/training sets (downloaded only here, never inside a job).
DATASET_SOURCES = {
    "dolly": "databricks/databricks-dolly-15k",
}


def prepare_model(name: str) -> str:
    """Build a tiny model, check a directory, or download a hub model's weights, config and tokenizer (only the
    files `snapshots.select_download` picks, one worker, no xet: the Alliance's advice for login nodes); a model
    counts as prepared only when its files are complete and it builds on the meta device."""
    from takd.models import loading

    spec = registry.resolve(name)
    if spec.is_tiny:
        d = loading.prepare_tiny(spec.name)
        n = loading.count_parameters(loading.load_model(spec.name))
        return f"{name}: built locally at {d} ({n / 1e6:.2f}M parameters)"
    local = Path(spec.hf_id) if Path(spec.hf_id).is_dir() else cached_snapshot(spec.hf_id)
    if local is not None and not snapshot_problems(local):
        return f"{name}: ready at {local} ({verify_model(local, spec) / 1e6:,.0f}M parameters)"
    if Path(spec.hf_id).is_dir():
        raise NotPrepared(f"{name}: the directory lacks {'; '.join(snapshot_problems(spec.hf_id))}; save the "
                          "complete model there (save_pretrained of the model and its tokenizer)")
    from huggingface_hub import HfApi, snapshot_download

    files = select_download(HfApi().list_repo_files(spec.hf_id), spec.hf_id)
    path = Path(snapshot_download(spec.hf_id, allow_patterns=files, max_workers=1, cache_dir=hub_cache_dir()))
    problems = snapshot_problems(path)
    if problems:
        raise NotPrepared(f"{name}: the download at {path} still lacks {'; '.join(problems)}")
    size = sum((path / f).stat().st_size for f in files if (path / f).is_file()) / 1e9
    return f"{name}: downloaded {spec.hf_id} ({len(files)} files, {size:.1f} GB) -> {path} " \
           f"({verify_model(path, spec) / 1e6:,.0f}M parameters)"


def verify_model(directory: Path, spec: registry.ModelSpec) -> int:
    """Builds the model on the meta device from its config and loads its tokenizer, offline; the parameter count
    must be the registry's (within 15 %) when it knows the model."""
    from takd.models import loading

    n = loading.meta_parameter_count(directory)
    loading.load_tokenizer(directory)
    if spec.params_m and abs(n / 1e6 - spec.params_m) > 0.15 * spec.params_m:
        raise NotPrepared(f"{spec.name}: {directory} builds a model of {n / 1e6:,.0f}M parameters, not the "
                          f"registry's {spec.params_m:,.0f}M: a different checkpoint?")
    return n


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


PUSH_IGNORED = [".*", "COMPLETE", "takd_model.json"]  # hidden temporaries, takd's markers: not part of the model


def push_model(directory: str, repo_id: str, private: bool = True) -> str:
    """Upload a finished model directory (a stage's `final/`: weights, tokenizer, model card, generation config) to
    the hub, from a login node. The token is huggingface_hub's own ($HF_TOKEN or `hf auth login`); never printed."""
    d = Path(directory)
    if not (d / "COMPLETE").is_file() or snapshot_problems(d):
        raise NotPrepared(f"--push {directory}: not a finished model directory (a stage's final/ with its COMPLETE "
                          "marker); wait for the stage to finish")
    if "/" not in repo_id or repo_id.count("/") > 1:
        raise cfglib.ConfigError(f"--repo-id {repo_id!r} must be <user or organisation>/<name>")
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(d), repo_id=repo_id, ignore_patterns=PUSH_IGNORED,
                      commit_message=f"takd: {d.parent.name}/{d.name}")
    files = [f for f in d.iterdir() if f.is_file() and f.name not in PUSH_IGNORED and not f.name.startswith(".")]
    return f"pushed {directory} ({len(files)} files, {'private' if private else 'public'}) -> {url}"


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
        spec = registry.resolve(name)
        return not spec.is_tiny and not Path(spec.hf_id).is_dir() and not registry.is_available_offline(name)
    return name in DATASET_SOURCES and not (data.data_dir(name) / "train.jsonl").is_file()


def cache_advice() -> str | None:
    """On a cluster, model weights belong under $PROJECT (shared, backed up) or $SCRATCH (purged after 60 days),
    not in the 50 GB HOME: a line saying so when HF_HOME is unset or under HOME."""
    if not (os.environ.get("PROJECT") or os.environ.get("SCRATCH")):
        return None
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser().resolve()
    if hf_home.is_relative_to(Path.home().resolve()):
        return (f"HF_HOME={hf_home} is under HOME (50 GB quota): set HF_HOME=$PROJECT/hf-cache (shared by the group, "
                "backed up) or $SCRATCH/hf-cache (purged after 60 days) before downloading large models")
    return None


def job_environment() -> dict[str, str]:
    """What every job needs to find the prepared artefacts offline."""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TAKD_HOME": str(takd_home())}
    if os.environ.get("HF_HOME"):
        env["HF_HOME"] = os.environ["HF_HOME"]
    return env


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m takd.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help="comma list of registry names / HF ids")
    ap.add_argument("--datasets", default="", help="comma list: builtin,dolly,selfinst,vicuna,sni,unni")
    ap.add_argument("--record-listing", default=None, metavar="REPO",
                    help="print a hub repo's file listing as JSON (to refresh tests/data/hub_listings.json)")
    ap.add_argument("--push", default=None, metavar="DIR", help="upload a finished model directory (a stage's final/) "
                    "to the hub, from a login node; needs --repo-id")
    ap.add_argument("--repo-id", default=None, help="hub repository for --push: <user or organisation>/<name>")
    ap.add_argument("--public", action="store_true", help="--push to a public repository (default: private)")
    args = ap.parse_args(argv)
    # the Alliance's advice for login nodes (hf_xet "currently leads to failures"); read when huggingface_hub loads
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
    if args.record_listing:
        import json

        from huggingface_hub import HfApi

        print(json.dumps({args.record_listing: sorted(HfApi().list_repo_files(args.record_listing))}, indent=1))
        return 0
    if args.push:
        return _push(args.push, args.repo_id, private=not args.public)
    names = [m for m in args.models.split(",") if m]
    sets = [d for d in args.datasets.split(",") if d]
    if not names and not sets:
        ap.error("nothing to prepare: give --models and/or --datasets")
    advice = cache_advice()
    if advice:
        print(f"note: {advice}", file=sys.stderr)
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
        except (cfglib.ConfigError, NotPrepared, NoWeights) as err:
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


def _push(directory: str, repo_id: str | None, private: bool) -> int:
    if not repo_id:
        raise cfglib.ConfigError("--push needs --repo-id <user or organisation>/<name>")
    if not hub_reachable():
        raise cfglib.ConfigError("the Hugging Face hub is unreachable from this node; push from a login node")
    print(push_model(directory, repo_id, private), flush=True)
    return 0
