"""Time ternarizing all of ResNet-50's weights (25.5M) per group size; medians of interleaved rounds.

Run: python benchmarks/ternarize_resnet50.py [--rounds 5]. No weights are needed: only the shapes matter.
"""

import argparse
import statistics
import time

import torch
import torchvision

from fgq_pipeline import ternarize

GROUP_SIZES = (4, 64, "filter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    weights = [p.detach() for p in torchvision.models.resnet50().parameters() if p.dim() > 1]
    print(f"ResNet-50: {len(weights)} weight tensors, {sum(w.numel() for w in weights):,} weights, "
          f"{torch.get_num_threads()} threads")
    times: dict = {n: [] for n in GROUP_SIZES}
    for _ in range(args.rounds):
        for n in GROUP_SIZES:  # interleaved, so machine noise hits every group size alike
            start = time.perf_counter()
            for w in weights:
                ternarize(w, n)
            times[n].append(time.perf_counter() - start)
    for n, seconds in times.items():
        print(f"group_size={n!s:>6}: median {statistics.median(seconds):.3f} s "
              f"(min {min(seconds):.3f}, max {max(seconds):.3f}, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
