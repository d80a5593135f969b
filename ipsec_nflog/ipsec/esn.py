"""Extended sequence numbers (RFC 4303 section 2.2.1): an ESN SA numbers its packets with 64
bits but sends only the low 32; its ICV covers the high 32 too (HMAC: appended after the ESP
trailer; AES-GCM: in the AAD, RFC 4106 section 5). A reader infers them per SA, as a receiver
does (RFC 4303 appendix A2.2), from the highest sequence number authenticated so far."""

from __future__ import annotations

__all__ = ["READER_WINDOW", "EsnWindow"]

_LOW = 0xFFFFFFFF
# A receiver's window is its replay window (32..4096 packets). A capture reader is not a
# receiver: it sees packets the receiver drops, gaps where the capture lost some, and outbound
# and inbound packets of an SA in the order they were stamped. Half the sequence space places
# a packet up to 2^31 behind or ahead of the highest one seen so far correctly.
READER_WINDOW = 1 << 31


class EsnWindow:
    """Where one ESN SA's sequence numbers are: ``top``, the highest 64-bit sequence number
    whose ICV verified (RFC 4303 appendix A2.2's T), and the window size W."""

    __slots__ = ("size", "top")

    def __init__(self, size: int = READER_WINDOW, top: int = 0) -> None:
        if not 1 <= size <= READER_WINDOW:
            raise ValueError(f"ESN window of {size} packets: must be 1..2^31")
        self.size = size
        self.top = top

    def high_bits(self, seq_lo: int) -> int:
        """The high 32 bits of the packet with low bits ``seq_lo``: RFC 4303 appendix A2.2
        (case A: the window lies within one 2^32 block; case B: it spans two)."""
        th, tl, w = self.top >> 32, self.top & _LOW, self.size
        if tl >= w - 1:                                  # case A
            return th if seq_lo >= tl - w + 1 else th + 1
        if seq_lo >= (tl - w + 1) & _LOW:                # case B: in the previous block
            return max(th - 1, 0)                        # (none before the first)
        return th

    def candidates(self, seq_lo: int) -> tuple[int, ...]:
        """High bits to try, most likely first: the inferred ones, then the blocks either side
        (a capture that starts after a wrap, or a gap wider than the window)."""
        h = self.high_bits(seq_lo)
        return tuple(c for c in (h, h + 1, h - 1) if 0 <= c <= _LOW)

    def authenticated(self, seq_hi: int, seq_lo: int) -> None:
        """A packet with these bits verified: the window advances to it if it is ahead."""
        self.top = max(self.top, seq_hi << 32 | seq_lo)
