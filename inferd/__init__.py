"""inferd: a model-serving daemon. The code lives in the top-level folders daemon/, scheduler/,
backends/ and config/, installed as inferd.daemon, inferd.scheduler, inferd.backends and
inferd.config (see pyproject.toml)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inferd")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
