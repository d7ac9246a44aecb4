"""The training record both budget drivers (biapy_budget.py, nnunet_budget.py) write: the same keys for every peer."""
import json


def write_stats(path, state, t_start, batch_size, torch_threads, **peer):
    """Writes ``path`` (JSON) and prints it on one line: ``setup_s`` (from ``t_start`` to the first step),
    ``train_s`` (first step to the stop), ``steps``, ``crops``, ``batch_size``, ``crops_per_s``, then the
    peer's own keys ``peer`` and ``torch_threads``. ``state`` holds ``t0``, ``t_stop``, ``steps``, ``crops``."""
    t_train = state["t_stop"] - state["t0"]
    stats = {
        "setup_s": round(state["t0"] - t_start, 1),
        "train_s": round(t_train, 1),
        "steps": state["steps"],
        "crops": state["crops"],
        "batch_size": int(batch_size),
        "crops_per_s": round(state["crops"] / t_train, 3) if t_train > 0 else None,
        **peer,
        "torch_threads": torch_threads,
    }
    with open(path, "w") as f:
        json.dump(stats, f, indent=1)
    print(json.dumps(stats))
