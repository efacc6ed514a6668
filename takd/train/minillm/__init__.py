"""MiniLLM: the objective as pure math, the rollout buffer, rollouts and their scoring, the trainer."""
