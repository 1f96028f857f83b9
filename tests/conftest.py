import os

import pytest

# Tests share 2 CPU cores; one torch process with all threads is fastest. Keep HF offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.helpers import tiny_model_and_tokenizer  # noqa: E402 (after the environment it reads)


@pytest.fixture(scope="module")
def toy():
    """A random 2-layer toy model (in eval mode) and its tokenizer, built once per test module."""
    model, tok = tiny_model_and_tokenizer()
    model.eval()
    return model, tok
