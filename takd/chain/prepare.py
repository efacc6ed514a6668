"""Prepare everything a job needs, on a login node (compute nodes have no internet).

    python -m takd.prepare --models opt-13b,opt-6.7b,opt-1.3b --datasets dolly,selfinst
    python -m takd.prepare --models tiny-l,tiny-m,tiny-s            # the embedded default, no network
    python -m takd.prepare --models paper-teacher-gpt2-1.5b,paper-init-gpt2-120m --corpus gpt2   # the authors'

Hub models are downloaded into the HF cache ($HF_HOME); datasets (the MiniLLM authors' files) are written as local
JSONL under $TAKD_HOME/data/<name>/{train,valid,test}.jsonl; pretraining corpora stay in the authors' MMIDIDX shards
under $TAKD_HOME/corpora/<family>/; the tiny family is built locally. Every artefact is then
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
from takd.data import authors
from takd.data import rows as data
from takd.errors import cli
from takd.models import registry
from takd.models.snapshots import NoWeights, cached_snapshot, hub_cache_dir, select_download, snapshot_problems
from takd.paths import takd_home


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
    """A dataset as the MiniLLM authors published it (`takd.data.authors`): downloaded from their hub repository,
    converted row by row, written as $TAKD_HOME/data/<name>/{train,valid,test}.jsonl with a source.json."""
    out = data.data_dir(name)
    if name == data.BUILTIN:
        return "builtin: generated on the fly (deterministic), nothing to prepare"
    if (out / "train.jsonl").is_file() or (out / "test.jsonl").is_file():
        return f"{name}: already prepared at {out}"
    if name == "selfinst" and os.environ.get("TAKD_SELFINST"):  # the Self-Instruct repository's own file
        src = Path(os.environ["TAKD_SELFINST"])
        if not src.is_file():
            raise NotPrepared(f"selfinst: TAKD_SELFINST={src} is not a file (user_oriented_instructions.jsonl)")
        rows = data.selfinst_rows(src)
        return _write_splits(name, {"test": rows, "valid": rows}, {"file": str(src)})
    if name not in authors.SETS:
        raise NotPrepared(f"{name}: no automatic download; place {{train,valid,test}}.jsonl with instruction/input/"
                          f"output fields under {out}, or give the .jsonl path as the dataset")
    spec = authors.SETS[name]
    local, revision = _download(spec.repo, list(spec.files.values()), repo_type="dataset")
    rows = {split: authors.convert_rows(data.read_jsonl(local / f), f"{spec.repo}/{f}")
            for split, f in spec.files.items()}
    splits = authors.dolly_splits(rows["raw"], rows["test"]) if name == "dolly" else \
        authors.eval_splits(name, rows["test"])
    return _write_splits(name, splits, {"repo": spec.repo, "revision": revision, "files": spec.files})


def _write_splits(name: str, splits: dict[str, list[dict]], source: dict) -> str:
    import json

    out = data.data_dir(name)
    for split, rows in splits.items():
        data.write_jsonl(out / f"{split}.jsonl", rows)
    (out / "source.json").write_text(json.dumps(source, indent=1))
    counts = ", ".join(f"{split} {len(rows)}" for split, rows in splits.items())
    return f"{name}: {counts} rows -> {out}"


def _download(repo: str, files: list[str], repo_type: str = "model", local_dir: Path | None = None
              ) -> tuple[Path, str]:
    """Fetch `files` of a hub repository (one worker, as the Alliance advises on login nodes): where they are, and
    the revision they came from."""
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi().repo_info(repo, repo_type=repo_type)
    path = snapshot_download(repo, repo_type=repo_type, revision=info.sha, allow_patterns=files, max_workers=1,
                             **({"local_dir": str(local_dir)} if local_dir else {"cache_dir": hub_cache_dir()}))
    missing = [f for f in files if not (Path(path) / f).is_file()]
    if missing:
        raise NotPrepared(f"{repo}: {', '.join(missing)} not in the repository (has its layout changed? "
                          f"python -m takd.prepare --record-listing {repo} shows what it holds)")
    return Path(path), info.sha


def prepare_corpus(family: str) -> str:
    """A family's pretraining corpus for MiniLLM's PT loss, the authors' MMIDIDX shards downloaded once to
    $TAKD_HOME/corpora/<family>/ (GPT-2 ~10 GB, OPT/LLaMA ~20 GB each) and checked: every shard's index and size,
    the token ids within the family's vocabulary."""
    if family not in authors.CORPORA:
        raise cfglib.ConfigError(f"--corpus {family}: the authors published corpora for {', '.join(authors.CORPORA)}")
    found = authors.find_corpus(family)
    if found is None:
        from huggingface_hub import HfApi

        repo = authors.CORPORA[family]
        files = authors.corpus_files(HfApi().list_repo_files(repo, repo_type="dataset"), family)
        if not files:
            raise NotPrepared(f"{repo} lists no .bin/.idx shards (python -m takd.prepare --record-listing {repo})")
        _download(repo, files, repo_type="dataset", local_dir=authors.corpus_root(family))
        found = authors.find_corpus(family)
        if found is None:
            raise NotPrepared(f"{repo}: downloaded, but no train_0.bin/.idx pair under {authors.corpus_root(family)}")
    return f"corpus {family}: {check_corpus(found, family)}"


def check_corpus(directory: Path, family: str) -> str:
    """Each split's shards open, and their token ids fit the family's vocabulary (the check training repeats)."""
    from takd.data.corpus import PretrainingCorpus

    vocab = max(s.arch.get("vocab_size", 0) for s in registry.registry().values() if s.family == family)
    parts = []
    for split in ("train", "valid"):
        try:
            corpus = PretrainingCorpus(directory, split)
        except FileNotFoundError:
            continue
        if vocab and (problem := corpus.check_vocabulary(vocab)):
            raise NotPrepared(f"{family}: {problem}")
        items = corpus.items
        lengths = items.item_lengths()
        parts.append(f"{split} {len(items):,} chunks of {int(lengths.min())}-{int(lengths.max())} {items.dtype.name} "
                     f"tokens in {len(items.shards)} shard(s)")
    return f"{'; '.join(parts)} at {directory}"


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
    if kind == "corpus":
        return authors.find_corpus(name) is None
    return name in authors.SETS and not any((data.data_dir(name) / f"{s}.jsonl").is_file() for s in ("train", "test"))


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
    ap.add_argument("--datasets", default="", help="comma list: builtin,dolly,selfinst,vicuna,sni,unni (the MiniLLM "
                    "authors' files from the hub: MiniLLM/dolly, self-inst, Vicuna, sinst, uinst)")
    ap.add_argument("--corpus", default="", help="comma list of families (gpt2, opt, llama): the authors' pretraining "
                    "corpus for MiniLLM's PT loss, read in place (GPT-2 ~10 GB, OPT/LLaMA ~20 GB each)")
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
    corpora = [c for c in args.corpus.split(",") if c]
    if not names and not sets and not corpora:
        ap.error("nothing to prepare: give --models, --datasets and/or --corpus")
    advice = cache_advice()
    if advice:
        print(f"note: {advice}", file=sys.stderr)
    from takd.models.loading import quiet_transformers

    quiet_transformers()
    failures = 0
    work = [("model", n, prepare_model) for n in names] + [("dataset", d, prepare_dataset) for d in sets] + \
        [("corpus", c, prepare_corpus) for c in corpora]
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
