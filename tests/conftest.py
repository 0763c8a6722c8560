"""Import sact_det before anything touches detectron2 (applies compat, registers components)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ paths are repo-relative

import sact_det  # noqa: E402,F401
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models: 1 thread is much faster than 2 on a busy 2-core machine
