import os

# Tests share 2 CPU cores; one torch process with all threads is fastest. Keep HF offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
