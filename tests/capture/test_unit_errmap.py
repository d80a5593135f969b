"""ipsec_nflog.capture.errmap.raise_for_errno, the one place where the C core's -errno results
become exceptions: every path, with the operation, the group and the namespace in the message.
Who holds a group comes from /proc; here find_group_holder is replaced, so no root is needed."""

from __future__ import annotations

import errno
import os

import pytest

from ipsec_nflog.capture.errmap import raise_for_errno
from ipsec_nflog.errors import GroupBusyError, NflogError, NflogPermissionError
from ipsec_nflog.system import procinfo
from ipsec_nflog.system.procinfo import SocketOwner

CAP_HINT = "capturing NFLOG needs CAP_NET_ADMIN (run as root or grant the capability)"


class HolderLookup:
    """Stands in for procinfo.find_group_holder and records what it was asked."""

    def __init__(self, holder: SocketOwner | None) -> None:
        self.holder = holder
        self.calls: list[tuple[int, str | None]] = []

    def __call__(self, group: int, netns: str | None = None) -> SocketOwner | None:
        self.calls.append((group, netns))
        return self.holder


def holder_is(monkeypatch: pytest.MonkeyPatch, holder: SocketOwner | None) -> HolderLookup:
    lookup = HolderLookup(holder)
    monkeypatch.setattr(procinfo, "find_group_holder", lookup)
    return lookup


def raised(err: int, operation: str, group: int | None = None,
           netns: str | None = None) -> NflogError:
    with pytest.raises(NflogError) as info:
        raise_for_errno(err, operation, group, netns=netns)
    return info.value


def test_a_group_held_by_a_process_is_busy_and_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup = holder_is(monkeypatch, SocketOwner(portid=4242, pid=42, comm="tcpdump"))
    e = raised(-errno.EPERM, "bind", 5, "ns1")  # the kernel says EPERM for a taken group
    assert type(e) is GroupBusyError
    assert (e.errno, e.group, e.operation) == (errno.EBUSY, 5, "bind")
    assert (e.holder_pid, e.holder_comm) == (42, "tcpdump")
    assert e.strerror == ("cannot bind for NFLOG group 5 in network namespace 'ns1': the group "
                          "is already bound by tcpdump (pid 42); stop it or pick another group")
    assert lookup.calls == [(5, "ns1")]


def test_a_holder_without_a_process_is_named_by_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    holder_is(monkeypatch, SocketOwner(portid=4242, pid=None, comm=None))
    e = raised(-errno.EBUSY, "bind", 7)
    assert type(e) is GroupBusyError
    assert (e.errno, e.holder_pid, e.holder_comm) == (errno.EBUSY, None, None)
    assert e.strerror == ("cannot bind for NFLOG group 7: the group is already bound by netlink "
                          "port 4242; stop it or pick another group")


def test_ebusy_on_a_group_without_a_known_holder_is_still_busy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    holder_is(monkeypatch, None)
    e = raised(-errno.EBUSY, "bind", 7)
    assert type(e) is GroupBusyError
    assert (e.errno, e.group, e.holder_pid, e.holder_comm) == (errno.EBUSY, 7, None, None)
    assert e.strerror == ("cannot bind for NFLOG group 7: the group is already bound; stop it "
                          "or pick another group")


def test_eperm_with_no_holder_is_a_missing_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup = holder_is(monkeypatch, None)
    e = raised(-errno.EPERM, "bind", 5, "ns1")
    assert type(e) is NflogPermissionError
    assert isinstance(e, PermissionError)
    assert (e.errno, e.group, e.operation) == (errno.EPERM, 5, "bind")
    assert e.strerror == (f"cannot bind for NFLOG group 5 in network namespace 'ns1': "
                          f"{os.strerror(errno.EPERM)}; {CAP_HINT}")
    assert lookup.calls == [(5, "ns1")]


def test_ebusy_without_a_group_is_not_a_busy_group(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup = holder_is(monkeypatch, SocketOwner(portid=1, pid=1, comm="init"))
    e = raised(-errno.EBUSY, "flush the kernel queue")
    assert type(e) is NflogError
    assert (e.errno, e.group, e.operation) == (errno.EBUSY, None, "flush the kernel queue")
    assert e.strerror == f"cannot flush the kernel queue: {os.strerror(errno.EBUSY)}"
    assert lookup.calls == []  # no group, nothing to look up


def test_eperm_without_a_group_is_the_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup = holder_is(monkeypatch, None)
    e = raised(-errno.EPERM, "open the netlink socket", netns="ns2")
    assert type(e) is NflogPermissionError
    assert (e.errno, e.group) == (errno.EPERM, None)
    assert e.strerror == (f"cannot open the netlink socket in network namespace 'ns2': "
                          f"{os.strerror(errno.EPERM)}; {CAP_HINT}")
    assert lookup.calls == []


def test_a_forked_child_is_told_to_open_its_own_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup = holder_is(monkeypatch, None)
    e = raised(-errno.ECHILD, "read a batch", 5, "ns1")
    assert type(e) is NflogError
    assert (e.errno, e.group, e.operation) == (errno.ECHILD, 5, "read a batch")
    assert e.strerror == ("cannot read a batch: this capture belongs to the process that opened "
                          "it, and this is a forked child (open a new Capture here)")
    assert lookup.calls == []


@pytest.mark.parametrize("err", [-errno.EIO, errno.EIO])
def test_other_errors_name_operation_group_and_namespace(err: int) -> None:
    e = raised(err, "read a batch", 9, "lab")
    assert type(e) is NflogError
    assert (e.errno, e.group, e.operation) == (errno.EIO, 9, "read a batch")
    assert e.strerror == (f"cannot read a batch for NFLOG group 9 in network namespace 'lab': "
                          f"{os.strerror(errno.EIO)}")
    assert str(e) == f"[Errno {errno.EIO}] {e.strerror}"


def test_a_hostile_namespace_name_is_quoted_with_its_escapes() -> None:
    e = raised(-errno.ENOENT, "enter the namespace", None, "x\x1b[2J")
    assert e.strerror == (f"cannot enter the namespace in network namespace 'x\\x1b[2J': "
                          f"{os.strerror(errno.ENOENT)}")


def test_an_errno_unknown_to_the_platform_still_gives_one_line() -> None:
    e = raised(-9999, "wait for packets")
    assert type(e) is NflogError
    assert (e.errno, e.strerror) == (9999, f"cannot wait for packets: {os.strerror(9999)}")
