"""Stable error classes for failed studies.

Every failure a study can meet is raised as a `StudyError` carrying one of the
classes below. The class, not the message, is what scripts group on and what
decides whether the ledger gives the study another attempt.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# class -> (retryable, what it means). A retryable class sends the study back to
# pending until its attempts are used up; a permanent one fails it at once,
# because running bad input again only burns GPU hours.
ERROR_CLASSES: dict[str, tuple[bool, str]] = {
    "input.no_series": (False, "the study has no usable sagittal T2 series or image"),
    "input.missing": (False, "a file or folder the study needs does not exist"),
    "input.bad_dicom": (False, "a DICOM file is truncated, unreadable or lacks pixel data"),
    "input.bad_nifti": (False, "a NIfTI input is truncated, unreadable or holds non-finite voxels"),
    "input.geometry": (False, "the slices do not form one regular volume"),
    "input.mixed_series": (False, "the series folder holds images of more than one SeriesInstanceUID"),
    "input.not_sagittal": (False, "the series is not in the sagittal plane the model expects"),
    "input.bad_id": (False, "the study or series id could not safely become a file name"),
    "segment.error": (True, "the segmenter raised an error"),
    "segment.empty": (False, "the segmenter found no structures"),
    "segment.oom": (True, "the segmenter ran out of GPU memory"),
    "measure.error": (False, "the label map could not be measured"),
    "output.io": (True, "an output could not be written"),
    "worker.lost": (True, "the worker holding the study disappeared"),
    "worker.timeout": (True, "the study ran past its time limit"),
    "internal": (True, "an unexpected error inside batchseg"),
    # Dataset-level problems stop `init` before any study is added.
    "dataset.csv": (False, "a dataset CSV is missing, not readable UTF-8 CSV, or lacks a required column"),
    "dataset.study_list": (False, "the study list cannot be read"),
    "dataset.layout": (False, "the dataset is missing or is not in the layout asked for"),
}


# Control characters (terminal escapes, DEL, C1), format characters (bidi overrides, zero widths) and the lone
# surrogates that stand for undecodable bytes in file names: shown escaped, never sent to a terminal as they are.
_UNPRINTABLE = {"Cc", "Cf", "Cs"}


def printable(text: object) -> str:
    """`text` with every control, format and surrogate character written as its Python escape (`\\x1b`, `\\u202e`).

    File names and DICOM tags can hold terminal escape sequences or invisible characters; escaped, they show
    what is there without acting on the terminal.
    """
    s = str(text)
    if s.isprintable():
        return s
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) in _UNPRINTABLE else c for c in s)


def one_line(text: object, limit: int | None = None) -> str:
    """`text` on one printable line (scanners put newlines in tags, tracebacks have many), cut to `limit` characters."""
    line = printable(" ".join(str(text).split()))
    if limit is not None and len(line) > limit:
        line = line[: max(0, limit - 3)] + "..."
    return line


def is_retryable(error_class: str) -> bool:
    return ERROR_CLASSES.get(error_class, (True, ""))[0]


@dataclass
class StudyError(Exception):
    """A failure of one study, with a stable class and a one-line message."""

    error_class: str
    message: str

    def __post_init__(self) -> None:
        if self.error_class not in ERROR_CLASSES:
            raise ValueError(f"unknown error class {self.error_class!r}")
        self.message = one_line(self.message)
        super().__init__(self.error_class, self.message)

    def __str__(self) -> str:
        return f"{self.error_class}: {self.message}"

    @property
    def retryable(self) -> bool:
        return is_retryable(self.error_class)


class SetupError(RuntimeError):
    """The segmenter cannot run on this worker at all (missing package or weights).

    Not a study's fault: the worker gives its study back uncharged and stops, instead of
    failing every study in the queue one after another.
    """


class LedgerUnreachable(RuntimeError):
    """The ledger stayed unreachable for the whole retry window (`db_retry_seconds`).

    Not a study's fault and not a lost claim: the worker stops and says so in one line; the
    study it held stays `running` until its lease runs out (or `run` sees the worker gone).
    """
