"""The Mars-terrain recipe's pieces, used by ``train.py``: checkpoints (``checkpoint``), the epoch
loop (``loop``) and plots (``plots``, needs matplotlib)."""
