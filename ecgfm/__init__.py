"""ECG-FM in plain PyTorch: model, official checkpoint loading, preprocessing and labels."""

__version__ = "0.1.0"
