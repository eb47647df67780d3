"""
Coverage-guided fuzzing (atheris) of the two first-bytes parsers: the TLS
ClientHello reader and the PROXY protocol parser.  Not collected by pytest
(it runs until stopped); start it by hand:

    pip install atheris
    PYTHONPATH=. python tests/fuzz/fuzz_parsers.py sni   -max_total_time=180 CORPUS_DIR
    PYTHONPATH=. python tests/fuzz/fuzz_parsers.py proxy -max_total_time=180 CORPUS_DIR

The corpus directory is seeded with real inputs (Python's ssl ClientHellos,
lbproxy's PROXY headers).  A finding is any exception, or an answer
outside the parser's contract; atheris then writes the input to
C{crash-*} and stops.
"""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports():
    from lbproxy.relay import proxyprotocol, sni

from tests.fuzz.samples import hello_seeds, proxy_seeds


def check_sni(data: bytes) -> None:
    found = sni._read(data)  # the unguarded core: a bug must surface here
    if found not in (sni.NEED_MORE, sni.NOT_TLS, sni.NO_SNI):
        assert isinstance(found, str) and found and found == found.lower(), found
    # The answer only grows more certain with more bytes: a decided stream
    # stays decided the same way whatever follows.
    if found is not sni.NEED_MORE and len(data) < sni.MAX_HELLO:
        assert sni._read(data + b"\x00\x17") == found or found.__class__ is not str


def check_proxy(data: bytes) -> None:
    found = proxyprotocol.parse(data)
    if isinstance(found, proxyprotocol.Parsed):
        assert 0 < found.length <= len(data) and found.length <= proxyprotocol.V2_MAX
        for address in (found.source, found.destination):
            assert address is None or 0 <= address[1] <= 65535
    else:
        assert found in (proxyprotocol.NEED_MORE, proxyprotocol.MALFORMED)
        assert found is not proxyprotocol.NEED_MORE or len(data) < proxyprotocol.V2_MAX


def main() -> None:
    which = sys.argv.pop(1)
    check, seeds = {"sni": (check_sni, hello_seeds), "proxy": (check_proxy, proxy_seeds)}[which]
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus:
        os.makedirs(corpus[0], exist_ok=True)
        for i, seed in enumerate(seeds()):
            with open(os.path.join(corpus[0], f"seed-{i}"), "wb") as f:
                f.write(seed)
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
