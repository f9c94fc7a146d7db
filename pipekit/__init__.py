"""pipekit: resumable step pipelines that reduce astronomical imaging time series."""

__version__ = "0.1.0"

from .errors import PipekitError, PipelineError  # noqa: E402
from .secrets import install_log_scrubbing  # noqa: E402
from .pipeline import Pipeline, PipelineStep, load  # noqa: E402

__all__ = ["Pipeline", "PipelineStep", "PipelineError", "PipekitError", "Manager", "load",
           "__version__"]

# Secrets never reach a log record, whatever handler writes it.
install_log_scrubbing()


def __getattr__(name):
    # The Manager pulls in concurrent.futures and tqdm; import it on first use.
    if name == "Manager":
        from .manager import Manager
        return Manager
    raise AttributeError(f"module 'pipekit' has no attribute {name!r}")
