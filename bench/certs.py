"""A self-signed CA and a server certificate for 127.0.0.1, written once under bench/.work/tls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

from bench.common import WORK


@dataclass(frozen=True)
class Tls:
    ca: Path        # the CA certificate: the daemon's api.ca_bundle, the SDK's REQUESTS_CA_BUNDLE
    server: Path    # the server's private key and certificate chain, for the emulator


def make_tls(directory: Path = WORK / "tls") -> Tls:
    directory.mkdir(parents=True, exist_ok=True)
    tls = Tls(ca=directory / "ca.pem", server=directory / "server.pem")
    if not (tls.ca.exists() and tls.server.exists()):
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(tls.ca))
        cert.private_key_and_cert_chain_pem.write_to_path(str(tls.server))
    return tls
