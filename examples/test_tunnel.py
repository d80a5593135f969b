"""A ping through a real IKEv2 tunnel, seen the four ways of strongSwan's "Taking Traffic
Dumps on Linux": the IKE exchange, the encrypted ESP (here in UDP 4500), and the plaintext
inside the tunnel in both directions; then the same ESP decrypted with the keys from
charon's log. Copy this file into your own suite.

Run it as root with ipsec_nflog and strongSwan installed (Debian/Ubuntu: ``apt-get install
charon-systemd strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins``)::

    pytest examples/test_tunnel.py

The fixtures come from ipsec_nflog's pytest plugin, loaded once the package is installed (no
conftest needed): ``strongswan_pair`` is two charon peers in throwaway network namespaces
with kernel-libipsec and the tunnel up; ``nflog_capture`` returns a capture that is already
listening, and removes its rules at the end. Without root or strongSwan the test is skipped
with the reason. When it fails, the capture is saved as a pcap and the failure report names
the file (and shows the tails of both charon logs).

kernel-libipsec does ESP in userland, so the kernel never sees the IPsec: the policy-match
presets (``decap``, ``local``, ``forward``, ``outgoing``) never match there. The presets that
see everything are ``ike-esp-in``/``ike-esp-out`` (raw PREROUTING/OUTPUT: IKE and ESP as they
cross the wire) and ``libipsec`` (the TUN device ``ipsec0``: the plaintext).
"""

from __future__ import annotations

from ipsec_nflog.testing.classify import IKE_AUTH, IKE_SA_INIT, INFORMATIONAL, classify
from ipsec_nflog.testing.pytest_plugin import NflogCaptureFactory
from ipsec_nflog.testing.strongswan import StrongswanPair

IKE = "udp port 500 or (udp port 4500 and udp[8:4] = 0)"  # on 4500 behind the non-ESP marker
ESP_IN_UDP = "udp port 4500 and udp[8:4] != 0"
PINGS = 3


def test_a_ping_through_the_tunnel_in_all_four_views(
        strongswan_pair: StrongswanPair, nflog_capture: NflogCaptureFactory) -> None:
    pair = strongswan_pair
    left, right = pair.left, pair.right
    # the initiator's view, one NFLOG group; each preset logs with its name as prefix
    cap = nflog_capture(["ike-esp-in", "ike-esp-out", "libipsec"], netns=left.ns,
                        family="ipv4")

    pair.reconnect()  # the tunnel was up already: negotiate it again while we listen
    spi_in, spi_out = pair.child_spis()
    pair.ping(PINGS)

    # 1. IKE: the old SA's DELETE, then IKE_SA_INIT and IKE_AUTH; requests out, responses in
    sent = [classify(p) for p in cap.expect(3, hook="OUTPUT", prefix="ike-esp-out",
                                            filter=IKE)]
    assert [(s.exchange, s.response) for s in sent] == [
        (INFORMATIONAL, False), (IKE_SA_INIT, False), (IKE_AUTH, False)]
    got = [classify(p) for p in cap.expect(3, hook="PREROUTING", prefix="ike-esp-in",
                                           filter=IKE)]
    assert [(s.exchange, s.response) for s in got] == [
        (INFORMATIONAL, True), (IKE_SA_INIT, True), (IKE_AUTH, True)]

    # 2. ESP out and ESP in, encapsulated in UDP 4500, on the new SAs, in sequence
    esp_out = cap.expect(PINGS, hook="OUTPUT", filter=ESP_IN_UDP)
    esp_in = cap.expect(PINGS, hook="PREROUTING", filter=ESP_IN_UDP)
    assert [(classify(p).spi, classify(p).seq) for p in esp_out] == [
        (spi_out, seq) for seq in range(1, PINGS + 1)]
    assert [(classify(p).spi, classify(p).seq) for p in esp_in] == [
        (spi_in, seq) for seq in range(1, PINGS + 1)]
    cap.expect_none(filter="esp", within=0.2)  # no ESP outside UDP: libipsec encapsulates all

    # 3. and 4. the plaintext inside the tunnel: echo requests out, echo replies in
    plain_out = cap.expect(PINGS, hook="POSTROUTING", prefix="libipsec",
                           filter=f"icmp[icmptype] = icmp-echo and src {left.inner} "
                                  f"and dst {right.inner}")
    plain_in = cap.expect(PINGS, hook="PREROUTING", prefix="libipsec",
                          filter=f"icmp[icmptype] = icmp-echoreply and src {right.inner}")
    assert {p.outdev_name for p in plain_out} == {p.indev_name for p in plain_in} == {"ipsec0"}

    # the same ESP, decrypted with the keys ipsec_nflog extracts from charon's log, is
    # byte for byte the plaintext seen on ipsec0
    decryptor = pair.decryptor()
    decrypted = [decryptor.decrypt(p.payload or b"") for p in esp_out + esp_in]
    assert all(r is not None and r.ok for r in decrypted), decrypted
    assert [r.ip_packet for r in decrypted if r is not None] == [
        p.payload for p in plain_out + plain_in]
