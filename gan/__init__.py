"""gan: pure-PyTorch GAN library (config, data, models, losses, metrics, training loop)."""
