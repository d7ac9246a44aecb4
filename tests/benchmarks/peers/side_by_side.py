"""BiaPy, nnU-Net, the tutorial U-Net and the 2D template side by side on one data set, for the same budget.

usage: .venv/bin/python tests/benchmarks/peers/side_by_side.py DATA MINUTES OUT [--tools biapy,nnunet,naive,template]
           [--seed S] [--runs N] [--first-run K] [--labels NAME,NAME]
           [--template 3D_template.py --nnunet-configuration 3d_fullres --spacing Z,Y,X] [--predict-minutes M]
           [--cores 0,1] [-- TEMPLATE OPTIONS...]
       .venv/bin/python tests/benchmarks/peers/side_by_side.py --table OUT [OUT ...]

The runs start in the order of ``--tools``, one on each of ``--cores`` (0 and 1) at a time, pinned there with one
thread, the next as soon as a core is free; by default first BiaPy and nnU-Net (:mod:`run_peer`: conversion,
nnU-Net's planning, training for MINUTES from the first step, prediction with each tool's own command), then the
tutorial U-Net (``../shared/bench/naive_unet.py``) and the 2D template with its defaults (``--set
train.time_limit_minutes=MINUTES --set train.seed=S``, then any TEMPLATE OPTIONS). Every prediction is scored
with this project's metrics on DATA/test. Run it on an otherwise idle machine. For the 3D comparison,
``--template 3D_template.py --nnunet-configuration 3d_fullres --spacing Z,Y,X`` (nnU-Net then trains on the
training slices as one volume and predicts the test slices as one).

``--runs N`` runs each tool N times, run by run: the template with seeds S .. S+N-1 (``OUT/template_SEED``), each
peer and the tutorial U-Net unseeded as they ship (run k > 1 in ``OUT/run_k/``). A later call with the same OUT
adds runs: ``--seed`` and ``--first-run K`` (the peers' run numbers start at K) must then not reach those done.

Each run's JSON line is appended to OUT/result.jsonl when it ends (a failed run's with ``failed``: the message;
the others go on, and the command then exits 1); nnU-Net's prediction stops after ``--predict-minutes`` (120),
its line then unscored with how far it got (run_peer.py). At the end a Markdown table of every line there: fg_iou,
training steps, crops per second, wall time from the start to the end of prediction, prediction seconds per
megavoxel and peak resident memory; then one line per tool, the mean and standard deviation over its runs.
``--table OUT [OUT ...]`` prints the tables of those folders and runs nothing. The template's fg_iou is that of
its ``tiled`` variant (``z_filter``'s too).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)
from convert import fail  # noqa: E402
from run_peer import ONE_THREAD, check_options, run  # noqa: E402

TOOLS = ("biapy", "nnunet", "naive", "template")
NAIVE = os.path.join(os.path.dirname(REPO), "shared", "bench", "naive_unet.py")
TF_ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


class ToolFailed(Exception):
    """A tool's run ended without a result; its line records the message and the other runs go on."""


def naive(a, core, out):
    """The tutorial U-Net of ../shared/bench for the budget, on ``core``."""
    os.makedirs(out)
    result = os.path.join(out, "naive.json")
    env = {**os.environ, **ONE_THREAD, **TF_ONE_THREAD}
    seconds, rss, rc = run(["taskset", "-c", str(core), sys.executable, NAIVE, a.data, str(a.minutes * 60), result],
                           os.path.join(out, "naive.log"), env)
    if rc:
        raise ToolFailed(f"the tutorial U-Net failed (exit {rc}); see {out}/naive.log")
    return naive_record(out, seconds, rss)


def naive_record(out, seconds, rss):
    """The JSON line of a tutorial U-Net run in ``out``, ``seconds`` from start to the end of prediction."""
    r = json.load(open(os.path.join(out, "naive.json")))
    return {"tool": "naive", "fg_iou": r["fg_iou"], "steps": r["steps"],
            "crops_per_s": round(r["steps"] * 6 / r["train_s"], 2),  # naive_unet.py: batches of 6
            "wall_s": round(seconds, 1), "predict_s_per_mvox": round(1e6 / r["predict_vox_per_s"], 3),
            "peak_rss_mb": round(rss)}


def template(a, core, out, seed):
    """The 2D template with its defaults for the budget, on ``core``, one thread, with ``train.seed`` ``seed``."""
    env = {**os.environ, **ONE_THREAD, **TF_ONE_THREAD}
    log = os.path.join(out + ".log")
    cmd = ["taskset", "-c", str(core), sys.executable, os.path.join(REPO, "templates", a.template), REPO, a.data,
           out, "--id", "sbs", "--rid", str(seed), "--gpu", "cpu", "--threads", "1",
           "--set", f"train.time_limit_minutes={a.minutes:g}", "--set", f"train.seed={seed}", *a.template_options]
    seconds, rss, rc = run(cmd, log, env)
    if rc:
        raise ToolFailed(f"the template failed (exit {rc}); see {log}")
    return template_record(out, seed, seconds, rss)


def template_record(out, seed, seconds, rss):
    """The JSON line of the template's run ``out`` (its log beside it), ``seconds`` from start to the end."""
    text = open(out + ".log").read()
    run_dir = os.path.join(out, f"sbs_{seed}")
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    info, results = metrics["training"], metrics["results"]
    steps_per_epoch, batch = (int(v) for v in re.search(r"(\d+) steps of (\d+) per epoch", text).groups())
    steps = info["epochs"] * steps_per_epoch
    return {"tool": "template", "fg_iou": round(results["tiled"]["fg_iou"], 4),
            "fg_iou_z_filter": round(results["z_filter"]["fg_iou"], 4) if "z_filter" in results else None,
            "steps": steps, "crops_per_s": round(steps * batch / info["seconds"], 2), "wall_s": round(seconds, 1),
            "predict_s_per_mvox": info["predict_seconds_per_megavoxel"],
            "peak_rss_mb": None if rss is None else round(rss),  # None: not measured
            "epochs": info["epochs"], "precision": info["precision"], "run": run_dir}


def peer(a, name, core, out):
    """BiaPy or nnU-Net through run_peer.py, on ``core``; its JSON line."""
    cmd = [sys.executable, os.path.join(HERE, "run_peer.py"), name, a.data, f"{a.minutes:g}", out, "--core", str(core)]
    if a.labels:
        cmd += ["--labels", a.labels]
    if name == "nnunet":
        cmd += ["--configuration", a.nnunet_configuration, "--spacing", a.spacing,
                "--predict-minutes", f"{a.predict_minutes:g}"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise ToolFailed(f"{name} failed (exit {p.returncode}): {p.stderr.strip()[-1500:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {"tool": name, **{k: r.get(k) for k in ("fg_iou", "steps", "crops_per_s", "wall_s", "predict_s_per_mvox",
                                                   "peak_rss_mb", "peer_version", "trainer", "epochs", "checkpoint",
                                                   "fg_iou_budget_weights", "fg_iou_prob_at_0.5",
                                                   "predict_unfinished")}}


def table(lines):
    """Markdown: one row per run, then one per data set and tool with the mean and spread over its runs."""
    rows = ["| data | tool | run | fg_iou | steps | crops/s | wall s to the end of prediction | prediction s/MVox "
            "| peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    groups = {}
    for r in lines:
        name = os.path.basename(r["data"])
        run = f"seed {r['seed']}" if r["tool"] == "template" else r.get("repeat", 1)
        groups.setdefault((name, r["budget_min"], r["tool"]), [])
        if r.get("failed"):
            rows.append(f"| {name} | {r['tool']} | {run} | failed: {r['failed'].splitlines()[0][:200]} "
                        "| | | | | |")
            continue
        if r["fg_iou"] is None:  # a prediction stopped at --predict-minutes
            u = r["predict_unfinished"]
            fg = (f"not scored: prediction stopped after {u['after_s']} s at {u['windows_done']} of {u['windows']} "
                  "windows" + (f", about {u['estimated_s']} s at that pace" if u.get("estimated_s") else ""))
        else:
            fg = f"{r['fg_iou']:.4f}" + (f" (z_filter {r['fg_iou_z_filter']:.4f})" if r.get("fg_iou_z_filter")
                                         else "")
            groups[(name, r["budget_min"], r["tool"])].append(r)
        rows.append(f"| {name} | {r['tool']} | {run} | {fg} | {r['steps']} | {r['crops_per_s']} | {r['wall_s']} | "
                    f"{r['predict_s_per_mvox']} | {r['peak_rss_mb']} |")
    rows += ["", "| data | minutes | tool | runs | fg_iou mean ± sd | fg_iou min – max | wall s, mean | steps, mean "
             "| peak RSS MB, max |", "|---|---|---|---|---|---|---|---|---|"]
    for (name, minutes, tool), rs in groups.items():
        if not rs:
            rows.append(f"| {name} | {minutes:g} | {tool} | 0 | no scored run | | | | |")
            continue
        fg = [r["fg_iou"] for r in rs]
        sd = statistics.stdev(fg) if len(fg) > 1 else 0.0
        rows.append(f"| {name} | {minutes:g} | {tool} | {len(rs)} | {statistics.mean(fg):.3f} ± {sd:.3f} | "
                    f"{min(fg):.3f} – {max(fg):.3f} | {statistics.mean(r['wall_s'] for r in rs):.0f} | "
                    f"{statistics.mean(r['steps'] for r in rs):.0f} | "
                    f"{max((r['peak_rss_mb'] or 0) for r in rs):.0f} |")  # None: not measured
    return "\n".join(rows)


def read_results(outs):
    """The tools' lines of each OUT/result.jsonl (run_peer.py's own lines there are left out)."""
    lines = []
    for out in outs:
        path = os.path.join(out, "result.jsonl")
        if not os.path.isfile(path):
            fail(f"OUT {out}: no result.jsonl; expected the folder of a side-by-side run")
        lines += [r for r in map(json.loads, open(path)) if "tool" in r]
    return lines


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["--table"]:
        if len(argv) < 2:
            fail("--table OUT [OUT ...]: expected the folder(s) of side-by-side runs")
        print(table(read_results(argv[1:])))
        return
    template_options = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("minutes", type=float)
    ap.add_argument("out")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, of " + ", ".join(TOOLS))
    ap.add_argument("--seed", type=int, default=1, help="the template's train.seed (default 1)")
    ap.add_argument("--runs", type=int, default=1,
                    help="runs of each tool (default 1): the template with seeds S .. S+N-1, the others unseeded")
    ap.add_argument("--first-run", type=int, default=1,
                    help="number of the peers' first run here (default 1; give 2 to add runs to an OUT with one)")
    ap.add_argument("--labels", help="names of the foreground classes for nnU-Net's dataset.json")
    ap.add_argument("--template", default="template.py",
                    help="the template under templates/ (default template.py; 3D_template.py beside 3d_fullres)")
    ap.add_argument("--nnunet-configuration", default="2d", choices=("2d", "3d_fullres", "3d_lowres"),
                    help="nnU-Net's configuration (default 2d; a 3D one trains on the slices as one volume)")
    ap.add_argument("--spacing", default="1,1,1", help="voxel size z,y,x for nnU-Net's 3D configurations")
    ap.add_argument("--predict-minutes", type=float, default=120,
                    help="nnU-Net's prediction is stopped after this long, how far it got recorded (default 120)")
    ap.add_argument("--cores", default="0,1",
                    help="the cores the runs take, one run on each at a time (default 0,1; 0 runs them one by one)")
    a = ap.parse_args(argv)
    a.template_options = template_options
    a.data, a.out = os.path.abspath(a.data), os.path.abspath(a.out)
    tools = a.tools.split(",")
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        fail(f"--tools {a.tools}: unknown {', '.join(unknown)}; expected some of {', '.join(TOOLS)}")
    if a.runs < 1 or a.first_run < 1:
        fail(f"--runs {a.runs} --first-run {a.first_run}: expected whole numbers from 1")
    check_options(a)
    usable, given = sorted(os.sched_getaffinity(0)), a.cores
    a.cores = [int(c) for c in given.split(",") if c.strip().isdigit()]
    if len(a.cores) < len(given.split(",")) or len(set(a.cores)) < len(a.cores) or not set(a.cores) <= set(usable):
        fail(f"--cores {given}: expected distinct cores of this machine, comma-separated, of "
             f"{','.join(map(str, usable))}")
    if "naive" in tools and not os.path.isfile(NAIVE):
        fail(f"--tools naive: {NAIVE} not found; the tutorial U-Net lives in ../shared/bench beside the repo")
    if "template" in tools and not os.path.isfile(os.path.join(REPO, "templates", a.template)):
        fail(f"--template {a.template}: no such file in {os.path.join(REPO, 'templates')}")
    for split in ("train", "test"):
        for sub in ("x", "y"):
            if not os.path.isdir(os.path.join(a.data, split, sub)):
                fail(f"DATA {a.data}: no {split}/{sub} folder; expected the template layout")

    def folder(k):  # the peers' run k (counted from 1 here) writes under this folder
        n = a.first_run + k
        return a.out if n == 1 else os.path.join(a.out, f"run_{n}")

    jobs = []  # (tool, its folder, the JSON line's repeat number, the call on a core), run by run
    for k in range(a.runs):
        for t in tools:
            if t == "template":
                seed = a.seed + k
                path = os.path.join(a.out, f"template_{seed}")
                jobs.append((t, path, seed, lambda c, p=path, s=seed: template(a, c, p, s)))
            elif t == "naive":
                path = os.path.join(folder(k), "naive")
                jobs.append((t, path, a.first_run + k, lambda c, p=path: naive(a, c, p)))
            else:
                path = os.path.join(folder(k), t)
                jobs.append((t, path, a.first_run + k, lambda c, t=t, f=folder(k): peer(a, t, c, f)))
    taken = [p for _, p, _, _ in jobs if os.path.exists(p)]
    if taken:
        fail(f"OUT {a.out}: {', '.join(taken)} exist already; give another OUT, --seed or "
             "--first-run, or remove them")
    os.makedirs(a.out, exist_ok=True)
    failed = run_jobs(jobs, a)
    print(table(read_results([a.out])))
    if failed:
        raise SystemExit(f"error: {failed} of {len(jobs)} runs failed; their lines in {a.out}/result.jsonl say why")


def run_jobs(jobs, a):
    """Run ``jobs`` in order, one on each of ``a.cores`` at a time, each starting as soon as a core is free. Each
    run's JSON line is appended to OUT/result.jsonl when it ends, a failed run's with ``failed`` and its message,
    so that one tool's failure loses no other's result. Returns the number of failed runs."""
    from concurrent.futures import ThreadPoolExecutor
    from queue import Queue
    from threading import Lock
    free, lock, failed = Queue(), Lock(), []
    for c in a.cores:
        free.put(c)

    def work(job):
        tool, _, number, call = job
        core, start, t = free.get(), time.strftime("%Y-%m-%d %H:%M"), time.time()
        try:
            r = call(core)
        except ToolFailed as e:
            r = {"tool": tool, "failed": str(e), "fg_iou": None, "steps": None, "crops_per_s": None,
                 "wall_s": round(time.time() - t, 1), "predict_s_per_mvox": None, "peak_rss_mb": None}
            failed.append(tool)
        finally:
            free.put(core)
        r.update(data=a.data, budget_min=a.minutes, started=start, core=core,
                 seed=number if tool == "template" else None, repeat=None if tool == "template" else number)
        with lock, open(os.path.join(a.out, "result.jsonl"), "a") as f:
            f.write(json.dumps(r) + "\n")
            print(json.dumps(r), flush=True)

    with ThreadPoolExecutor(len(a.cores)) as pool:
        list(pool.map(work, jobs))
    return len(failed)


if __name__ == "__main__":
    main()
