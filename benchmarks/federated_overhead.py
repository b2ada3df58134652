"""A federated round's overhead as a share of its local training: in-machine, or deployed on loopback (Flower).

    python benchmarks/federated_overhead.py                          # in-machine, cpu preset's model, sample data
    python benchmarks/federated_overhead.py --deployed               # the same over Flower on 127.0.0.1 ([fed] extra)
    python benchmarks/federated_overhead.py --data ../shared/data --rounds 3 --steps-per-round 50

Overhead = everything of a round's training phase but the sites' local training loops: messages (process
starts, serialisation, transport when deployed), loading the global state, the class means, each site's
last.pt, averaging and server.pt. Validation is left out on both sides (a centralised run validates too).
Per round: (fit wall time + averaging - the sites' local training time) / that time, where the training
time is the sum of the sites' seconds in-machine (they train one after another) and the longest site's
when deployed (they train side by side, one process each). Ratios only, from one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from crosssite.data.sites import SAMPLE_DATA
from crosssite.federated.settings import FedSettings
from crosssite.presets import get_preset


def overhead_shares(out: Path, side_by_side: bool) -> list[float]:
    shares = []
    for record in map(json.loads, (out / "federation_log.jsonl").read_text().splitlines()):
        training = (max if side_by_side else sum)(site["seconds"] for site in record["fit"].values())
        shares.append((record["seconds"] + record["average_seconds"] - training) / training)
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SAMPLE_DATA))
    parser.add_argument("--method", default="sepnorm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-round", type=int, default=20)
    parser.add_argument("--deployed", action="store_true", help="over Flower on 127.0.0.1 (insecure: one machine)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fed-overhead-"))
    config = get_preset("cpu").config.replace(method=args.method, data=args.data, out=str(folder / "fed"))
    settings = FedSettings(rounds=args.rounds, steps_per_round=args.steps_per_round)
    if args.deployed:  # what `crosssite federate --flower --insecure` runs
        from crosssite.federated.loopback import federate_over_flower

        federate_over_flower(config, settings, insecure=True)
    else:
        from crosssite.federated.local import federate

        federate(config, settings, progress=False)
    shares = overhead_shares(folder / "fed", side_by_side=args.deployed)
    where = "deployed (Flower, 127.0.0.1)" if args.deployed else "in-machine"
    print(json.dumps({"where": where, "method": args.method, "steps_per_round": args.steps_per_round,
                      "overhead_share_per_round": [round(s, 3) for s in shares], "folder": str(folder)}))


if __name__ == "__main__":
    main()
