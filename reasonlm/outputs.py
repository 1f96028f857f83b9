"""Owning output directories: a stage replaces only what it wrote, one run at a time, and a full
disk is one line.

    with outputs.lock(final):                       # a second run on `final` stops, naming our PID
        outputs.check_replaceable(final, "data")    # before the work: stop now, not after an hour
        tmp = outputs.fresh_temporary(final, "data")
        with outputs.writing(final, tmp):           # any error removes tmp; ENOSPC is one line
            ...write into tmp...
        outputs.replace(tmp, final, "data")         # the old `final` goes only once tmp is complete

Three rules, one function each:
  - Ownership. Every directory a stage builds and later replaces as a whole (the dataset, the base,
    an adapter, an export) carries a marker file naming the stage that wrote it. A stage removes or
    replaces a directory only when it carries that stage's marker (or is empty); anything else, a
    folder of the user's or another stage's output, stops the run with one line and is left as it
    was.
    The files a stage writes beside such folders (a run directory's config.yaml and metrics.jsonl,
    an eval folder's report, the pipeline's recipe.yaml) follow the same rule: they go only into a
    folder that stage marked (`claim`).
  - One run per output. `lock` takes an exclusive advisory lock (flock) on a hidden file beside the
    output directory (beside, not inside, because the data stage and export swap the whole
    directory by renaming it). The kernel drops the lock when the process dies, however it dies, so
    there is no stale lock to clean up; the holder's PID is written into the file for the message.
  - Atomic writes. A file or directory is written under a temporary name and renamed; when writing
    fails, the temporary is removed, and a full disk (ENOSPC, EDQUOT) becomes one line naming the
    filesystem and the output.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat

MARKER = ".reasonlm-output"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class OutputError(ValueError):
    """An output that may not be written (someone else's, locked, no space), reported as one line."""


# --- ownership -------------------------------------------------------------------------------
def mark(directory: str, stage: str) -> None:
    """Record in `directory` that `stage` wrote it (and may replace it later)."""
    with open(os.path.join(directory, MARKER), "w", encoding="utf-8") as f:
        json.dump({"written_by": f"reasonlm {stage}"}, f)


def written_by(directory: str) -> str | None:
    """The stage recorded in a directory's marker ('reasonlm data', ...), or None."""
    try:
        with open(os.path.join(directory, MARKER), encoding="utf-8") as f:
            who = json.load(f).get("written_by")
    except (OSError, ValueError, AttributeError):
        return None
    return who if isinstance(who, str) else None


def check_replaceable(path: str, stage: str) -> None:
    """Stop unless `path` is absent, an empty directory, or a directory `stage` wrote."""
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        if not os.listdir(path) or written_by(path) == f"reasonlm {stage}":
            return
        who = written_by(path)
        owner = f"it was written by {who}" if who else "it was not written by reasonlm"
    else:
        owner = "it is not a directory reasonlm wrote"
    raise OutputError(f"{path} exists and {owner}, so reasonlm {stage} will not replace it: "
                      f"choose another output path, or move it away yourself (nothing was changed)")


def claim(directory: str, stage: str, files: tuple[str, ...] = ()) -> None:
    """Make `directory` a folder of `stage`'s own, one it writes single files into (a run directory:
    its config.yaml, metrics.jsonl, report.md, the pipeline's recipe.yaml and stages.json; `files`
    names them). The rule is the one for whole-folder outputs: a folder `stage` marked is its own;
    an absent or empty one is created and marked, and so is one holding nothing but what reasonlm
    wrote (marked folders, lock files: a run directory the stages made one by one). Anything else, a
    folder of the user's or one another stage marked, stops the run with one line naming the first
    of `files` there (else the first entry reasonlm did not write), before anything is written."""
    if check_claimable(directory, stage, files):
        return
    os.makedirs(directory, exist_ok=True)
    mark(directory, stage)


def check_claimable(directory: str, stage: str, files: tuple[str, ...] = ()) -> bool:
    """Stop (OutputError) unless `claim` may take `directory`, writing nothing: True when `stage`
    marked it already, False when it is absent or may be taken (empty, or only reasonlm's in it)."""
    if os.path.isdir(directory) and not os.path.islink(directory):
        who = written_by(directory)
        if who == f"reasonlm {stage}":
            return True
        foreign = sorted(e for e in os.listdir(directory) if not reasonlm_entry(directory, e))
        if who is None and not foreign:
            return False
        owner = f"was written by {who}" if who else "was not written by reasonlm"
        mine = [f for f in files if os.path.lexists(os.path.join(directory, f))]
        what = (f"{os.path.join(directory, mine[0])} exists" if mine else
                f"{directory} holds {foreign[0]}" if foreign else f"{directory} exists")
        raise OutputError(f"{what} and {directory} {owner}, so reasonlm {stage} will not write into it: "
                          f"choose another output path, or move it away yourself (nothing was changed)")
    if os.path.lexists(directory):
        raise OutputError(f"{directory} exists and is not a directory, so reasonlm {stage} will not write into it: "
                          f"choose another output path (nothing was changed)")
    return False


def reasonlm_entry(directory: str, name: str) -> bool:
    """Whether an entry of `directory` is reasonlm's: a folder a stage marked, or a lock file."""
    path = os.path.join(directory, name)
    if os.path.islink(path):
        return False
    if os.path.isdir(path):
        return written_by(path) is not None
    return name.startswith(".") and name.endswith(".lock")


def remove_owned(path: str, stage: str) -> None:
    """Remove a directory `stage` wrote (a leftover temporary, say); stop on anything else."""
    check_replaceable(path, stage)
    if os.path.lexists(path):
        shutil.rmtree(path)


def fresh_temporary(final: str, stage: str) -> str:
    """An empty, marked `<final>.tmp` to build the output in (a killed run's leftover is removed)."""
    tmp = final + ".tmp"
    remove_owned(tmp, stage)
    os.makedirs(tmp)
    mark(tmp, stage)
    return tmp


def replace(tmp: str, final: str, stage: str) -> None:
    """Put the finished `tmp` in place of `final`; the old one is removed only after the swap."""
    check_replaceable(final, stage)
    old = final + ".old"
    remove_owned(old, stage)
    if os.path.lexists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# --- one run per output ----------------------------------------------------------------------
def lock_path(directory: str) -> str:
    """The lock file of an output directory: hidden, beside it (out/run/.train.lock)."""
    directory = os.path.normpath(directory)
    return os.path.join(os.path.dirname(directory), f".{os.path.basename(directory)}.lock")


@contextlib.contextmanager
def lock(directory: str, enabled: bool = True):
    """Hold an exclusive lock on `directory` for the duration of the block; if another process
    holds it, stop with one line naming that process. enabled=False (a non-main process of a
    distributed run, whose main process holds the lock) does nothing."""
    if not enabled:
        yield
        return
    path = lock_path(directory)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise OutputError(f"{directory} is in use by another reasonlm run (PID {holder}); wait for it to "
                              f"finish or choose another output directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiting run)


# --- atomic writes ---------------------------------------------------------------------------
@contextlib.contextmanager
def writing(path: str, *temporaries: str):
    """Run a block that writes `path` (through `temporaries`). On any error or interrupt the
    temporaries are removed; a full disk is re-raised as one line."""
    try:
        yield
    except BaseException as e:
        for tmp in temporaries:
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.lexists(tmp):
                os.remove(tmp)
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            raise disk_full(path) from None
        raise


def disk_full(path: str) -> OutputError:
    return OutputError(f"no space left on {mount_point(path)} while writing {path}; nothing was left under "
                       f"that name: free some space and run the same command again")


def mount_point(path: str) -> str:
    """The filesystem `path` is on (its mount point), for the disk-full message."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    return p


def atomic_write(path: str, text: str) -> None:
    """Write a text file under a temporary name and rename it into place; a file replaced keeps its
    mode (a private 0600 one stays private). A path that cannot be written (a missing folder, no
    permission) is one OutputError naming it, not its temporary."""
    tmp = path + ".tmp"
    try:
        with writing(path, tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            if os.path.isfile(path):
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
            os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None


def atomic_write_all(files: dict[str, str], where: str) -> None:
    """Write several text files that belong together (`where` names them in an error): every one
    is written under a temporary name first, and only when all are complete are they renamed into
    place, so a failure (a full disk) leaves the previous set whole, not a mix of old and new."""
    tmps = {path: path + ".tmp" for path in files}
    with writing(where, *tmps.values()):
        for path, text in files.items():
            with open(tmps[path], "w", encoding="utf-8") as f:
                f.write(text)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
