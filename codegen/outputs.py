"""Where a command may write: output-folder safety and atomic replacement.

A command writes only into

* a folder that does not exist yet (it is created, with its parents),
* an empty folder, or
* a folder holding this tool's own earlier output of the same kind, recognised by its
  ``manifest.json`` (``target`` names the kind, ``files`` lists every file with its sha256).

Such an earlier output is replaced as a whole, atomically (the new folder is written beside it, then
renamed over it), so a failed command leaves the old output untouched and nothing half-written.
If the user changed, added or removed files in it, it is replaced only with ``--force``; a folder of
another kind, a file, or a folder holding the command's own input is never replaced.

Single-file outputs (``convert -o model.pt``, ``train -o ann.pt``) follow the same rule: a new path,
or a file of the same kind; never the command's input, never a folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from runtime.errors import UserError

MANIFEST = "manifest.json"


def _read_manifest(folder: Path) -> dict | None:
    p = folder / MANIFEST
    try:
        if not p.is_file() or p.stat().st_size > 16 << 20:
            return None
        m = json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(m, dict) or not isinstance(m.get("target"), str) or not isinstance(m.get("files"), list):
        return None
    return m


def _listing(folder: Path) -> set[str]:
    """Every file under ``folder`` (relative POSIX paths), symlinks and other entries included."""
    out = set()
    for root, dirs, files in os.walk(folder):
        r = Path(root)
        for d in list(dirs):
            if (r / d).is_symlink():
                out.add((r / d).relative_to(folder).as_posix())
                dirs.remove(d)
        for f in files:
            out.add((r / f).relative_to(folder).as_posix())
    return out


def changes(folder: Path, manifest: dict) -> list[str]:
    """What differs from the manifest: files added, removed or changed since the tool wrote them."""
    listed = {}
    for e in manifest["files"]:
        if isinstance(e, dict) and isinstance(e.get("name"), str):
            listed[e["name"]] = e.get("sha256")
    present = _listing(folder) - {MANIFEST}
    out = [f"{n} (not written by codegen)" for n in sorted(present - set(listed))]
    out += [f"{n} (removed)" for n in sorted(set(listed) - present)]
    for n in sorted(present & set(listed)):
        p = folder / n
        if p.is_symlink() or not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != listed[n]:
            out.append(f"{n} (changed)")
    return out


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_parent(path: Path, option: str) -> None:
    """The folder that will hold ``path`` can be created and written (probed with a temp folder)."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise UserError(f"{option} {path}: {base} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(dir=base, prefix=".codegen-probe.")
        os.rmdir(probe)
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write in {base} ({e.strerror or e})") from None


def check_dir(out: str | Path, kind: str, inputs=(), force: bool = False, option: str = "-o") -> Path:
    """Refuse, with one line, an output folder this command may not write; return it resolved.

    Called before any expensive work. ``inputs``: the command's input files (never replaced).
    """
    out = Path(out)
    res = out.resolve()
    for i in inputs:
        ip = Path(i).resolve()
        if _inside(ip, res):
            raise UserError(f"{option} {out}: the folder holds this command's input {i}; choose another output folder")
    if res == Path.cwd().resolve() or _inside(Path.cwd().resolve(), res):
        raise UserError(f"{option} {out}: is the working directory (or holds it); give a folder of its own, e.g. build/NAME")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"{option} {out}: exists and is not a folder; give a new folder or an earlier {kind} output")
    if out.is_dir():
        try:
            entries = list(os.scandir(out))
        except OSError as e:
            raise UserError(f"{option} {out}: cannot read the folder ({e.strerror})") from None
        if entries:
            m = _read_manifest(out)
            if m is None:
                raise UserError(f"{option} {out}: the folder holds files that codegen did not write "
                                f"(no {MANIFEST}); give a new or empty folder")
            if m["target"] != kind:
                raise UserError(f"{option} {out}: holds a {m['target']!r} output, not {kind!r}; "
                                f"give another folder (it is never replaced)")
            diff = changes(out, m)
            if diff and not force:
                more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
                raise UserError(f"{option} {out}: the earlier {kind} output was modified ({', '.join(diff[:3])}{more}); "
                                f"add --force to replace it")
    check_writable_parent(res, option)
    return res


def replace_dir(out: str | Path, files: dict[str, bytes], kind: str) -> None:
    """Write ``files`` (relative names -> bytes) as the folder ``out``, atomically.

    The folder is written beside ``out`` and renamed into place; an existing ``out`` is replaced only
    if it is empty or holds a ``kind`` output (the command checked the rest with :func:`check_dir`)."""
    out = Path(out)
    if out.exists():
        if out.is_symlink() or not out.is_dir():
            raise UserError(f"{out}: exists and is not a folder; not replaced")
        if any(os.scandir(out)):
            m = _read_manifest(out)
            if m is None or m["target"] != kind:
                raise UserError(f"{out}: holds files that are not a {kind!r} output of codegen; not replaced")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    except OSError as e:
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    try:
        tmp.chmod(0o755)
        for name in sorted(files):
            p = tmp / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(files[name])
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
            old.rmdir()
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_file(out: str | Path, inputs=(), judge=None, force: bool = False, option: str = "-o",
               kind: str = "file") -> Path:
    """Refuse an output file this command may not write; return it resolved.

    ``judge(path)`` says what an existing file is: ``"regenerate"`` (an earlier output of this command from
    the same input: replaced), ``"same-kind"`` (an earlier output of another input: replaced only with
    ``force``), or None (anything else: never replaced). Never an input, never a folder."""
    out = Path(out)
    res = out.resolve()
    for i in inputs:
        if Path(i).resolve() == res:
            raise UserError(f"{option} {out}: is this command's input; write the output elsewhere")
    if out.is_dir():
        raise UserError(f"{option} {out}: is a folder; give the path of the {kind} to write")
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_file():
            raise UserError(f"{option} {out}: exists and is not a regular file; not replaced")
        verdict = None
        if judge is not None:
            try:
                verdict = judge(out)
            except UserError:
                verdict = None
        if verdict is None:
            raise UserError(f"{option} {out}: exists and is not a {kind}; not replaced")
        if verdict != "regenerate" and not force:
            raise UserError(f"{option} {out}: exists (a {kind} made from another input); add --force to replace it")
    check_writable_parent(res, option)
    return res


__all__ = ["MANIFEST", "changes", "check_dir", "check_file", "check_writable_parent", "replace_dir"]


def check_work_folder(work: Path) -> None:
    """A work folder (``verify --work``) can be created and written: probed where it is, or would be,
    created, so that nothing is left behind if a later check fails; else a one-line UserError."""
    where = Path(work).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise UserError(f"cannot write the work folder {Path(work).absolute()}: {where} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(dir=where, prefix=".write-probe-"))
    except OSError as e:
        raise UserError(f"cannot write the work folder {Path(work).absolute()} ({where}: {e.strerror or e}); "
                        f"give --work DIR in a writable place") from None
