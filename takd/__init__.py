"""takd: MiniLLM (reverse-KL policy-gradient distillation) and teacher-assistant chains on Slurm.

Layers, lowest first (a module imports only from its own layer or below; `tests/test_architecture.py` checks it):

    config, paths, checkpoint, dist, losses      base: YAML -> dataclasses, where things live, atomic directories,
                                                 processes and collectives, token-level divergences
    data/        rows, tokenised examples and samplers, pretraining corpora, the built-in task, tokenizers
    models/      the registry (torch-free) and offline loading
    sampling     teacher-mixed sampling with keyed per-row streams
    evaluate/    metrics, generation, exposure bias, calibration, judge, the evaluation run
    train/       stage configs, the backend seam (torch | DeepSpeed), the loop, supervised methods, MiniLLM
    report/      results collected across runs, the Markdown/HTML report
    chain/       profiles, the planner, resources, the launcher, status, prepare
    cli          `takd plan|train|evaluate|prepare|status|report`
"""

__version__ = "0.2.0"
