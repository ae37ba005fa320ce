"""Blob paths that come from the browser, checked against the workspace's own prefix.

A path parameter is relative to the workspace's folder (`<subscription>/<resource group>/<workspace>/`) and may
name nothing outside it: no empty, `.` or `..` segments (storage services resolve dot segments in URLs), no
backslashes or control characters, whatever encoding they arrived in: each segment is judged after undoing
percent-encoding as often as it was applied (`%252e%252e` is `..`).
"""

from __future__ import annotations

from urllib.parse import unquote

from django.http import Http404

from deployments.models import Workspace

MAX_PATH = 1024


class BadPath(Http404):
    """Not a path inside this workspace: shown as a 404, which says nothing about other workspaces."""


def _decoded(segment: str) -> str:
    """The segment with percent-encoding undone until nothing changes: `%252e` is judged as `.`."""
    for _ in range(5):
        decoded = unquote(segment)
        if decoded == segment:
            return decoded
        segment = decoded
    raise BadPath("No such file or folder in this workspace.")


def _segments(relative: str) -> list[str]:
    if len(relative) > MAX_PATH:
        raise BadPath("The path is too long.")
    segments = relative.split("/")
    for segment in segments:
        plain = _decoded(segment)
        if (
            plain in ("", ".", "..")
            or "/" in plain
            or "\\" in plain
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in plain)
        ):
            raise BadPath("No such file or folder in this workspace.")
    return segments


def folder(workspace: Workspace, relative: str) -> str:
    """The full prefix of a folder inside the workspace ("" is the workspace's own folder); ends with "/"."""
    relative = relative.strip("/")
    base = f"{workspace.path}/"
    return base if not relative else base + "/".join(_segments(relative)) + "/"


def blob(workspace: Workspace, relative: str) -> str:
    """The full name of a blob inside the workspace."""
    name = f"{workspace.path}/" + "/".join(_segments(relative))
    if not name.startswith(f"{workspace.path}/"):  # belt and braces: the join above cannot leave the prefix
        raise BadPath("No such file or folder in this workspace.")
    return name


def relative(workspace: Workspace, name: str) -> str:
    return name[len(workspace.path) + 1 :]
