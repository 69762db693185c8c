"""Output-path safety: what a path is before anything is opened, and refusals that name it.

A path given for output (checkpoint, its ``.prev`` and ``.damaged``, metrics, pictures) must be
absent or a regular file (pictures: a folder). A FIFO, socket, device or folder is refused with an
:class:`~xpcnn.errors.InputError` that names the path and what it is; nothing is ever opened in a
mode that can block (a FIFO opened for reading or writing waits for a peer forever).

Symlinks are followed, never replaced: a checkpoint behind a link is written atomically beside the
link's target (the temporary file, ``.prev`` and ``.damaged`` live in the target's folder), and the
link keeps pointing at it.

>>> import pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> path_kind(d / "absent"), path_kind(d)
('absent', 'directory')
>>> (d / "m.npz.damaged").write_bytes(b"")
0
>>> fresh_name(d / "m.npz", ".damaged").name
'm.npz.damaged.1'
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

from .errors import CheckpointError, InputError

_KINDS = ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"),
          (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def _mode_kind(mode):
    return next((name for test, name in _KINDS if test(mode)), "special file")


def path_kind(path) -> str:
    """What ``path`` is, following symlinks: "absent", "regular file", "directory", "FIFO (named
    pipe)", "socket", "character device", "block device"; a link says so: "symlink to a FIFO ..."."""
    path = os.fspath(path)
    try:
        target = os.stat(path).st_mode
    except FileNotFoundError:
        return "symlink to a missing file" if os.path.islink(path) else "absent"
    except OSError as exc:
        return f"unreadable path ({exc.strerror or exc})"
    kind = _mode_kind(target)
    return f"symlink to a {kind}" if os.path.islink(path) else kind


def real_target(path) -> Path:
    """``path`` itself, or for a symlink the file it points to (which need not exist yet)."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def previous_path(path) -> Path:
    """Where a checkpoint save keeps the file it replaced: ``<path>.prev`` (beside the target when
    ``path`` is a symlink, since the target is what is written)."""
    path = real_target(path)
    return path.with_name(path.name + ".prev")


def require_file_or_absent(path, flag, *, fix="give a regular file's path"):
    """Refuse (InputError) anything at ``path`` but a regular file, a missing one, or a link to
    either; stat only, nothing is opened."""
    kind = path_kind(path)
    if kind in ("absent", "regular file", "symlink to a regular file", "symlink to a missing file"):
        return
    extra = " (it discards or cannot hold what is written)" if "device" in kind else ""
    raise InputError(f"{flag} {path} is a {kind}{extra}; expected a regular file: {fix}.")


def require_folder_or_absent(path, flag):
    kind = path_kind(path)
    if kind not in ("absent", "directory", "symlink to a directory"):
        kind = "file" if kind == "regular file" else kind
        raise InputError(f"{flag} {path} is a {kind}; expected a folder (it is created if missing).")


def refuse_same_file(outputs):
    """``outputs``: {description: path or None}. Two that are, or resolve to, one file: InputError."""
    seen = {}
    for what, path in outputs.items():
        if not path:
            continue
        key = os.path.realpath(path)
        try:
            st = os.stat(key)
            key = (st.st_dev, st.st_ino)  # hard links too
        except OSError:
            pass
        if key in seen:
            raise InputError(f"{seen[key]} and {what} are the same file ({path}): one would overwrite the other. "
                             "Give them different paths.")
        seen[key] = what


def fresh_name(path, suffix) -> Path:
    """``PATH<suffix>``, or ``PATH<suffix>.1``, ``.2``, ... : the first name where nothing is (not even
    a dangling link), so that setting a file aside never replaces an earlier one."""
    path = Path(path)
    candidate, n = path.with_name(path.name + suffix), 0
    while os.path.lexists(candidate):
        n += 1
        candidate = path.with_name(f"{path.name}{suffix}.{n}")
    return candidate


def set_aside(path, suffix=".damaged") -> Path:
    """Rename the file at ``path`` (a link's target, not the link) to a fresh ``PATH<suffix>``."""
    target = real_target(path)
    aside = fresh_name(target, suffix)
    os.rename(target, aside)
    return aside


_OPEN_FLAGS = {"rb": os.O_RDONLY, "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
               "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND}


def open_regular(path, where, *, error=CheckpointError, mode="rb"):
    """Open ``path`` (binary ``mode`` "rb", "wb" or "ab") without ever blocking; refuse (``error``)
    what is not a regular file. O_NONBLOCK makes opening a FIFO return at once (or fail, for
    writing with no reader); fstat then names what it is."""
    flags = _OPEN_FLAGS[mode] | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o666)
    try:
        st_mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(st_mode):
            kind = _mode_kind(st_mode)
            raise error(f"{where}: it is a {kind}, not a regular file" +
                        ("" if kind == "directory" else "; give the path of a file"))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def metrics_refusal(path):
    """Why an existing ``--metrics-out`` file may not be replaced without --overwrite, or None
    (absent or empty). Says whether it holds metrics; reads at most 1 MiB of a regular file."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        with open_regular(path, path, error=InputError) as f:
            head = f.read(1 << 20).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    if any(_is_metrics_line(line) for line in head[:-1] or head):
        return (f"--metrics-out {path} holds the metrics of an earlier run. Choose another file, add --overwrite to "
                "replace them, or --resume with that run's --checkpoint.")
    return (f"--metrics-out {path} exists and holds no xpcnn metrics (it is some other file). Choose another "
            "file, or add --overwrite to replace it.")


def _is_metrics_line(line):
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "epoch" in record


PLOT_FILES = ("history.png", "filters_before.png", "filters_after.png", "feature_maps.png")


def check_train_outputs(args):
    """Every output of ``xpcnn train`` is absent or a regular file (--plots: a folder) and no two
    are one file; InputError naming the flag, the path and what it is. Nothing is opened."""
    checkpoint, metrics, plots = args.checkpoint, args.metrics_out, args.plots
    prev = previous_path(checkpoint) if checkpoint else None
    if checkpoint:
        fix = "give the path of a checkpoint file (a new one is created)"
        require_file_or_absent(checkpoint, "--checkpoint", fix=fix)
        require_file_or_absent(prev, f"The previous version of --checkpoint {checkpoint},", fix="move it away")
    if metrics:
        require_file_or_absent(metrics, "--metrics-out", fix="give a file's path, or leave out --metrics-out")
    if plots:
        require_folder_or_absent(plots, "--plots")
        for name in PLOT_FILES:
            require_file_or_absent(Path(plots) / name, "The picture", fix="move it away or choose another --plots")
    refuse_same_file({"--checkpoint": checkpoint, f"--checkpoint's previous version ({prev})": prev,
                      "--metrics-out": metrics, "--plots": plots})


@contextlib.contextmanager
def reported_after_save(flag, path, checkpoint, epoch):
    """Turn an OSError writing ``flag``'s ``path`` into an InputError (exit 2) that says what is
    saved: the checkpoint is written before metrics and pictures, so epoch ``epoch`` is safe."""
    try:
        yield
    except OSError as exc:
        saved = (f"epoch {epoch} is saved in {checkpoint}: fix {flag} and continue with --resume" if checkpoint
                 else "no checkpoint was asked for (--checkpoint), so the weights are not saved")
        raise InputError(f"Cannot write {flag} {path}: {exc.strerror or exc}; {saved}.") from None
