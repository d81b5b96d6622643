"""SHA-256 of the trained weights of each framework x objective (2 epochs, explicit overrides), for checking
that a change leaves runs without an SDE window bit-identical. Usage (one tree at a time):

    CFGDIR=<a checkout>/src/pcpo/configs PYTHONPATH=<that or another checkout>/src python windows_check.py
"""

import hashlib
import os
import tempfile

import torch

from pcpo.trainer.config import load_config
from pcpo.trainer.trainer import Trainer

OVERRIDES = ["epochs=2", "threads=1", "reward.name=color_match", "train.lr=2e-4", "eval.every=0",
             "eval.images_per_prompt=1", "log.tensorboard=false", "log.progress=false", "eval.gold=false",
             "eval.grid=false"]


def main() -> None:
    torch.set_num_threads(1)
    for fw in ["ddpo", "dancegrpo", "flowgrpo"]:
        for obj in ["clipped", "pcpo"]:
            credit = "native" if obj == "clipped" else "pcpo"
            cfg = load_config(os.path.join(os.environ["CFGDIR"], f"{fw}.yaml"),
                              OVERRIDES + [f"train.objective={obj}", f"train.credit={credit}"])
            tr = Trainer(cfg, os.path.join(tempfile.mkdtemp(), "run"))
            tr.train()
            h = hashlib.sha256()
            for k, v in sorted(tr.adapter.trainable_state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
            print(fw, obj, h.hexdigest(), flush=True)


if __name__ == "__main__":
    main()
