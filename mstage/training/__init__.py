"""Training orchestration: one epoch loop with early stopping and refit, used by every model."""
