#!/usr/bin/env python3
"""Write the husk guest initrd: an uncompressed newc cpio archive.

Usage: mkinitrd.py AGENT OUTPUT

The archive holds /init (the static husk-agent), the empty directories the
agent mounts things on, and the /dev/console node the kernel opens as the
first process's stdin/stdout/stderr before any devtmpfs is mounted.

It is reproducible: the same agent binary gives the same bytes. Entries are
written in sorted order with fixed inode numbers, owner 0:0, mtime 0 (or
SOURCE_DATE_EPOCH) and no dependence on the build host's file metadata
except the agent's contents.
"""

import os
import stat
import sys

DIRS = ["dev", "proc", "sys", "run", "tmp", "mnt", "root", "etc"]
# (path, mode, major, minor): character devices.
NODES = [("dev/console", 0o600, 5, 1), ("dev/null", 0o666, 1, 3)]


def header(ino, mode, size, nlink, mtime, rmajor=0, rminor=0, namesize=0):
    fields = [
        ino,  # c_ino
        mode,  # c_mode
        0,  # c_uid
        0,  # c_gid
        nlink,  # c_nlink
        mtime,  # c_mtime
        size,  # c_filesize
        0,  # c_devmajor
        0,  # c_devminor
        rmajor,  # c_rdevmajor
        rminor,  # c_rdevminor
        namesize,  # c_namesize
        0,  # c_check
    ]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def pad4(n):
    return b"\0" * ((4 - n % 4) % 4)


def entry(ino, name, mode, data=b"", nlink=1, mtime=0, rdev=(0, 0)):
    raw_name = name.encode() + b"\0"
    out = header(ino, mode, len(data), nlink, mtime, rdev[0], rdev[1], len(raw_name))
    out += raw_name
    out += pad4(len(out))
    out += data
    out += pad4(len(data))
    return out


def build(agent_bytes, mtime):
    items = []
    for d in DIRS:
        items.append((d, stat.S_IFDIR | 0o755, b"", 2, (0, 0)))
    for path, perm, major, minor in NODES:
        items.append((path, stat.S_IFCHR | perm, b"", 1, (major, minor)))
    items.append(("init", stat.S_IFREG | 0o755, agent_bytes, 1, (0, 0)))
    items.sort(key=lambda it: it[0])
    out = b""
    for ino, (name, mode, data, nlink, rdev) in enumerate(items, start=1):
        out += entry(ino, name, mode, data, nlink, mtime, rdev)
    out += entry(0, "TRAILER!!!", 0, nlink=1)
    # Round the archive up to a whole 512-byte block, as cpio(1) does.
    out += b"\0" * ((512 - len(out) % 512) % 512)
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: mkinitrd.py AGENT OUTPUT")
    agent, output = sys.argv[1], sys.argv[2]
    with open(agent, "rb") as f:
        agent_bytes = f.read()
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    data = build(agent_bytes, mtime)
    tmp = output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, output)


if __name__ == "__main__":
    main()
