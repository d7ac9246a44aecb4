"""nnU-Net v2 under a training budget: the stock ``nnUNetv2_train``, stopped after the first step that ends past it.

Runs with ``.venv-nnunet/bin/python`` (nnunetv2 2.8.1, CPU torch), with nnUNet_raw, nnUNet_preprocessed
and nnUNet_results set. nnU-Net has no time limit: a training runs ``num_epochs`` (1000; the documented
variants nnUNetTrainer_1epoch, _5epochs, _10epochs, _20epochs, _50epochs, _100epochs, _250epochs, _500epochs,
_750epochs, _2000epochs, _4000epochs, _8000epochs change only that) of 250 training and 50 validation
iterations, and it writes ``checkpoint_latest.pth`` only every 50 epochs (``checkpoint_best.pth`` after an
epoch whose EMA pseudo-Dice improves; ``checkpoint_final.pth`` at the end). Killing it at the budget would
therefore leave no checkpoint on a CPU, where one epoch can take longer than the whole budget. So this runs
the stock command line entry (``nnunetv2.run.run_training.run_training_entry``: ``nnUNetv2_train DATASET
CONFIGURATION FOLD -tr TRAINER -device cpu``) in this process with hooks that change nothing of its training:

- ``multiprocessing.cpu_count`` answers the number of cores this process may run on (its affinity, one
  under ``taskset -c N``): ``-device cpu`` sets torch's threads to ``cpu_count()``, every core of the
  machine otherwise;
- the budget clock starts at the first training step (plans loaded, network built, data loaders made), as
  the project's ``train.time_limit_minutes`` counts its epochs' seconds; validation iterations inside the
  budget count towards it;
- ``nnUNetTrainer.train_step`` is wrapped to count steps and crops; after the first step that ends at or
  past the budget, the trainer's own ``save_checkpoint`` writes the weights of that moment to
  ``checkpoint_latest.pth`` (nnU-Net's own format and name), which ``nnUNetv2_predict -chk
  checkpoint_latest.pth`` then loads.

A training that ends inside the budget runs on as nnU-Net does (final validation, ``checkpoint_final.pth``).

usage: python nnunet_budget.py DATASET CONFIGURATION FOLD TRAINER BUDGET_S STATS.json
"""
import multiprocessing
import os
import sys
import time

from budget_stats import write_stats

T_START = time.time()


class BudgetReached(Exception):
    pass


def main(dataset, configuration, fold, trainer_name, budget_s, stats_path):
    multiprocessing.cpu_count = lambda: len(os.sched_getaffinity(0))
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.run.run_training import run_training_entry
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    state = {"t0": None, "steps": 0, "crops": 0, "trainer": None}
    stock_train_step = nnUNetTrainer.train_step

    def train_step(self, batch):
        if state["t0"] is None:
            state["t0"], state["trainer"] = time.time(), self
        out = stock_train_step(self, batch)
        state["steps"] += 1
        state["crops"] += int(batch["data"].shape[0])
        if time.time() - state["t0"] >= budget_s:
            state["t_stop"] = time.time()
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
            raise BudgetReached
        return out

    nnUNetTrainer.train_step = train_step
    sys.argv = ["nnUNetv2_train", dataset, configuration, fold, "-tr", trainer_name, "-device", "cpu"]
    try:
        run_training_entry()
        stopped_by, checkpoint = "nnunet", "checkpoint_final.pth"
        state["t_stop"] = time.time()
    except BudgetReached:
        stopped_by, checkpoint = "budget", "checkpoint_latest.pth"
    tr = state["trainer"]
    write_stats(stats_path, state, T_START, tr.batch_size, torch.get_num_threads(),
                patch_size=[int(p) for p in tr.configuration_manager.patch_size],
                epochs_started=min(int(tr.current_epoch) + 1, int(tr.num_epochs)),
                steps_per_epoch=int(tr.num_iterations_per_epoch),
                val_steps_per_epoch=int(tr.num_val_iterations_per_epoch), num_epochs=int(tr.num_epochs),
                stopped_by=stopped_by, checkpoint=checkpoint, output_folder=tr.output_folder)


if __name__ == "__main__":
    if len(sys.argv) != 7:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6])
