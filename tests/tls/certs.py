#!/usr/bin/env python3
"""Throwaway PKI for libpjwebsock's wss:// tests, made with the openssl CLI.

    python3 tests/tls/certs.py OUTDIR      (prints the JSON description)

or, from Python, `make_certs(outdir)` -> dict of paths.

Everything uses P-256 keys (fast, also under valgrind). Certificates are
issued with `openssl ca` and explicit -startdate/-enddate, because plain
`-days` cannot make an already expired certificate on OpenSSL 3.0.

Files made in OUTDIR:
  ca.pem, ca.key          the test CA (CN "pjws test CA")
  cadir/                  ca.pem, hashed with `openssl rehash` (for ca_dir)
  other-ca.pem/.key       a second CA nobody trusts (issues client-other)
  valid.pem/.key          DNS:localhost, DNS:pjws.test, IP:127.0.0.1
  wronghost.pem/.key      DNS:wrong.example only
  expired.pem/.key        like valid, but expired yesterday
  selfsigned.pem/.key     like valid, but self-signed (not issued by the CA)
  iponly.pem/.key         IP:127.0.0.1 only (no DNS name at all)
  client.pem/.key         client certificate (clientAuth) issued by the CA
  client-combined.pem     client certificate followed by its key
  client-enc.key          client.key encrypted with the password "s3cret"
  client-other.pem/.key   client certificate issued by other-ca (untrusted)
  pins.json               SHA-256 of each server certificate's SPKI (hex)
"""

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

OPENSSL = shutil.which("openssl") or "openssl"
CLIENT_KEY_PASSWORD = "s3cret"

CA_CNF = """\
[ ca ]
default_ca = testca

[ testca ]
dir              = {dir}
database         = $dir/index.txt
new_certs_dir    = $dir/newcerts
serial           = $dir/serial
default_md       = sha256
policy           = policy_any
unique_subject   = no
copy_extensions  = none
email_in_dn      = no

[ policy_any ]
commonName       = supplied

[ req ]
distinguished_name = req_dn
prompt           = no

[ req_dn ]
CN = unused

[ v3_ca ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[ srv_valid ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, DNS:pjws.test, IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid

[ srv_wronghost ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:wrong.example
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid

[ srv_iponly ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid

[ srv_selfsigned ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature, keyCertSign
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, DNS:pjws.test, IP:127.0.0.1
subjectKeyIdentifier   = hash

[ cli ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
"""


def run(*argv, cwd=None):
    r = subprocess.run([OPENSSL, *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed (%d): %s" % (" ".join(argv), r.returncode,
                                                           r.stderr.decode(errors="replace")))
    return r.stdout


def asn1_time(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d%H%M%SZ")


def genkey(path: Path):
    run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))


class CA:
    def __init__(self, out: Path, name: str, cn: str):
        self.out = out
        self.dir = out / (name + ".d")
        (self.dir / "newcerts").mkdir(parents=True, exist_ok=True)
        (self.dir / "index.txt").write_text("")
        (self.dir / "serial").write_text("%04X\n" % (0x1000 + len(name)))
        self.cnf = self.dir / "ca.cnf"
        self.cnf.write_text(CA_CNF.format(dir=self.dir))
        self.key = out / (name + ".key")
        self.pem = out / (name + ".pem")
        genkey(self.key)
        now = dt.datetime.now(dt.timezone.utc)
        # self-signed root through `openssl ca -selfsign` for explicit dates
        csr = self.dir / "ca.csr"
        run("req", "-new", "-config", str(self.cnf), "-key", str(self.key), "-subj", "/CN=" + cn,
            "-out", str(csr))
        run("ca", "-batch", "-config", str(self.cnf), "-selfsign", "-keyfile", str(self.key),
            "-in", str(csr), "-out", str(self.pem), "-notext", "-extensions", "v3_ca",
            "-startdate", asn1_time(now - dt.timedelta(days=2)),
            "-enddate", asn1_time(now + dt.timedelta(days=30)))

    def issue(self, name: str, cn: str, ext: str, start: dt.datetime, end: dt.datetime):
        key = self.out / (name + ".key")
        pem = self.out / (name + ".pem")
        csr = self.dir / (name + ".csr")
        genkey(key)
        run("req", "-new", "-config", str(self.cnf), "-key", str(key), "-subj", "/CN=" + cn, "-out", str(csr))
        run("ca", "-batch", "-config", str(self.cnf), "-cert", str(self.pem), "-keyfile", str(self.key),
            "-in", str(csr), "-out", str(pem), "-notext", "-extensions", ext,
            "-startdate", asn1_time(start), "-enddate", asn1_time(end))
        return pem, key


def spki_sha256(pem: Path) -> str:
    pub = run("x509", "-in", str(pem), "-noout", "-pubkey")
    der = subprocess.run([OPENSSL, "pkey", "-pubin", "-outform", "DER"], input=pub,
                         stdout=subprocess.PIPE, check=True).stdout
    return hashlib.sha256(der).hexdigest()


def make_certs(out) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    day = dt.timedelta(days=1)
    ca = CA(out, "ca", "pjws test CA")
    other = CA(out, "other-ca", "pjws untrusted CA")

    ca.issue("valid", "localhost", "srv_valid", now - day, now + 2 * day)
    ca.issue("wronghost", "wrong.example", "srv_wronghost", now - day, now + 2 * day)
    ca.issue("expired", "localhost", "srv_valid", now - 10 * day, now - day)
    ca.issue("iponly", "127.0.0.1", "srv_iponly", now - day, now + 2 * day)
    ca.issue("client", "pjws test client", "cli", now - day, now + 2 * day)
    other.issue("client-other", "pjws untrusted client", "cli", now - day, now + 2 * day)

    # self-signed leaf: its own issuer, same names as the valid one
    ss_key = out / "selfsigned.key"
    genkey(ss_key)
    cnf = ca.dir / "ca.cnf"
    csr = ca.dir / "selfsigned.csr"
    run("req", "-new", "-config", str(cnf), "-key", str(ss_key), "-subj", "/CN=localhost", "-out", str(csr))
    run("ca", "-batch", "-config", str(cnf), "-selfsign", "-keyfile", str(ss_key), "-in", str(csr),
        "-out", str(out / "selfsigned.pem"), "-notext", "-extensions", "srv_selfsigned",
        "-startdate", asn1_time(now - day), "-enddate", asn1_time(now + 2 * day))

    (out / "client-combined.pem").write_bytes((out / "client.pem").read_bytes() +
                                              (out / "client.key").read_bytes())
    run("pkey", "-in", str(out / "client.key"), "-aes256", "-passout", "pass:" + CLIENT_KEY_PASSWORD,
        "-out", str(out / "client-enc.key"))

    cadir = out / "cadir"
    cadir.mkdir(exist_ok=True)
    shutil.copy(out / "ca.pem", cadir / "ca.pem")
    run("rehash", str(cadir))

    pins = {n: spki_sha256(out / (n + ".pem")) for n in ("valid", "wronghost", "expired", "selfsigned",
                                                        "iponly")}
    (out / "pins.json").write_text(json.dumps(pins, indent=1))

    info = {"dir": str(out), "ca": str(out / "ca.pem"), "cadir": str(cadir),
            "client_password": CLIENT_KEY_PASSWORD, "pins": pins}
    for n in ("valid", "wronghost", "expired", "selfsigned", "iponly", "client", "client-other"):
        info[n] = {"cert": str(out / (n + ".pem")), "key": str(out / (n + ".key"))}
    info["client_combined"] = str(out / "client-combined.pem")
    info["client_enc_key"] = str(out / "client-enc.key")
    return info


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: certs.py OUTDIR", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(make_certs(sys.argv[1]), indent=1))
