"""One-sided templates (only a source or only a destination address) against nfdump.

The same crafted IPFIX datagrams go to nfcapd and to kopeck's decoder; per address, the
bytes and packets it sent (source side) and received (destination side) must equal what
nfdump decodes (``nfdump -o csv``: a missing address is 0.0.0.0 there, "::" in kopeck).
"""

from __future__ import annotations

import csv
import io
import socket
import struct
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from kopeck_probe.flows import craft as c
from kopeck_probe.flows.decoder import Decoder
from kopeck_probe.flows.podmap import from_words

pytestmark = pytest.mark.node

T0_MS = 1_700_000_000_000
TIMES: list[c.Field] = [(152, 8), (153, 8)]


def _datagrams() -> list[bytes]:
    src_only = c.template_record(256, [(8, 4), (1, 8), (2, 8), *TIMES], ipfix=True)
    dst_only = c.template_record(257, [(12, 4), (1, 8), (2, 8), *TIMES], ipfix=True)
    tpl = c.set_(2, src_only + dst_only)
    out = [c.ipfix([tpl], seq=0, export_s=T0_MS // 1000)]
    seq = 0
    for k in range(20):
        a = 0x0A010100 + k % 5
        srcs = c.set_(256, struct.pack("!IQQQQ", a, 1000 + k, 1 + k % 3, T0_MS, T0_MS + k))
        dsts = c.set_(257, struct.pack("!IQQQQ", a + 1, 70 * k + 1, 2, T0_MS, T0_MS + k))
        out.append(c.ipfix([srcs, dsts], seq=seq, export_s=T0_MS // 1000 + 1))
        seq += 2
    return out


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_sided_totals_per_address_match_nfdump(tmp_path: Path) -> None:
    port = _free_udp_port()
    store = tmp_path / "nf"
    store.mkdir()
    nfcapd = subprocess.Popen(
        ["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", str(store), "-t", "60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # nfcapd binds before it reads
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for d in _datagrams():
                sender.sendto(d, ("127.0.0.1", port))
                time.sleep(0.005)
        time.sleep(0.5)
    finally:
        nfcapd.terminate()  # nfcapd writes its file on SIGTERM
        nfcapd.wait(timeout=10)
    files = sorted(store.glob("nfcapd.*"))
    assert files, "nfcapd stored no file"
    text = subprocess.run(
        ["nfdump", "-r", str(files[-1]), "-o", "csv"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    theirs: Counter[tuple[str, str, str]] = Counter()
    rows = [r for r in csv.DictReader(io.StringIO(text)) if (r.get("ibyt") or "").isdigit()]
    for r in rows:
        for side, addr in (("tx", r["sa"]), ("rx", r["da"])):
            if addr != "0.0.0.0":
                theirs[addr, side, "bytes"] += int(r["ibyt"])
                theirs[addr, side, "packets"] += int(r["ipkt"])

    dec = Decoder()
    for d in _datagrams():
        assert dec.feed(d, "127.0.0.1")
    b = dec.flush()
    ours: Counter[tuple[str, str, str]] = Counter()
    for i in range(len(b)):
        src = str(from_words(int(b.src_hi[i]), int(b.src_lo[i])))
        dst = str(from_words(int(b.dst_hi[i]), int(b.dst_lo[i])))
        for side, addr in (("tx", src), ("rx", dst)):
            if addr != "::":
                addr = addr.removeprefix("::ffff:")
                ours[addr, side, "bytes"] += int(b.bytes[i])
                ours[addr, side, "packets"] += int(b.packets[i])

    assert len(rows) == len(b) == 40
    assert dec.records_without_addresses == 0
    assert ours == theirs
    assert ours["10.1.1.0", "tx", "bytes"] > 0 and ours["10.1.1.5", "rx", "bytes"] > 0
