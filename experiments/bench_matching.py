"""Benchmark: the authors' naive matching vs the project's single-pass adjoint matching.

Random activations with the paper's exact layer shapes (torchvision ResNet-50's 49 convs x open_clip
RN50 ``visual.layer1..4`` at 224 px, read off the real modules with hooks), then:

* ``naive``: the reference's computation pattern (docs/paper.md): pass 1 for the statistics,
  pass 2 normalizes each batch in float64, upsamples BOTH maps of every layer pair to the larger size
  (bilinear) and einsums. It uses exact population statistics and no epsilon, so that both
  implementations compute the same Z and ``max_abs_diff`` measures numerical agreement only.
* ``ours``: ``xai_lightning.surgery.CrossMoments``: one pass, running sums about per-channel shifts (float64
  per channel, float32 sums of products added to by the GEMM), the GEMM at the smaller resolution of each
  pair through the adjoint of the upsampling.
* ``matmul``: plain ``torch.matmul`` with the same number of FLOPs as ``ours`` per batch, in the same
  run: how close ``ours`` is to the machine's GEMM throughput.

Each implementation runs in its own process; ``peak_mb`` is the peak resident memory (CPU, VmHWM reset
before the computation) or peak CUDA allocation above what the activations themselves take.
``ours`` and ``matmul`` run ``--repeats`` times, interleaved, each in a fresh process; the median run is
reported (timings on a shared 2-core machine vary by ~30 % from run to run).
Output: one JSON line per implementation.

    python experiments/bench_matching.py [--images 16] [--batch-size 8] [--device cpu|cuda] [--image-size 224]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import torch
import torch.nn.functional as F

from xai_lightning.surgery import capture, matching_scores, resolve_layers


def layer_shapes(image_size: int) -> tuple[list[tuple[str, int, int, int]], list[tuple[str, int, int, int]]]:
    """(name, C, H, W) of ResNet-50's 49 convs and RN50's visual.layer1..4, from the real modules."""
    import open_clip
    import torchvision

    out = []
    for model, spec, fwd in (
        (torchvision.models.resnet50(), "convs", lambda m, x: m(x)),
        (
            open_clip.create_model("RN50", pretrained=None, force_image_size=image_size),
            "stages",
            lambda m, x: m.encode_image(x),
        ),
    ):
        names = resolve_layers(model, spec)
        with capture(model, names) as acts, torch.no_grad():
            fwd(model.eval(), torch.zeros(1, 3, image_size, image_size))
        out.append([(n, *acts[n].shape[1:]) for n in names])
    return out[0], out[1]


def make_batch(shapes, batch: int, seed: int, device: str) -> dict[str, torch.Tensor]:
    """Random maps with per-channel offsets/scales (some |mean| >> std), deterministic per (seed, layer)."""
    g = torch.Generator().manual_seed(seed)
    acts = {}
    for name, c, h, w in shapes:
        x = torch.randn(batch, c, h, w, generator=g)
        scale = torch.rand(1, c, 1, 1, generator=g) * 2 + 0.1
        offset = torch.randn(1, c, 1, 1, generator=g) * 3
        acts[name] = (x * scale + offset).to(device)
    return acts


def gemm_flops(s_shapes, c_shapes, images: int, naive: bool) -> float:
    total = 0.0
    for _, cs, hs, ws in s_shapes:
        for _, cc, hc, wc in c_shapes:
            pos = max(hs, hc) * max(ws, wc) if naive else min(hs, hc) * min(ws, wc)
            total += 2.0 * images * pos * cs * cc
    return total


def naive_z(s_batches, c_batches) -> torch.Tensor:
    """The reference's pattern: two passes, both maps upsampled to the larger size, float64 einsum."""

    def stats(batches):
        s1, s2, n = {}, {}, {}
        for acts in batches:
            for k, x in acts.items():
                x = x.double()
                s1[k] = s1.get(k, 0) + x.sum(dim=(0, 2, 3))
                s2[k] = s2.get(k, 0) + (x * x).sum(dim=(0, 2, 3))
                n[k] = n.get(k, 0) + x.shape[0] * x.shape[2] * x.shape[3]
        mean = {k: s1[k] / n[k] for k in s1}
        return mean, {k: (s2[k] / n[k] - mean[k] ** 2).clamp_min(0).sqrt() for k in s1}

    (mu_s, sd_s), (mu_c, sd_c) = stats(s_batches), stats(c_batches)  # pass 1
    rows = None
    count = 0
    for s_acts, c_acts in zip(s_batches, c_batches):  # pass 2
        count += next(iter(s_acts.values())).shape[0]
        blocks = []
        for ks, s in s_acts.items():
            ns = (s.double() - mu_s[ks].view(1, -1, 1, 1)) / sd_s[ks].view(1, -1, 1, 1)
            row = []
            for kc, c in c_acts.items():
                nc = (c.double() - mu_c[kc].view(1, -1, 1, 1)) / sd_c[kc].view(1, -1, 1, 1)
                size = (max(ns.shape[2], nc.shape[2]), max(ns.shape[3], nc.shape[3]))
                su = F.interpolate(ns, size=size, mode="bilinear", align_corners=False)
                cu = F.interpolate(nc, size=size, mode="bilinear", align_corners=False)
                row.append(torch.einsum("aixy,ajxy->ij", su, cu) / (size[0] * size[1]))
                del su, cu
            blocks.append(torch.cat(row, dim=1))
        z = torch.cat(blocks, dim=0)
        rows = z if rows is None else rows + z
    return (rows / count).float()


def ours_z(s_batches, c_batches) -> torch.Tensor:
    return matching_scores(s_batches, c_batches, score="reference")


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _worker(impl: str, args: dict, queue) -> None:
    torch.set_num_threads(args["threads"]) if args["threads"] else None
    s_shapes, c_shapes = layer_shapes(args["image_size"])
    n_batches = args["images"] // args["batch_size"]
    dev = args["device"]
    s_batches = [make_batch(s_shapes, args["batch_size"], 1000 + i, dev) for i in range(n_batches)]
    c_batches = [make_batch(c_shapes, args["batch_size"], 2000 + i, dev) for i in range(n_batches)]
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if impl == "matmul":
        flops = gemm_flops(s_shapes, c_shapes, args["batch_size"], naive=False)
        k = max(int(flops / (2.0 * 22720 * 3840)), 1)
        a = torch.randn(22720, k, device=dev)
        b = torch.randn(k, 3840, device=dev)
        a @ b
        sync()
        t0 = time.perf_counter()
        for _ in range(n_batches):
            a @ b
        sync()
        seconds = time.perf_counter() - t0
        queue.put(
            {
                "impl": "matmul",
                "gflops": round(2.0 * 22720 * 3840 * k * n_batches / seconds / 1e9, 1),
                "seconds": round(seconds, 3),
                "shape": [22720, k, 3840],
            }
        )
        return
    fn = naive_z if impl == "naive" else ours_z
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = _rss_kb("VmRSS:") * 1024
    sync()
    t0 = time.perf_counter()
    z = fn(s_batches, c_batches)
    sync()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if dev == "cuda" else _rss_kb("VmHWM:") * 1024) - base
    flops = gemm_flops(s_shapes, c_shapes, args["images"], naive=impl == "naive")
    torch.save(z.cpu(), args["out"] + f".{impl}.pt")
    queue.put(
        {
            "impl": impl,
            "seconds": round(seconds, 3),
            "peak_mb": round(peak / 2**20, 1),
            "gflops": round(flops / seconds / 1e9, 1),
            "gemm_gflop": round(flops / 1e9, 1),
            "z_shape": list(z.shape),
        }
    )


def median(runs: list[dict]) -> dict:
    """The run with the median time, with every run's seconds."""
    runs = sorted(runs, key=lambda r: r["seconds"])
    return {**runs[len(runs) // 2], "repeats": len(runs), "seconds_all": [r["seconds"] for r in runs]}


def run(impl: str, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(impl, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="/tmp/bench_matching")
    ap.add_argument("--skip-naive", action="store_true", help="only ours and matmul (e.g. large --images)")
    ap.add_argument("--repeats", type=int, default=3, help="ours and matmul: median of this many runs (naive: one)")
    a = ap.parse_args()
    if a.images % a.batch_size:
        ap.error("--images must be a multiple of --batch-size")
    args = vars(a)
    results = {}
    if not a.skip_naive:
        results["naive"] = run("naive", args)
    timed: dict[str, list[dict]] = {"ours": [], "matmul": []}
    for _ in range(a.repeats):  # interleaved, so that a slow spell of the machine hits both
        for impl in timed:
            timed[impl].append(run(impl, args))
    results.update({impl: median(runs) for impl, runs in timed.items()})
    if not a.skip_naive:
        diff = float((torch.load(a.out + ".naive.pt") - torch.load(a.out + ".ours.pt")).abs().max())
        for impl in ("naive", "ours"):
            results[impl]["max_abs_diff"] = diff
        results["ours"]["speedup_vs_naive"] = round(results["naive"]["seconds"] / results["ours"]["seconds"], 2)
        results["ours"]["memory_ratio_vs_naive"] = round(
            results["ours"]["peak_mb"] / max(results["naive"]["peak_mb"], 1e-9), 4
        )
    results["ours"]["fraction_of_matmul"] = round(results["ours"]["gflops"] / results["matmul"]["gflops"], 3)
    meta = {
        "device": a.device if a.device == "cpu" else torch.cuda.get_device_name(0),
        "images": a.images,
        "batch_size": a.batch_size,
        "image_size": a.image_size,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    for r in results.values():
        print(json.dumps({**r, **meta}))


if __name__ == "__main__":
    main()
