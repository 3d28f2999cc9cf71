"""Training recipes that produce model bundles (datasets, preprocessing cache, evaluation)."""
