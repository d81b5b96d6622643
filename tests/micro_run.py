"""`python tests/micro_run.py <pcpo args>`: the pcpo CLI with the micro test model registered.

Used by tests that need a separate process (SIGKILL + resume, torchrun). Environment hooks:
PCPO_TEST_STALL_AT=N makes the N-th reward call write PCPO_TEST_MARKER and sleep (to be killed).
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import micro  # noqa: E402
from pcpo.cli import main  # noqa: E402
from pcpo.rewards.registry import _REGISTRY  # noqa: E402

micro.register()
_calls = {"n": 0}


def stalling_redness(images, prompts):
    _calls["n"] += 1
    if str(_calls["n"]) == os.environ.get("PCPO_TEST_STALL_AT"):
        Path(os.environ["PCPO_TEST_MARKER"]).write_text("stalled")
        time.sleep(120)
    return micro.redness(images, prompts)


_REGISTRY["stalling_redness"] = lambda **kw: stalling_redness

if __name__ == "__main__":
    torch_threads = os.environ.get("PCPO_TEST_THREADS")
    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    sys.exit(main(sys.argv[1:]))
