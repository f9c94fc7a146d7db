"""The ``pipekit`` command: set up, download, reduce, manage, report, inspect, resume, demo.

Exit codes: 0 success, 1 a pipeline failed (or a dataset was locked, or a file
could not be written), 2 a usage or configuration error, 130 stopped by SIGINT
(Ctrl-C), 143 stopped by SIGTERM (``kill``, Slurm at walltime) — the running
step is then recorded "interrupted" and one line says how to resume. Errors are
one line on stderr; ``-v`` shows the library's log on stderr as it runs.
"""

import argparse
import logging
import sys
from pathlib import Path

from .errors import LockError, PipekitError, PipelineError, describe_os_error
from .signals import exit_status, interrupts_raise

__all__ = ["main"]

TEMPLATES = ("data_download.yaml", "reduction_config.yaml", "reduction_manager_config.yaml",
             "tom_config.yaml")


class UsageError(Exception):
    """A command line that cannot be carried out (exit code 2)."""


def _say(text=""):
    print(text, flush=True)


# ---- commands ----------------------------------------------------------------

def cmd_init(args):
    from .atomic import write_text_new
    from .config import template_path
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATES:
        target = folder / name
        try:  # create only: a file the user has edited is never replaced, even in a race
            write_text_new(target, template_path(name).read_text(encoding="utf-8"))
        except FileExistsError:
            _say(f"kept     {target} (exists)")
            continue
        _say(f"written  {target}")
    _say("Edit the files (paths, proposals, environment variable names), then run "
         f"`pipekit download {folder / 'data_download.yaml'}`.")
    return 0


def _run(pipe, args, **run_kwargs):
    try:
        pipe.run(**run_kwargs)
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM as pipekit.signals.Terminated
        _say(repr(pipe))
        where = pipe.checkpoint_path or "CHECKPOINT"
        print(f"pipekit {args.command}: stopped by {_signal_name(exc)}; resume with "
              f"`pipekit resume {where}`", file=sys.stderr, flush=True)
        return exit_status(exc)
    except BaseException:
        _say(repr(pipe))
        raise
    _say(repr(pipe))
    if pipe.checkpoint_path:
        _say(f"checkpoint: {pipe.checkpoint_path}")
    return 0 if pipe.status == "success" else 1


def _signal_name(exc):
    return "SIGTERM" if exit_status(exc) == 143 else "SIGINT" if exit_status(exc) == 130 \
        else f"signal {exit_status(exc) - 128}"


def _resume_or_build(build, checkpoint, args):
    from .pipeline import load
    if args.resume and checkpoint.exists():
        return load(checkpoint)
    return build()


def cmd_download(args):
    from .workflows import download_pipeline
    pipe = download_pipeline(args.config)  # validates the config once; knows its checkpoint
    pipe = _resume_or_build(lambda: pipe, pipe.checkpoint_path, args)
    return _run(pipe, args, run_tags=args.tags or None, resume=args.resume)


def cmd_reduce(args):
    from .workflows import reduction_pipeline
    red_dir = Path(args.red_dir)
    if not red_dir.is_dir():
        raise UsageError(f"{red_dir} is not a dataset folder")
    pipe = _resume_or_build(lambda: reduction_pipeline(red_dir),
                            red_dir / "logs" / "pipeline.p", args)
    return _run(pipe, args, run_tags=args.tags or None, resume=args.resume)


def cmd_manage(args):
    from .manager import Manager
    client = None
    kwargs = {"progress": not args.no_progress}
    if args.max_parallel:
        kwargs["max_parallel"] = args.max_parallel
    if args.scheduler:
        try:
            from dask.distributed import Client
        except ImportError as err:
            raise UsageError("--scheduler needs Dask: pip install 'pipekit[dask]'") from err
        client = Client(args.scheduler)
        kwargs["executor"] = client
    manager = None
    try:
        manager = Manager.from_config(args.config, **kwargs)
        summary = manager.run()
    except KeyboardInterrupt as exc:  # passed on to the workers, which checkpointed
        if manager is not None and manager.summary is not None:
            _say(repr(manager.summary))
        print(f"pipekit manage: stopped by {_signal_name(exc)}; run `pipekit manage "
              f"{args.config}` again to finish the interrupted datasets", file=sys.stderr,
              flush=True)
        return exit_status(exc)
    finally:
        if client is not None:
            client.close()
    _say(repr(summary))
    _refresh_report(args.config)
    return 0 if summary.ok else 1  # a dataset skipped because it is locked is no failure


def _refresh_report(manager_config):
    """Rewrite the reduction folder's report page; a failure only warns (see refresh_report)."""
    from .config import load_manager_config
    from .report import refresh_report
    try:
        folder = load_manager_config(manager_config).data_reduction_dir
    except PipekitError as exc:
        logging.getLogger("pipekit.report").warning("report not written: %s", exc)
        return
    path = refresh_report(folder)
    if path is not None:
        _say(f"report: {path}")


def cmd_report(args):
    from .report import write_report
    folder = Path(args.reduction_dir)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder (expected a reduction folder)")
    _say(f"report: {write_report(folder)}")
    return 0


def _checkpoint_of(path):
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / "pipeline.p", path / "logs" / "pipeline.p"):
        if candidate.is_file():
            return candidate
    raise UsageError(f"no checkpoint found at {path} (looked for pipeline.p and "
                     "logs/pipeline.p)")


def cmd_status(args):
    from .locks import read_lock
    from .pipeline import load
    checkpoint = _checkpoint_of(args.path)
    pipe = load(checkpoint)
    _say(repr(pipe))
    _say(f"checkpoint: {checkpoint}")
    if pipe.failed_step:
        error = pipe.step(pipe.failed_step).error or ""
        _say(f"failed step: {pipe.failed_step}: {error.strip().splitlines()[-1] if error else ''}")
    red_dir = getattr(pipe, "red_dir", None)
    if red_dir is not None:
        holder = read_lock(red_dir)
        _say(f"lock: {holder.describe() if holder else 'none'}")
    return 0 if pipe.status in ("success", "not run") else 1


def cmd_resume(args):
    from .pipeline import load
    pipe = load(_checkpoint_of(args.path))
    return _run(pipe, args, resume=True)


def cmd_demo(args):
    from .demo import run_demo
    result = run_demo(args.dir, n_frames=args.frames, seed=args.seed, out=_say)
    return 0 if result["ok"] else 1


# ---- parser ------------------------------------------------------------------

def build_parser():
    """The argument parser of the ``pipekit`` command."""
    parser = argparse.ArgumentParser(
        prog="pipekit", description="Resumable pipelines that reduce imaging time series.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the log on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", help="write commented template configs into DIR")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_init)

    for name, helptext, arg, func in (
            ("download", "download new frames, sort them, configure datasets", "config", cmd_download),
            ("reduce", "reduce one dataset: photometry, light curve, upload", "red_dir", cmd_reduce)):
        p = sub.add_parser(name, help=helptext)
        p.add_argument(arg, metavar=arg.upper(),
                       help="data_download.yaml" if arg == "config" else "the dataset folder")
        p.add_argument("--tags", nargs="+", metavar="TAG", help="run only steps with these tags")
        p.add_argument("--resume", action="store_true",
                       help="resume the last run from its checkpoint")
        p.set_defaults(func=func)

    p = sub.add_parser("manage", help="reduce many datasets in parallel")
    p.add_argument("config", metavar="CONFIG", help="reduction_manager_config.yaml")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a Dask scheduler address (tcp://host:8786); default local processes")
    p.add_argument("--max-parallel", type=int, metavar="N", help="override max_parallel")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_manage)

    p = sub.add_parser("report", help="write REDUCTION_DIR/index.html: datasets, targets, plots")
    p.add_argument("reduction_dir", metavar="REDUCTION_DIR", help="the reduction folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("status", help="show the step table of a checkpoint or dataset")
    p.add_argument("path", metavar="PATH", help="a pipeline.p, a log folder or a dataset")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("resume", help="resume a pipeline from its checkpoint")
    p.add_argument("path", metavar="PATH", help="a pipeline.p, a log folder or a dataset")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("demo", help="simulate, serve, download, reduce and plot an event")
    p.add_argument("dir", metavar="DIR", nargs="?", default="pipekit-demo")
    p.add_argument("--frames", type=int, default=40, help="frames per dataset (default 40)")
    p.add_argument("--seed", type=int, default=2026)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None):
    """Run the ``pipekit`` command; return its exit code."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger("pipekit").addHandler(handler)
        logging.getLogger("pipekit").setLevel(logging.INFO)
    try:
        with interrupts_raise():  # SIGTERM stops a command as Ctrl-C does
            return args.func(args)
    except UsageError as err:
        print(f"pipekit {args.command}: {err}", file=sys.stderr)
        return 2
    except (PipelineError, LockError) as err:
        print(f"pipekit {args.command}: {_one_line(err)}", file=sys.stderr)
        return 1
    except PipekitError as err:  # configuration, frames, archive, TOM
        print(f"pipekit {args.command}: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only folder: the path and the cause
        print(f"pipekit {args.command}: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"pipekit {args.command}: stopped by {_signal_name(exc)}", file=sys.stderr)
        return exit_status(exc)


def _one_line(err):
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
