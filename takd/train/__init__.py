"""Training stages: typed configs, the backend seam (torch | DeepSpeed), the shared loop, the methods."""
