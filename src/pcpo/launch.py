"""``pcpo launch``: torchrun for pcpo commands, with pcpo's error contract.

``pcpo launch --nproc-per-node 2 train CONFIG ...`` takes torchrun's own options (it uses torchrun's
argument parser, so every torchrun flag works) and runs ``python -m pcpo.cli train CONFIG ...`` on each
rank through the same elastic launcher. What differs from calling ``torchrun`` is the exit: when a rank
fails, its one-line error (printed by rank 0) is all that is shown and the launcher exits with that
rank's status, where torchrun adds a ``ChildFailedError`` traceback and its own failure table. The
launcher's log lines (worker restarts, signals sent to workers) are hidden unless ``--debug`` or
``PCPO_DEBUG=1``.
"""

from __future__ import annotations

import logging
import signal
import sys

USAGE = "pcpo launch [torchrun options] COMMAND [ARGS ...]"
DESCRIPTION = (
    "Run a pcpo command (train, eval, ...) on several processes with torch.distributed's elastic "
    "launcher, as torchrun would, but ending a failure with the rank's own one-line error and its "
    "exit status instead of torchrun's traceback. Example: pcpo launch --nproc-per-node 2 train default "
    "--out runs/ddp --set threads=1. Every torchrun option below is accepted."
)


def add_launch_parser(sub) -> None:
    """Listed in ``pcpo --help``; ``pcpo.cli.main`` hands ``launch`` to :func:`main` before argparse, so
    that torchrun's options are parsed by torchrun's own parser."""
    sub.add_parser("launch", help="torchrun for pcpo commands: one-line errors, the failing rank's exit status",
                   add_help=False)


def _parser():
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    parser.prog, parser.usage, parser.description = "pcpo launch", USAGE, DESCRIPTION
    for action in parser._actions:
        if action.dest == "training_script":
            action.metavar, action.help = "COMMAND", "the pcpo command run on every rank (train, eval, ...)"
        elif action.dest == "training_script_args":
            action.metavar, action.help = "ARGS", "its arguments, as for `pcpo COMMAND`"
    return parser


def _fail(text: str, code: int) -> int:
    print(f"pcpo launch: error: {text}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str], commands: set[str], debug: bool = False) -> int:
    """``argv``: what follows ``pcpo launch``; ``commands``: the pcpo subcommands a rank may run."""
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed its usage error
        return int(e.code or 0)
    command = args.training_script
    if command not in commands:
        return _fail(f"{command!r} is not a pcpo command; choose one of {sorted(commands)} "
                     f"(usage: {USAGE})", 2)
    if args.module or args.no_python:
        return _fail("--module / --no-python do not apply: pcpo launch always runs `python -m pcpo.cli`", 2)
    args.module = True
    args.training_script_args = [command, *args.training_script_args]
    args.training_script = "pcpo.cli"
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    if debug:
        args.training_script_args = ["--debug", *args.training_script_args]
    else:  # elastic's loggers set their own levels when created, so each one is quietened
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)

    try:
        run(args)  # torchrun's main without its @record traceback
        return 0
    except ChildFailedError as e:
        if debug:
            raise
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        if code > 0:
            return code  # the rank printed its own line (pcpo's commands report on rank 0)
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return _fail(f"rank {rank} was killed by signal {name}", 128 - code)
    except SignalException as e:  # SIGTERM/SIGINT to the launcher: the workers got it and saved
        return 128 + int(e.sigval)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # rendezvous / launcher errors (bad endpoint, timeouts, bad option values)
        if debug:
            raise
        return _fail(" ".join(str(e).split()) or type(e).__name__, 1)
