"""Models: the registry (`registry`, torch-free) and offline loading (`loading`)."""
