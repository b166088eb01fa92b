"""The network and its weights: ECG-FM in plain PyTorch (``model``), strict loading of the official fairseq-signals
checkpoints (``checkpoint``), which file to load — local, the Hugging Face Hub, or demo weights (``hub``, ``demo``) —
and the fast paths that change how it computes, not what (``fast``: bf16, the FFT positional convolution,
``torch.compile``).

May import: :mod:`ecgfm.labels`, :mod:`ecgfm.settings`, torch. Knows nothing of records, results, HTTP or archives.
"""
