"""A capture for tests that is listening when you get it, with expectations and timeouts.

::

    from ipsec_nflog import testing

    with testing.capture("all", netns="lab-a") as cap:   # group bound, rules installed
        send_traffic()
        esp = cap.expect(count=3, hook="OUTPUT", filter="esp or udp port 4500", timeout=5)
        cap.expect_none(hook="POSTROUTING", filter="icmp", within=1)   # nothing in clear
        cap.save("evidence.pcap")
    # rules removed, capture stopped and closed, whatever happened in the block

``async with testing.acapture(...) as cap: await cap.expect(...)`` is the same for asyncio.

The group is picked free (``/proc/net/netfilter/nfnetlink_log`` of the target namespace)
unless given, and bound before the rules go in, so no logged packet finds nobody listening.
Each preset's rules log with the preset's name as NFLOG prefix unless ``prefix=`` is given.
The capture runs in low-latency mode (one packet per netlink message, or under load as many
as fill one in 100 µs): packets reach
``expect`` as they happen. Everything captured is kept, parsed (``packets``) and as records
(``save``), for the lifetime of the object.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, Union

from ipsec_nflog import rules as nflog_rules
from ipsec_nflog.capture.select import check_expression
from ipsec_nflog.nflog.packet import Packet
from ipsec_nflog.rules.model import validate_family
from ipsec_nflog.system.netns import interface_names, open_netns, validate_netns_name
from ipsec_nflog.system.procinfo import group_bindings
from ipsec_nflog.testing.expect import Criteria, ExpectationFailed, Hook, Matcher, describe_seen
from ipsec_nflog.validate import validate_group

if TYPE_CHECKING:
    from ipsec_nflog.capture.live import Capture
    from ipsec_nflog.capture.stats import CaptureStats

__all__ = ["AsyncNflogCapture", "NflogCapture", "acapture", "capture", "free_group"]

T = TypeVar("T")
Presets = Union[str, Sequence[str], None]
Steps = Generator[float, None, T]  # yields how long to wait for packets, returns the result

GROUP_RANGE = (20000, 65535)  # picked groups stay clear of the small numbers people type
BIND_ATTEMPTS = 8  # another process may bind a group between our look and our bind
RING_SIZE = 16 * 1024 * 1024
STOP_DRAIN = 0.5  # seconds close() waits for the kernel's last packets
_INSTALL_OPTIONS = ("backend", "nft_owner")


def free_group(netns: str | None = None, *, avoid: Sequence[int] = ()) -> int:
    """An NFLOG group nobody has bound in ``netns`` (random, in 20000..65535)."""
    taken = {b.group for b in group_bindings(netns, resolve_owners=False)} | set(avoid)
    lo, hi = GROUP_RANGE
    if len(taken) <= (hi - lo) // 2:
        while True:
            g = random.randint(lo, hi)
            if g not in taken:
                return g
    for g in range(lo, hi + 1):
        if g not in taken:
            return g
    raise RuntimeError(f"every NFLOG group in {lo}..{hi} is bound")


def _presets(rules: Presets) -> tuple[str, ...]:
    if rules is None:
        return ()
    if isinstance(rules, str):
        return (rules,)
    out = tuple(rules)
    if not all(isinstance(p, str) for p in out) or len(set(out)) != len(out):
        raise ValueError(f"rules must be a preset name or a list of distinct preset names, "
                         f"not {rules!r}")
    return out


class NflogCapture:
    """One capture of a test; see the module docstring. ``open()`` makes it listen (or use
    it as a context manager), ``close()`` stops it, removes its rules and closes it."""

    def __init__(self, rules: Presets = None, *, group: int | None = None,
                 netns: str | None = None, family: str = "both", filter: str | None = None,
                 **rule_options: Any) -> None:
        """Everything is checked here, before anything is created: the presets and their
        options (``ipsec_nflog.rules.build``'s, plus ``backend``/``nft_owner``), the group,
        the namespace (it must exist) and the filter expression."""
        self.presets = _presets(rules)
        self.group = validate_group(group) if group is not None else None
        self.netns = validate_netns_name(netns) if netns is not None else None
        if self.netns is not None:
            os.close(open_netns(self.netns))
        validate_family(family)
        self.family = family
        self.filter = check_expression(filter) if filter is not None else None
        self._install = {k: rule_options.pop(k) for k in _INSTALL_OPTIONS if k in rule_options}
        backend = self._install.get("backend")
        if backend is not None and backend not in nflog_rules.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; known: "
                             f"{', '.join(nflog_rules.BACKENDS)}")
        self._rule_options = rule_options
        for preset in self.presets:
            self._ruleset(preset, self.group or 0)  # raises ValueError naming the problem
        self.installed_rules: list[nflog_rules.InstalledRules] = []
        self._capture: Capture | None = None
        self._packets: list[Packet] = []
        self._records: list[tuple[bytes, int]] = []
        self._closed = False

    def _ruleset(self, preset: str, group: int) -> nflog_rules.RuleSet:
        options = {"prefix": preset, **self._rule_options}
        return nflog_rules.build(preset, group=group, family=self.family, **options)

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> NflogCapture:
        """Bind the group, then install the rules; on any error, undo both and raise."""
        if self._capture is not None or self._closed:
            raise RuntimeError("this capture was already opened")
        try:
            self._capture = self._bind()
            for preset in self.presets:
                assert self.group is not None
                self.installed_rules.append(nflog_rules.install(
                    self._ruleset(preset, self.group), netns=self.netns,
                    handle_signals=False, **self._install))
        except BaseException:
            self.close()
            raise
        return self

    def _bind(self) -> Capture:
        from ipsec_nflog.capture.config import CaptureConfig
        from ipsec_nflog.capture.live import Capture
        from ipsec_nflog.errors import GroupBusyError

        tried: list[int] = []
        while True:
            group = self.group if self.group is not None else free_group(self.netns,
                                                                          avoid=tried)
            # Kernel batching (so requests keep their place before replies, see README
            # "Timestamps") with a short flush, so expect() sees packets within 10 ms.
            config = CaptureConfig(groups=(group,), netns=self.netns, filter=self.filter,
                                   ring_size=RING_SIZE, flush_timeout=0.01)
            try:
                cap = Capture(config=config)
            except GroupBusyError:
                tried.append(group)
                if self.group is not None or len(tried) >= BIND_ATTEMPTS:
                    raise
                continue
            self.group = group
            return cap

    def close(self) -> None:
        """Remove the rules, stop (taking what the kernel still had), close. Idempotent;
        every step runs even when an earlier one fails, then the first error is raised."""
        if self._closed:
            return
        self._closed = True
        errors: list[Exception] = []
        for handle in reversed(self.installed_rules):
            try:
                handle.remove()
            except Exception as e:
                errors.append(e)
        cap = self._capture
        if cap is not None:
            try:
                cap.stop(drain=STOP_DRAIN)
                self._drain()
            except Exception as e:
                errors.append(e)
            finally:
                cap.close()
        if errors:
            raise errors[0]

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> NflogCapture:
        return self if self._capture is not None else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what was captured -------------------------------------------------------------------
    def _pump(self, timeout: float) -> int:
        """Take one batch from the ring (waiting up to ``timeout``); returns its size."""
        cap = self._capture
        if cap is None or cap.closed:
            return 0
        batch = cap.read_batch(timeout=timeout)
        if batch is None:
            return 0
        with batch:
            self._records.append((batch.tobytes(), batch.count))  # the packets share it
            self._packets.extend(batch)
            return batch.count

    def _drain(self) -> None:
        while self._pump(0):
            pass

    @property
    def packets(self) -> list[Packet]:
        """Every packet captured so far, parsed, in arrival order (a new list)."""
        self._drain()
        return list(self._packets)

    def stats(self) -> CaptureStats | None:
        """The capture's counters (final ones after close; None if it never opened)."""
        return self._capture.stats() if self._capture is not None else None

    def fileno(self) -> int | None:
        """Readable while packets wait in the ring; None once closed."""
        cap = self._capture
        return None if cap is None or cap.closed else cap.fileno()

    @property
    def where(self) -> str:
        ns = f" in netns {self.netns}" if self.netns else ""
        rules = f", rules {', '.join(self.presets)}" if self.presets else ", no rules"
        return f"nflog:{self.group}{ns}{rules}"

    def save(self, path: Union[str, os.PathLike[str]], *, overwrite: bool = False) -> str:
        """Write everything captured so far as a capture file (pcap unless the name ends in
        .pcapng), mode 0600; returns the path."""
        from ipsec_nflog.files import default_format, open_writer

        self._drain()
        pcapng = default_format(path) == "pcapng"
        groups = [self.group] if self.group is not None and pcapng else []
        names = partial(interface_names, self.netns) if pcapng else None
        with open_writer(path, overwrite=overwrite, groups=groups,
                         interface_names=names) as writer:
            for data, count in self._records:
                writer.write_records(data, count)
            writer.close(stats=self.stats())
        return os.fspath(path)

    # -- expectations ------------------------------------------------------------------------
    def expect(self, count: int = 1, *, hook: Hook = None, prefix: str | None = None,
               filter: str | None = None, timeout: float = 5.0) -> list[Packet]:
        """Wait until ``count`` packets matching ``hook`` (``"OUTPUT"``...), ``prefix`` and
        ``filter`` (a tcpdump expression over the IP packet) have been captured, counting
        from the start of the capture; returns the first ``count`` of them at once when
        they are there. :class:`ExpectationFailed` (an ``AssertionError``) after
        ``timeout`` seconds, listing everything seen."""
        criteria = Criteria.of(hook, prefix, filter)
        try:
            return self._run(self._expecting(count, criteria, timeout))
        finally:
            if criteria.compiled is not None:
                criteria.compiled.close()

    def expect_none(self, *, hook: Hook = None, prefix: str | None = None,
                    filter: str | None = None, within: float = 1.0) -> None:
        """Fail (:class:`ExpectationFailed`) as soon as a matching packet is captured, or
        is already there; returns after ``within`` seconds without one."""
        criteria = Criteria.of(hook, prefix, filter)
        try:
            self._run(self._expecting_none(criteria, within))
        finally:
            if criteria.compiled is not None:
                criteria.compiled.close()

    def _run(self, steps: Steps[T]) -> T:
        try:
            while True:
                self._pump(next(steps))
        except StopIteration as done:
            result: T = done.value
            return result

    def _expecting(self, count: int, criteria: Criteria, timeout: float) -> Steps[list[Packet]]:
        _check("count", count, 1)
        _check("timeout", timeout, 0)
        matcher = Matcher(criteria)
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            if matcher.scan(self._packets) >= count:
                return matcher.found[:count]
            left = deadline - time.monotonic()
            if left <= 0 or self.fileno() is None:
                raise self._failure(f"expected {count} packet(s) matching "
                                    f"{criteria.describe()} within {timeout:g} s; "
                                    f"{len(matcher.found)} matched", matcher.found)
            yield left

    def _expecting_none(self, criteria: Criteria, within: float) -> Steps[None]:
        _check("within", within, 0)
        matcher = Matcher(criteria)
        deadline = time.monotonic() + within
        while True:
            self._drain()
            if matcher.scan(self._packets):
                raise self._failure(f"expected no packet matching {criteria.describe()} "
                                    f"within {within:g} s; {len(matcher.found)} matched",
                                    matcher.found)
            left = deadline - time.monotonic()
            if left <= 0 or self.fileno() is None:
                return
            yield left

    def _failure(self, headline: str, matched: Sequence[Packet]) -> ExpectationFailed:
        stats = self.stats()
        text = describe_seen(self._packets, matched, stats, self.where)
        return ExpectationFailed(f"{headline}\n{text}", seen=self._packets, matched=matched,
                                 stats=stats)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._capture else "not open")
        return f"<NflogCapture {self.where}, {len(self._packets)} packets, {state}>"


def _check(name: str, value: float, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, not {value!r}")


@contextlib.contextmanager
def capture(rules: Presets = None, *, group: int | None = None, netns: str | None = None,
            family: str = "both", filter: str | None = None,
            **rule_options: Any) -> Iterator[NflogCapture]:
    """``with capture("all", netns=ns) as cap:`` a listening :class:`NflogCapture`, stopped,
    its rules removed and closed when the block ends, however it ends."""
    with NflogCapture(rules, group=group, netns=netns, family=family, filter=filter,
                      **rule_options).open() as cap:
        yield cap


class AsyncNflogCapture:
    """The asyncio face of a :class:`NflogCapture` (``.sync``): ``await expect(...)`` waits
    in the event loop; ``packets``, ``save``, ``stats`` are the same."""

    def __init__(self, sync: NflogCapture) -> None:
        self.sync = sync

    @property
    def group(self) -> int | None:
        return self.sync.group

    @property
    def packets(self) -> list[Packet]:
        return self.sync.packets

    def stats(self) -> CaptureStats | None:
        return self.sync.stats()

    def save(self, path: Union[str, os.PathLike[str]], *, overwrite: bool = False) -> str:
        return self.sync.save(path, overwrite=overwrite)

    async def expect(self, count: int = 1, *, hook: Hook = None, prefix: str | None = None,
                     filter: str | None = None, timeout: float = 5.0) -> list[Packet]:
        """:meth:`NflogCapture.expect`, waiting in the event loop."""
        criteria = Criteria.of(hook, prefix, filter)
        try:
            return await self._run(self.sync._expecting(count, criteria, timeout))
        finally:
            if criteria.compiled is not None:
                criteria.compiled.close()

    async def expect_none(self, *, hook: Hook = None, prefix: str | None = None,
                          filter: str | None = None, within: float = 1.0) -> None:
        """:meth:`NflogCapture.expect_none`, waiting in the event loop."""
        criteria = Criteria.of(hook, prefix, filter)
        try:
            await self._run(self.sync._expecting_none(criteria, within))
        finally:
            if criteria.compiled is not None:
                criteria.compiled.close()

    async def _run(self, steps: Steps[T]) -> T:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = self.sync.fileno()
        if fd is not None:
            loop.add_reader(fd, ready.set)  # level-triggered: readable while records pend
        try:
            while True:
                try:
                    wait = next(steps)  # drains the ring, then says how long to wait
                except StopIteration as done:
                    result: T = done.value
                    return result
                ready.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ready.wait(), wait)
        finally:
            if fd is not None:
                loop.remove_reader(fd)


async def _in_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a worker thread; a cancellation lets it finish first, so nothing it makes
    is left without an owner."""
    work = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


@contextlib.asynccontextmanager
async def acapture(rules: Presets = None, *, group: int | None = None,
                   netns: str | None = None, family: str = "both", filter: str | None = None,
                   **rule_options: Any) -> AsyncIterator[AsyncNflogCapture]:
    """``async with acapture("all", netns=ns) as cap: await cap.expect(...)``; opening and
    closing run in a worker thread, so the event loop keeps going meanwhile."""
    sync = NflogCapture(rules, group=group, netns=netns, family=family, filter=filter,
                        **rule_options)
    try:
        await _in_thread(sync.open)
        yield AsyncNflogCapture(sync)
    finally:
        await _in_thread(sync.close)
