"""One rank of the two-process DDP test (started by torchrun from test_distributed.py).

usage: ddp_worker.py RECIPE.yaml RUN_DIR OUT_DIR — trains, then writes OUT_DIR/rank<r>.pt with
this rank's final weights and what its loaders saw, so the test can check the ranks agree.
"""

import os
import sys

import torch

from cnnbench.train.config import load_recipe
from cnnbench.train.run import train_run

recipe_path, run_dir, out_dir = sys.argv[1:4]
seen = {}


def remember(engine, progress):
    seen["engine"] = engine


result = train_run(load_recipe(recipe_path), run_dir, quiet=True, after_step=remember)
engine = seen["engine"]
torch.save({"model": engine.model.state_dict(), "status": result.status,
            "train_batches": len(engine.train_stream), "val_batches": len(engine.val_loader),
            "per_rank_batch": engine.val_loader.batch_size},
           os.path.join(out_dir, f"rank{os.environ['RANK']}.pt"))
