"""The version, declared once: in pyproject.toml, read here from the installed metadata."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastlstm")
except PackageNotFoundError:  # the source tree on sys.path, never installed
    __version__ = "0+unknown"
