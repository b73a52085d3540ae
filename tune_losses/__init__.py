"""tune_losses: hyperparameter search over the loss of a segmentation model."""
