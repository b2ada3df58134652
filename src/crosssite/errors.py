"""User-facing errors: the CLI prints these as one line and exits non-zero; warnings too are one line."""

import importlib
import sys


class CrossSiteError(Exception):
    """A problem with the user's input (data, checkpoint, flags), not a bug.

    The message must name the file or setting at fault and say what is wrong.
    """


class DataError(CrossSiteError):
    """An image, folder, split file or metadata file that cannot be used."""


class CheckpointError(CrossSiteError):
    """A file that is not a crosssite checkpoint, or one of the wrong kind."""


class DivergedError(CrossSiteError):
    """Training produced a non-finite loss."""


class CrossSiteWarning(UserWarning):
    """Something was repaired or skipped that the user should know of (the CLI prints it as one line)."""


def print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, like errors (no source location: the user cannot act on it); installed as
    `warnings.showwarning` by the CLI and in every `crosssite sweep` worker process."""
    print(f"crosssite: warning: {message}", file=sys.stderr)


def first_line(error: BaseException) -> str:
    """The first line of an error's text (its type where it has none): what one-line messages quote."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def require_extra(module: str, purpose: str, extra: str, error: type[CrossSiteError] = CrossSiteError):
    """`module` imported, or one line saying that `purpose` needs the optional `extra` and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(f"{purpose} needs the [{extra}] extra: pip install 'crosssite[{extra}]'") from None
