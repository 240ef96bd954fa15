"""Framework integrations: each module imports its framework; nothing else does."""
