#!/usr/bin/env python
"""The suite's command line.

  python run_all.py plan EXPERIMENT.yaml [--csv]   the expanded grid: backbones, exemplars, bytes
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from benchmark.config import ConfigError, load_experiment
from benchmark.grid import expand, plan_rows
from budgets.planner import BudgetError

PLAN_COLUMNS = ["method", "seed", "budget_mb", "backbone", "model_params", "exemplars", "model_bytes",
                "exemplar_bytes", "total_bytes", "policy", "scenario", "point", "point_label",
                "num_backbones", "budget_bytes", "total_mb", "run_id"]


def plan_command(args: argparse.Namespace) -> int:
    experiment = load_experiment(args.experiment)
    runs = expand(experiment)
    table = pd.DataFrame(plan_rows(runs))[PLAN_COLUMNS].astype({"point": "Int64", "budget_bytes": "Int64"})
    if args.csv:
        table.to_csv(sys.stdout, index=False)
        return 0
    print(f"{experiment.name}: {experiment.dataset}, {', '.join(experiment.scenarios)}, "
          f"{len(table)} cells in {len(runs)} runs, memory policy {experiment.policy!r} (MB = 2^20 bytes)")
    shown = table.assign(budget_mb=table.budget_mb.map(_mb), total_mb=table.total_mb.map(_mb),
                         point=table.point.map(lambda p: "-" if pd.isna(p) else int(p)))
    columns = ["scenario", "seed", "point", "budget_mb", "method", "backbone", "num_backbones",
               "model_params", "exemplars", "total_mb", "run_id"]
    print(shown[columns].to_string(index=False))
    return 0


def _mb(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.2f}"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description="Memory-aligned class-incremental learning benchmark.")
    commands = top.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="print the expanded grid with budgets (needs no data, no GPU)")
    plan.add_argument("experiment", help="experiment YAML file")
    plan.add_argument("--csv", action="store_true", help="CSV, one row per grid cell")
    plan.set_defaults(handler=plan_command)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, BudgetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
