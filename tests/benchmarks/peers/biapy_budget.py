"""BiaPy under a training budget: its own workflow, stopped after the first step that ends past the budget.

Runs with ``.venv-biapy/bin/python`` (BiaPy 3.7.1, CPU torch). BiaPy has no time limit (TRAIN.EPOCHS and
TRAIN.PATIENCE only), so this runs the stock workflow through BiaPy's Python API (``BiaPy(config,
result_dir, name, run_id, gpu="")``, what the ``biapy`` command does) with two hooks that change nothing
of its training:

- the budget clock starts when BiaPy's epoch loop starts its first epoch (data loaded, model built), as
  the project's ``train.time_limit_minutes`` counts its epochs' seconds;
- a forward pre-hook on the model counts the crops it trains on (batches in training mode);
- a torch optimizer step post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``) counts
  the training steps and, after the first step that ends at or past the budget, stops training; the
  weights of that moment are saved with BiaPy's own ``save_model`` as
  ``checkpoints/<job>-checkpoint-budget.pth``, which the test run then loads.

Validation epochs that BiaPy runs inside the budget count towards it, as they do for the project.

usage:
  python biapy_budget.py config TEMPLATE OUT.yaml KEY=VALUE ...   # the template with dotted keys replaced
  python biapy_budget.py train CONFIG RESULT_DIR NAME BUDGET_S STATS.json
"""
import sys
import time

from budget_stats import write_stats

T_START = time.time()


def make_config(template, out, overrides):
    import yaml

    with open(template) as f:
        cfg = yaml.safe_load(f)
    for item in overrides:
        key, value = item.split("=", 1)
        node = cfg
        *path, last = key.split(".")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    with open(out, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


class BudgetReached(Exception):
    pass


def train(config, result_dir, name, budget_s, stats_path):
    import torch

    torch.set_num_threads(1)
    import biapy
    import biapy.engine.base_workflow as base_workflow
    from biapy import BiaPy
    from biapy.utils.misc import save_model

    state = {"t0": None, "steps": 0, "crops": 0, "epochs_started": 0, "stopped_by": None}
    stock_train_one_epoch = base_workflow.train_one_epoch

    def count_crops(module, inputs):
        if module.training:
            state["crops"] += int(inputs[0].shape[0])

    def train_one_epoch(*args, **kwargs):
        if state["t0"] is None:
            kwargs["model"].register_forward_pre_hook(count_crops)
            state["t0"] = time.time()
        state["epochs_started"] += 1
        return stock_train_one_epoch(*args, **kwargs)

    base_workflow.train_one_epoch = train_one_epoch

    def after_step(optimizer, args, kwargs):
        state["steps"] += 1
        if state["t0"] is not None and time.time() - state["t0"] >= budget_s:
            state["t_stop"] = time.time()
            raise BudgetReached

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(after_step)

    job = BiaPy(config, result_dir=result_dir, name=name, run_id=1, gpu="", verbose=True)
    try:
        job.train()
        state["stopped_by"] = "biapy"  # all epochs or early stopping inside the budget
        state["t_stop"] = time.time()
    except BudgetReached:
        state["stopped_by"] = "budget"
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    wf = job.workflow
    ckpt = save_model(output_dir=wf.cfg.PATHS.CHECKPOINT, cfg=wf.cfg, biapy_version=biapy.__version__,
                      jobname=wf.job_identifier, epoch="budget", model_without_ddp=wf.model_without_ddp,
                      optimizer=wf.optimizer, model_build_kwargs=wf.model_build_kwargs,
                      extension=wf.cfg.MODEL.OUT_CHECKPOINT_FORMAT)
    write_stats(stats_path, state, T_START, wf.cfg.TRAIN.BATCH_SIZE, torch.get_num_threads(),
                epochs_started=state["epochs_started"], steps_per_epoch=len(wf.train_generator),
                stopped_by=state["stopped_by"], checkpoint=str(ckpt), job_identifier=wf.job_identifier)


if __name__ == "__main__":
    if sys.argv[1] == "config":
        make_config(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif sys.argv[1] == "train":
        train(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6])
    else:
        raise SystemExit(__doc__)
