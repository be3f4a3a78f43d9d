"""Hostile-input corpus against the real coordinator process over real mutual TLS.

A hand-built client (the generated ``fedsynth.v1`` stubs, no site-agent code) sends more
than 200 generated hostile requests, across every class of the security issue: bad
signature, replay, wrong round, closed round, timestamp outside the window, unknown
analysis, duplicate with different content, protocol-version mismatch, wrong site name,
invalid values (NaN, infinite, non-positive variance, n < 1, se inconsistent), wrong types
and malformed bytes, oversized payloads, and connections with an expired, a revoked, a
foreign-CA certificate, no certificate, and a certificate of a site not on the allow-list.
Each must end with the expected gRPC status. Valid sites keep being served during and
after the corpus, and at the end the coordinator's store holds exactly the valid
submissions, and its audit log verifies.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedsynth import PROTOCOL_VERSION
from fedsynth.audit import verify_log
from fedsynth.serde import NONCE_BYTES
from fedsynth.signing import sign
from fedsynth.v1 import federation_pb2 as pb
from fedsynth.v1 import federation_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

SC = grpc.StatusCode
SPEC = """
[[analysis]]
name = "crude_OR"
estimator = "two_by_two"
outcome = "outcome"
exposure = "treated"
measure = "OR"

[[analysis]]
name = "adjusted_logOR"
estimator = "logistic"
outcome = "outcome"
exposure = "treated"
covariates = ["age", "sex"]
"""
ANALYSES = ("crude_OR", "adjusted_logOR")
VALID_SITES = ("mtf-alpha", "mtf-bravo", "mtf-charlie")
EVIL = "mtf-evil"            # allowed, valid certificate, sends hostile content
REVOKED = "mtf-revoked"      # allowed, certificate revoked before the corpus
OUTSIDER = "mtf-outsider"    # valid certificate, not on the allow-list
WINDOW_S = 600        # generous: a slow CI machine must not turn other cases stale


def _cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> str:
    out = subprocess.run([sys.executable, "-m", "fedsynth", *args], capture_output=True,
                         text=True, timeout=timeout, cwd=cwd)
    assert out.returncode == 0, f"fedsynth {' '.join(args)} failed: {out.stderr}"
    return out.stdout


def _expired_certificate(pki: Path, name: str) -> None:
    """A certificate for ``name`` signed by the project CA whose validity ended yesterday."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now - dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (pki / f"{name}-expired.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (pki / f"{name}-expired.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass
class Federation:
    root: Path
    pki: Path
    config: Path
    process: subprocess.Popen
    address: str
    round_id: str
    closed_round_id: str
    other_round_id: str       # a second open round: a nonce reused there is a replay

    def channel(self, cert: str | None, key: str | None = None,
                ca: Path | None = None) -> grpc.Channel:
        ca_bytes = (ca or self.pki / "ca.crt").read_bytes()
        if cert is None:
            creds = grpc.ssl_channel_credentials(root_certificates=ca_bytes)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca_bytes,
                private_key=Path(key or cert.replace(".crt", ".key")).read_bytes(),
                certificate_chain=Path(cert).read_bytes())
        return grpc.secure_channel(self.address, creds, options=[
            ("grpc.ssl_target_name_override", "localhost"),
            ("grpc.max_send_message_length", 64 * 1024 * 1024)])

    def site_channel(self, site: str) -> grpc.Channel:
        return self.channel(str(self.pki / f"{site}.crt"), str(self.pki / f"{site}.key"))


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Federation:
    root = tmp_path_factory.mktemp("hostile")
    pki = root / "pki"
    _cli("ca", "init", "--dir", str(pki))
    _cli("ca", "issue", "--dir", str(pki), "--coordinator", "localhost")
    for site in (*VALID_SITES, EVIL, REVOKED, OUTSIDER):
        _cli("ca", "issue", "--dir", str(pki), "--site", site)
    _expired_certificate(pki, "mtf-alpha")
    foreign = root / "foreign"
    _cli("ca", "init", "--dir", str(foreign))
    _cli("ca", "issue", "--dir", str(foreign), "--site", "mtf-alpha")
    config = root / "coordinator.toml"
    allow = json.dumps([*VALID_SITES, EVIL, REVOKED])
    config.write_text(f"""
listen = "127.0.0.1:0"
state = "state.db"
report_dir = "reports"
audit_log = "coordinator-audit.jsonl"
submission_window = "{WINDOW_S}s"
[limits]
rate = 1000.0
burst = 10000
[tls]
ca = "pki/ca.crt"
cert = "pki/coordinator.crt"
key = "pki/coordinator.key"
[sites]
allow = {allow}
""", encoding="utf-8")
    (root / "spec.toml").write_text(SPEC, encoding="utf-8")
    # A round that closes at once (the "closed round" case), then the round under attack.
    closed = _cli("round", "start", "--config", str(config), "--spec", str(root / "spec.toml"),
                  "--deadline", "1s", "--quorum", "1").strip().splitlines()[-1]
    log = open(root / "coordinator.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "fedsynth", "coordinator", "serve",
                                "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                               cwd=root)
    addr_file = root / "coordinator.addr"
    for _ in range(300):
        if addr_file.exists() and addr_file.read_text().strip():
            break
        assert process.poll() is None, (root / "coordinator.log").read_text()
        time.sleep(0.1)
    address = addr_file.read_text().strip()
    time.sleep(1.5)  # let the 1 s round pass its deadline and close
    round_id = _cli("round", "start", "--config", str(config), "--spec",
                    str(root / "spec.toml"), "--deadline", "30m",
                    "--quorum", "2").strip().splitlines()[-1]
    other = _cli("round", "start", "--config", str(config), "--spec", str(root / "spec.toml"),
                 "--deadline", "30m", "--quorum", "2").strip().splitlines()[-1]
    _cli("ca", "revoke", "--dir", str(pki), "--site", REVOKED)
    fed = Federation(root, pki, config, process, address, round_id, closed, other)
    yield fed
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


# --- building requests ----------------------------------------------------------------------
def estimate(yi=0.1, vi=0.04, se=None, n=500) -> pb.AnalysisResult:
    return pb.Estimate(yi=yi, vi=vi, se=math.sqrt(vi) if se is None else se, n=n)


def results(**overrides) -> list[pb.AnalysisResult]:
    out = []
    for name in ANALYSES:
        value = overrides.get(name, estimate())
        if isinstance(value, pb.Refusal):
            out.append(pb.AnalysisResult(analysis=name, refusal=value))
        elif value is not None:
            out.append(pb.AnalysisResult(analysis=name, estimate=value))
    return out


def submission(fed: Federation, site: str, *, round_id: str | None = None,
               nonce: bytes | None = None, ts_ms: int | None = None,
               protocol: str = PROTOCOL_VERSION, res=None) -> bytes:
    return pb.Submission(
        protocol_version=protocol, round_id=fed.round_id if round_id is None else round_id,
        site=site, nonce=os.urandom(NONCE_BYTES) if nonce is None else nonce,
        timestamp_unix_ms=int(time.time() * 1000) if ts_ms is None else ts_ms,
        agent_version="hostile-test", results=results() if res is None else res,
    ).SerializeToString()


def signed(fed: Federation, site: str, payload: bytes, *, key_of: str | None = None,
           protocol: str = PROTOCOL_VERSION) -> pb.SubmitRequest:
    key = serialization.load_pem_private_key(
        (fed.pki / f"{key_of or site}.key").read_bytes(), None)
    return pb.SubmitRequest(protocol_version=protocol, submission=payload,
                            signature=sign(key, payload))


@dataclass
class Case:
    kind: str
    description: str
    expected: tuple[grpc.StatusCode, ...]
    run: Callable[[Federation], object]


def _submit(fed: Federation, site: str, request) -> Callable[[Federation], object]:
    def run(_fed):
        with fed.site_channel(site) as channel:
            return pb_grpc.FederationStub(channel).Submit(request, timeout=15)
    return run


def corpus(fed: Federation, rng: random.Random) -> list[Case]:
    cases: list[Case] = []

    def add(kind, description, expected, request=None, *, site=EVIL, run=None):
        if isinstance(expected, grpc.StatusCode):
            expected = (expected,)
        cases.append(Case(kind, description, expected,
                          run or _submit(fed, site, request)))

    # 1. bad signatures
    for i in range(20):
        payload = submission(fed, EVIL)
        good = signed(fed, EVIL, payload)
        variant = i % 5
        if variant == 0:
            sig = os.urandom(rng.randint(0, 80))
        elif variant == 1:
            sig = good.signature[:-1]
        elif variant == 2:
            sig = signed(fed, EVIL, submission(fed, EVIL)).signature   # other bytes
        elif variant == 3:
            sig = signed(fed, EVIL, payload, key_of="mtf-alpha").signature  # other site's key
        else:
            sig = b""
        add("bad_signature", f"variant {variant}", SC.UNAUTHENTICATED,
            pb.SubmitRequest(protocol_version=PROTOCOL_VERSION, submission=payload,
                             signature=sig))
    # 2. wrong round: unknown ids, and a closed round
    for i in range(15):
        rid = rng.choice([f"r-{rng.randint(0, 10**9)}", "", "x" * 300, "../../etc/passwd",
                          "r-' OR 1=1 --"])
        payload = submission(fed, EVIL, round_id=rid)
        add("wrong_round", repr(rid[:30]), (SC.NOT_FOUND, SC.INVALID_ARGUMENT),
            signed(fed, EVIL, payload))
    for i in range(10):
        add("closed_round", fed.closed_round_id, SC.FAILED_PRECONDITION,
            signed(fed, EVIL, submission(fed, EVIL, round_id=fed.closed_round_id)))
    # 3. timestamp outside the window
    for i in range(16):
        skew_s = rng.choice([-1, 1]) * rng.uniform(WINDOW_S + 300, 10 * 365 * 86400)
        ts = int((time.time() + skew_s) * 1000)
        add("timestamp", f"skew {skew_s:.0f} s", (SC.INVALID_ARGUMENT, SC.FAILED_PRECONDITION),
            signed(fed, EVIL, submission(fed, EVIL, ts_ms=ts)))
    # 4. unknown analysis (extra or renamed)
    for i in range(15):
        name = rng.choice(["crude_RR", "patient_id", "", "a" * 500, "crude_OR ", "CRUDE_OR"])
        res = results() + [pb.AnalysisResult(analysis=name, estimate=estimate())] \
            if i % 2 else [pb.AnalysisResult(analysis=name, estimate=estimate()),
                           results()[1]]
        add("unknown_analysis", repr(name[:20]), SC.INVALID_ARGUMENT,
            signed(fed, EVIL, submission(fed, EVIL, res=res)))
    # 5. protocol-version mismatch (request, signed content, and other calls)
    for i in range(16):
        version = rng.choice(["fedsynth.v2", "fedsynth.v0", "", "grpc.v1", "fedsynth.v1.1"])
        if i % 4 == 0:
            add("protocol", f"submit request {version!r}", SC.FAILED_PRECONDITION,
                signed(fed, EVIL, submission(fed, EVIL), protocol=version))
        elif i % 4 == 1:
            add("protocol", f"signed content {version!r}", SC.FAILED_PRECONDITION,
                signed(fed, EVIL, submission(fed, EVIL, protocol=version)))
        else:
            method = ("Register" if i % 4 == 2 else "PullWork" if i % 8 == 3
                      else "Heartbeat")

            def run(_fed, method=method, version=version):
                with fed.site_channel(EVIL) as channel:
                    stub = pb_grpc.FederationStub(channel)
                    if method == "Register":
                        return stub.Register(pb.RegisterRequest(protocol_version=version,
                                                                agent_version="x"), timeout=15)
                    if method == "Heartbeat":
                        return stub.Heartbeat(pb.HeartbeatRequest(
                            protocol_version=version, agent_version="x"), timeout=15)
                    return stub.PullWork(pb.PullWorkRequest(protocol_version=version),
                                         timeout=15)
            add("protocol", f"{method} {version!r}", SC.FAILED_PRECONDITION, run=run)
    # 6. claims to be another site (signed with its own key, or with nothing)
    for i in range(10):
        other = rng.choice(VALID_SITES)
        add("site_mismatch", f"claims {other}", SC.PERMISSION_DENIED,
            signed(fed, EVIL, submission(fed, other)))
    # 7. invalid values
    bad_values = [
        ("yi NaN", dict(yi=math.nan)), ("yi +inf", dict(yi=math.inf)),
        ("yi -inf", dict(yi=-math.inf)), ("vi 0", dict(vi=0.0, se=0.0)),
        ("vi < 0", dict(vi=-0.04, se=0.2)), ("vi NaN", dict(vi=math.nan, se=0.2)),
        ("vi inf", dict(vi=math.inf, se=math.inf)), ("se NaN", dict(se=math.nan)),
        ("se != sqrt(vi)", dict(vi=0.04, se=0.5)), ("n 0", dict(n=0)),
        ("n < 0", dict(n=-5)), ("n huge", dict(n=2**62)),
        ("yi huge", dict(yi=1e300)), ("vi tiny", dict(vi=1e-320, se=1e-160)),
    ]
    for i in range(42):
        label, kwargs = bad_values[i % len(bad_values)]
        target = ANALYSES[i % 2]
        add("invalid_value", f"{label} in {target}", SC.INVALID_ARGUMENT,
            signed(fed, EVIL, submission(fed, EVIL, res=results(**{target: estimate(
                **kwargs)}))))
    # refusals that are not refusals
    for i in range(8):
        refusal = rng.choice([pb.Refusal(code="x", reason=""),
                              pb.Refusal(code="x", reason="r" * 100_000),
                              pb.Refusal(code="bad code!", reason="why"),
                              pb.Refusal(code="c" * 200, reason="why")])
        add("invalid_value", "bad refusal", SC.INVALID_ARGUMENT,
            signed(fed, EVIL, submission(fed, EVIL, res=results(crude_OR=refusal))))
    # missing analysis / empty / duplicated names
    for i in range(8):
        res = rng.choice([results(crude_OR=None), [],
                          results() + [results()[0]],
                          [pb.AnalysisResult(analysis="crude_OR"), results()[1]]])
        add("invalid_value", "missing/duplicate/empty result", SC.INVALID_ARGUMENT,
            signed(fed, EVIL, submission(fed, EVIL, res=res)))
    # 8. wrong types and malformed bytes in the signed payload
    for i in range(20):
        variant = i % 5
        if variant == 0:
            payload = os.urandom(rng.randint(1, 200))
        elif variant == 1:   # another message type where a Submission belongs
            payload = pb.RegisterRequest(protocol_version=PROTOCOL_VERSION,
                                         agent_version="x" * 20).SerializeToString()
        elif variant == 2:   # a valid Submission with a truncated tail
            full = submission(fed, EVIL)
            payload = full[:rng.randint(1, len(full) - 1)]
        elif variant == 3:   # nonce of the wrong length
            payload = submission(fed, EVIL, nonce=os.urandom(rng.choice([0, 1, 15, 17, 64])))
        else:                # an empty payload
            payload = b""
        add("wrong_type", f"payload variant {variant}", SC.INVALID_ARGUMENT,
            signed(fed, EVIL, payload))
    # raw bytes that are not a SubmitRequest at all (the server cannot deserialize them)
    for i in range(6):
        junk = os.urandom(rng.randint(1, 300))

        def run(_fed, junk=junk):
            with fed.site_channel(EVIL) as channel:
                call = channel.unary_unary("/fedsynth.v1.Federation/Submit")
                return call(junk, timeout=15)
        add("wrong_type", "undecodable request", (SC.INTERNAL, SC.INVALID_ARGUMENT,
                                                  SC.UNKNOWN), run=run)
    # 9. oversized payloads (over the transport limit, and many analyses under it)
    for i in range(4):
        size = (4 + i) * 1024 * 1024 + 1
        add("oversized", f"{size} bytes", SC.RESOURCE_EXHAUSTED,
            pb.SubmitRequest(protocol_version=PROTOCOL_VERSION, submission=b"\0" * size,
                             signature=b""))
    for i in range(4):
        many = [pb.AnalysisResult(analysis=f"a{j}", estimate=estimate())
                for j in range(2000 + 1000 * i)]
        add("oversized", f"{len(many)} analyses", SC.INVALID_ARGUMENT,
            signed(fed, EVIL, submission(fed, EVIL, res=many)))
    # 10. certificates: expired, revoked, foreign CA, none, not on the allow-list
    def connect(cert, key=None, ca=None):
        def run(_fed):
            with fed.channel(cert, key, ca) as channel:
                stub = pb_grpc.FederationStub(channel)
                return stub.Register(pb.RegisterRequest(protocol_version=PROTOCOL_VERSION,
                                                        agent_version="x"), timeout=10)
        return run
    for i in range(3):
        add("certificate", "expired", SC.UNAVAILABLE,
            run=connect(str(fed.pki / "mtf-alpha-expired.crt"),
                        str(fed.pki / "mtf-alpha-expired.key")))
        add("certificate", "foreign CA", SC.UNAVAILABLE,
            run=connect(str(fed.root / "foreign" / "mtf-alpha.crt"),
                        str(fed.root / "foreign" / "mtf-alpha.key")))
        add("certificate", "no client certificate", SC.UNAVAILABLE, run=connect(None))
        add("certificate", "revoked", SC.PERMISSION_DENIED,
            run=connect(str(fed.pki / f"{REVOKED}.crt"), str(fed.pki / f"{REVOKED}.key")))
        add("certificate", "revoked, signed submission", SC.PERMISSION_DENIED,
            signed(fed, REVOKED, submission(fed, REVOKED)), site=REVOKED)
        add("certificate", "not on the allow-list", SC.PERMISSION_DENIED,
            run=connect(str(fed.pki / f"{OUTSIDER}.crt"), str(fed.pki / f"{OUTSIDER}.key")))
    rng.shuffle(cases)
    return cases


def _status(run, fed) -> tuple[grpc.StatusCode, str]:
    try:
        run(fed)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return SC.OK, ""


def _valid_call(fed: Federation, site: str) -> None:
    with fed.site_channel(site) as channel:
        stub = pb_grpc.FederationStub(channel)
        stub.Heartbeat(pb.HeartbeatRequest(protocol_version=PROTOCOL_VERSION,
                                           agent_version="t"), timeout=15)
        work = stub.PullWork(pb.PullWorkRequest(protocol_version=PROTOCOL_VERSION),
                             timeout=15)
        assert fed.round_id in [w.round_id for w in work.work] or site in ("mtf-alpha",
                                                                           "mtf-bravo", EVIL)


def test_hostile_corpus(federation):
    fed = federation
    rng = random.Random(20261125)
    # The malicious site's first submission is valid and accepted: later different content
    # from it is a conflicting duplicate, a reused nonce is a replay.
    evil_payload = submission(fed, EVIL, res=results(crude_OR=estimate(0.3, 0.09, n=400)))
    evil_request = signed(fed, EVIL, evil_payload)
    with fed.site_channel(EVIL) as channel:
        reply = pb_grpc.FederationStub(channel).Submit(evil_request, timeout=15)
    assert reply.status == "accepted"
    evil_nonce = pb.Submission.FromString(evil_payload).nonce

    cases = corpus(fed, rng)
    for i in range(12):       # duplicates with different content and replays
        res = results(crude_OR=estimate(0.3 + 0.01 * (i + 1), 0.09, n=400))
        cases.append(Case("duplicate_different", f"#{i}", (SC.ALREADY_EXISTS,
                                                           SC.FAILED_PRECONDITION),
                          _submit(fed, EVIL, signed(fed, EVIL, submission(fed, EVIL,
                                                                          res=res)))))
        # The accepted submission's nonce, in a fresh submission to another open round
        # (where the site has not answered yet): only the nonce check can catch it.
        cases.append(Case("replay", f"nonce reuse in another round #{i}",
                          (SC.ALREADY_EXISTS,),
                          _submit(fed, EVIL, signed(fed, EVIL, submission(
                              fed, EVIL, round_id=fed.other_round_id, nonce=evil_nonce,
                              res=res)))))
    assert len(cases) >= 200
    # Valid sites interleave with the attack: alpha submits a third of the way in,
    # bravo after, charlie only heartbeats and pulls work throughout.
    valid_payloads: dict[str, bytes] = {}

    def valid_payload(site: str, k: int) -> bytes:   # signed when sent, so never stale
        valid_payloads[site] = submission(fed, site, res=results(
            crude_OR=estimate(-0.2 - 0.1 * k, 0.01, n=1000 + k)))
        return valid_payloads[site]
    failures = []
    kinds = Counter()
    for index, case in enumerate(cases):
        got, reason = _status(case.run, fed)
        kinds[case.kind] += 1
        if got not in case.expected:
            failures.append(f"{case.kind} ({case.description}): expected "
                            f"{'/'.join(c.name for c in case.expected)}, got {got.name} "
                            f"({reason[:120]})")
        elif len(reason.strip()) < 10:       # every refusal says why
            failures.append(f"{case.kind} ({case.description}): {got.name} without a reason")
        if index % 25 == 0:
            _valid_call(fed, "mtf-charlie")
        if index == len(cases) // 3:
            with fed.site_channel("mtf-alpha") as channel:
                reply = pb_grpc.FederationStub(channel).Submit(
                    signed(fed, "mtf-alpha", valid_payload("mtf-alpha", 0)), timeout=15)
            assert reply.status == "accepted"
    # An identical resend is acknowledged idempotently (not an error).
    with fed.site_channel(EVIL) as channel:
        again = pb_grpc.FederationStub(channel).Submit(evil_request, timeout=15)
    assert again.status == "duplicate"
    with fed.site_channel("mtf-bravo") as channel:
        reply = pb_grpc.FederationStub(channel).Submit(
            signed(fed, "mtf-bravo", valid_payload("mtf-bravo", 1)), timeout=15)
    assert reply.status == "accepted"
    _valid_call(fed, "mtf-charlie")
    assert fed.process.poll() is None, "the coordinator died during the corpus"
    assert not failures, f"{len(failures)} of {len(cases)} cases got an unexpected status:\n" \
        + "\n".join(failures[:40])
    assert set(kinds) >= {"bad_signature", "wrong_round", "closed_round", "timestamp",
                          "unknown_analysis", "protocol", "site_mismatch", "invalid_value",
                          "wrong_type", "oversized", "certificate", "duplicate_different",
                          "replay"}

    # The store holds exactly the valid submissions, byte for byte.
    from coordinator.store import Store
    from fedsynth.config import load_coordinator_config

    store = Store(load_coordinator_config(fed.config).state, migrate=False)
    try:
        subs = {s.site: s for s in store.submissions(fed.round_id)}
        assert set(subs) == {"mtf-alpha", "mtf-bravo", EVIL}
        assert subs["mtf-alpha"].payload == valid_payloads["mtf-alpha"]
        assert subs["mtf-bravo"].payload == valid_payloads["mtf-bravo"]
        assert subs[EVIL].payload == evil_payload
        assert store.submissions(fed.closed_round_id) == []
        assert store.submissions(fed.other_round_id) == []
        # Only the valid site that heartbeated is in the registry: refused peers (wrong
        # protocol version, revoked, not allowed) left no trace there.
        seen = {s.name for s in store.list_sites() if s.last_heartbeat is not None}
        assert seen == {"mtf-charlie"}, seen
        assert {r.id: r.status for r in store.list_rounds()}[fed.round_id] == "open"
    finally:
        store.close()
    audit = verify_log(fed.root / "coordinator-audit.jsonl")
    assert audit.ok, audit.problems
    events = Counter(json.loads(line)["event"] for line in
                     (fed.root / "coordinator-audit.jsonl").read_text().splitlines())
    assert sum(n for e, n in events.items() if "reject" in e) >= 150, events
    # A wrong protocol version on Heartbeat and PullWork is audited too (throttled: at most
    # one entry per site and method a minute, while two calls of each were refused).
    version_refusals = [e["data"] for e in map(json.loads, (
        fed.root / "coordinator-audit.jsonl").read_text().splitlines())
        if e["event"] == "call.rejected"]
    assert {(d["site"], d["method"], d["kind"]) for d in version_refusals} == {
        (EVIL, "Heartbeat", "version"), (EVIL, "PullWork", "version")}, version_refusals
