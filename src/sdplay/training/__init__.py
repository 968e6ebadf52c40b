"""Training: the emoji data set, the small default model, its train loop, export and evaluation."""
