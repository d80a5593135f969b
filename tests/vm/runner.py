"""A tiny qemu runner: boot Debian's stock kernel on the host's own root filesystem.

Why not virtme-ng? It works here (``vng --run /boot/vmlinuz-* --disable-kvm``), but boot plus
a trivial command took 24 s (measured; q35, ``-cpu max``, XZ-compressed bzImage, its own
init), against about 3-4 s for this runner, and the tier boots once per session in CI on
machines without KVM. See docs/ipsec-tiers.md for the measurements.

How it works:

- kernel: Debian's ``linux-image-amd64`` (the cloud flavour lacks 9p), found in /boot. Its
  XZ payload is extracted once with :mod:`lzma` into an ELF ``vmlinux`` (cached), which qemu
  boots directly through the PVH entry point: no in-guest decompression under TCG;
- initramfs (cached): static busybox, the virtio/9p modules of that kernel, and ``/init``
  (``tests/vm/initramfs_init.sh``). ``/init`` mounts the host's ``/`` read-only over 9p, puts
  tmpfs on /tmp, /run and /var/tmp, mounts the exchange directory
  read-write at the same path, and ``switch_root``s into the host's root, so the kernel's
  module autoloader finds the host's ``/sbin/modprobe`` and ``/lib/modules/<guest kernel>``;
- stage 2 (``tests/vm/guest_init.sh``, from the shared root) runs the job script as root
  with the host's Python and the project's built package (the project dir is part of the
  shared root), writes its output and exit code to the exchange directory, and powers off;
- qemu: ``-accel tcg`` (KVM is not usable on these hosts), single-threaded TCG with
  ``tb-size=64`` (fastest and smallest measured), no NIC, serial console to a log file.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import lzma
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
APT_PACKAGES = "qemu-system-x86 linux-image-amd64 busybox-static"

# Modules needed before the root can be mounted, in load order.
EARLY_MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                 "virtio_pci", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p")


class VMUnavailable(RuntimeError):
    """Something the VM needs is missing; the message says what to install."""


def cache_dir() -> Path:
    base = os.environ.get("IPSEC_NFLOG_VM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ipsec_nflog", "vm")
    p = Path(base)
    p.mkdir(parents=True, exist_ok=True)
    return p


def qemu_binary() -> str:
    q = shutil.which("qemu-system-x86_64")
    if q is None:
        raise VMUnavailable("qemu-system-x86_64 not found; apt-get install qemu-system-x86")
    return q


def find_kernel() -> tuple[Path, str]:
    """(bzImage, version) of the newest /boot/vmlinuz-* whose modules include 9p."""
    forced = os.environ.get("IPSEC_NFLOG_VM_KERNEL")
    cands = [Path(forced)] if forced else sorted(Path("/boot").glob("vmlinuz-*"), reverse=True)
    for k in cands:
        ver = k.name[len("vmlinuz-"):]
        mods = Path("/lib/modules") / ver
        if "cloud" in ver and not forced:
            continue  # the cloud flavour has no 9p
        if (mods / "kernel/fs/9p").is_dir() and os.access(k, os.R_OK):
            return k, ver
    raise VMUnavailable("no /boot/vmlinuz-* with 9p modules; apt-get install linux-image-amd64")


def extract_vmlinux(bzimage: Path, out: Path) -> Path:
    """The ELF kernel inside a bzImage (XZ, gzip or zstd payload), for PVH direct boot."""
    data = bzimage.read_bytes()
    elf = None
    i = data.find(b"\xfd7zXZ\x00")
    if i >= 0:
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            elf = d.decompress(data[i:])
        except lzma.LZMAError:
            elf = None
    if elf is None:
        i = data.find(b"\x1f\x8b\x08")
        if i >= 0:
            try:
                elf = gzip.GzipFile(fileobj=io.BytesIO(data[i:])).read()
            except (OSError, EOFError):
                elf = None
    if elf is None or not elf.startswith(b"\x7fELF"):
        raise VMUnavailable(f"cannot extract an ELF vmlinux from {bzimage}")
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(elf)
    tmp.replace(out)
    return out


# ---- initramfs (cpio newc, written here: no cpio binary needed) --------------------------------

def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    nb = name.encode() + b"\0"
    hdr = ("070701" + "".join(f"{v:08x}" for v in (
        ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))).encode()
    out = hdr + nb
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def _module_path(ver: str, name: str) -> Path:
    r = subprocess.run(["modinfo", "-k", ver, "-n", name], capture_output=True, text=True)
    if r.returncode != 0:
        raise VMUnavailable(f"kernel module {name} missing for {ver}: {r.stderr.strip()}")
    return Path(r.stdout.strip())


def build_initramfs(ver: str, out: Path) -> Path:
    busybox = Path("/bin/busybox")
    if not busybox.exists() or b"ld-linux" in busybox.read_bytes()[:4096 * 4]:
        raise VMUnavailable("a static /bin/busybox is needed; apt-get install busybox-static")
    entries = [("dev", 0o040755, b""), ("proc", 0o040755, b""), ("sys", 0o040755, b""),
               ("newroot", 0o040755, b""), ("bin", 0o040755, b""), ("modules", 0o040755, b""),
               ("bin/busybox", 0o100755, busybox.read_bytes()),
               ("init", 0o100755, (HERE / "initramfs_init.sh").read_bytes())]
    order = []
    for i, name in enumerate(EARLY_MODULES):
        path = _module_path(ver, name)
        data = path.read_bytes()
        if path.suffix == ".xz":
            data = lzma.decompress(data)
        elif path.suffix == ".zst":
            raise VMUnavailable("zstd-compressed modules are not supported by this runner")
        fname = f"{i:02d}-{name}.ko"
        entries.append((f"modules/{fname}", 0o100644, data))
        order.append(fname)
    entries.append(("modules/order", 0o100644, ("\n".join(order) + "\n").encode()))
    blob = b"".join(_cpio_entry(n, m, d, ino=i + 1) for i, (n, m, d) in enumerate(entries))
    blob += _cpio_entry("TRAILER!!!", 0)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(blob)
    tmp.replace(out)
    return out


@dataclasses.dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initramfs: Path
    version: str


def prepare(*, uncompressed: bool = True) -> BootFiles:
    """Kernel and initramfs, built once and cached (keyed by kernel and script contents)."""
    qemu_binary()
    bz, ver = find_kernel()
    st = bz.stat()
    init_src = (HERE / "initramfs_init.sh").read_bytes()
    key = hashlib.sha256(f"{bz}:{st.st_size}:{st.st_mtime_ns}:".encode() + init_src +
                         b":".join(m.encode() for m in EARLY_MODULES)).hexdigest()[:16]
    cd = cache_dir()
    kernel = bz
    if uncompressed:
        kernel = cd / f"vmlinux-{ver}-{key}"
        if not kernel.exists():
            extract_vmlinux(bz, kernel)
    initrd = cd / f"initramfs-{ver}-{key}.cpio"
    if not initrd.exists():
        build_initramfs(ver, initrd)
    for stale in list(cd.glob("vmlinux-*")) + list(cd.glob("initramfs-*")):
        if key not in stale.name:  # an older kernel or init script
            stale.unlink(missing_ok=True)
    return BootFiles(kernel, initrd, ver)


# ---- running a job -----------------------------------------------------------------------------

@dataclasses.dataclass
class VMResult:
    returncode: int           # the job's exit status (-1: no status, the VM died first)
    output: str               # the job's stdout+stderr
    console: str              # kernel console (serial)
    seconds: float            # wall time, qemu start to exit
    boot_seconds: float | None  # qemu start to the job's first line, as the guest saw it


def qemu_argv(boot: BootFiles, xchg: Path, *, memory_mb: int = 1024, cpus: int = 1,
              console: Path | None = None, extra_append: str = "") -> list[str]:
    append = " ".join([
        "console=ttyS0", "quiet", "loglevel=3", "panic=-1", "oops=panic", "nokaslr",
        "mitigations=off", "tsc=reliable", "no_timer_check", "i8042.noaux", "i8042.nokbd",
        "random.trust_cpu=on",
        f"ipnf.xchg={xchg}", f"ipnf.proj={PROJECT}", f"ipnf.init={HERE / 'guest_init.sh'}",
        extra_append,
    ]).strip()
    return [
        qemu_binary(), "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-accel", "tcg,thread=single,tb-size=64",
        "-machine", "pc", "-cpu", "qemu64", "-smp", str(cpus), "-m", str(memory_mb),
        "-kernel", str(boot.kernel), "-initrd", str(boot.initramfs), "-append", append,
        "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=root,mount_tag=hostroot",
        # The project gets its own share: a checkout under /tmp (as CI's may be) would be
        # hidden by the guest's tmpfs on /tmp.
        "-fsdev", f"local,id=proj,path={PROJECT},security_model=none,readonly=on",
        "-device", "virtio-9p-pci,fsdev=proj,mount_tag=project",
        "-fsdev", f"local,id=xchg,path={xchg},security_model=none",
        "-device", "virtio-9p-pci,fsdev=xchg,mount_tag=xchg",
        "-serial", f"file:{console}" if console else "null",
        "-monitor", "none", "-nic", "none",
    ]


def run(script: str, *, timeout: float = 600, env: dict[str, str] | None = None,
        memory_mb: int = 1024, xchg: Path | None = None, keep: bool = False) -> VMResult:
    """Boot, run ``script`` (sh) as root in the guest with cwd = the project dir, power off.

    ``env`` is exported to the script. Raises VMUnavailable when qemu/kernel are missing and
    TimeoutError (after killing qemu) when the VM overruns ``timeout``.
    """
    boot = prepare()
    own = xchg is None
    x = Path(tempfile.mkdtemp(prefix="ipnf-vm-")) if xchg is None else xchg
    try:
        lines = ["set -u", f"cd {shlex.quote(str(PROJECT))}"]
        for k, v in (env or {}).items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise ValueError(f"bad environment variable name {k!r}")
            lines.append(f"export {k}={shlex.quote(v)}")
        (x / "job.sh").write_text("\n".join(lines) + "\n" + script + "\n")
        console = x / "console.log"
        argv = qemu_argv(boot, x, memory_mb=memory_mb, console=console)
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            qout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise TimeoutError(f"VM did not finish in {timeout}s; console:\n"
                               + _read(console)[-4000:]) from None
        seconds = time.monotonic() - t0
        rc_text = _read(x / "exitcode").strip()
        rc = int(rc_text) if rc_text.lstrip("-").isdigit() else -1
        uptime = _read(x / "uptime-at-start").split()
        boot_s = float(uptime[0]) if uptime else None
        output = _read(x / "output.log")
        cons = _read(console)
        if proc.returncode != 0 and rc == -1:
            cons += "\n[qemu] " + qout.decode(errors="replace")
        return VMResult(rc, output, cons, seconds, boot_s)
    finally:
        if own and not keep:
            shutil.rmtree(x, ignore_errors=True)


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.vm.runner [--] CMD...``: run a command in the VM, print its output."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m tests.vm.runner")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--console", action="store_true", help="print the kernel console too")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    r = run(shlex.join(cmd or ["uname", "-a"]), timeout=a.timeout)
    sys.stdout.write(r.output)
    if a.console:
        sys.stdout.write(r.console)
    print(f"[vm] exit {r.returncode}, {r.seconds:.2f}s wall, job started at guest uptime "
          f"{r.boot_seconds}s", file=sys.stderr)
    return r.returncode if r.returncode >= 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
