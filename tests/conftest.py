"""Import sact_det before anything touches detectron2 (applies compat, registers components)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ paths are repo-relative

import pytest  # noqa: E402
import sact_det  # noqa: E402,F401
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models: 1 thread is much faster than 2 on a busy 2-core machine


@pytest.fixture
def restore_loggers():
    """tools/train_classifier.py's setup_logger adds handlers on the captured stdout: remove them after."""
    import logging

    names = ("sact_det", "detectron2")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level) for n in names}
    yield
    for n, (handlers, level) in saved.items():
        logging.getLogger(n).handlers[:] = handlers
        logging.getLogger(n).setLevel(level)
