#!/usr/bin/env python3
"""Stand-alone checker for docs/test-vectors.json, written from docs/PROTOCOL.md only.

It re-implements, independently of the Rust code, everything a server (or a device client)
needs: the binary and JSON envelope decoders, the canonical body, the signed message, the
CONNECT credential, and ed25519 verification. Every case of the vectors file is run through
it and the verdict (and, for valid cases, every decoded field, the canonical body and the
signed message) compared with the file.

Dependencies: Python 3.8+ standard library and the `cryptography` package.

    python3 docs/reference/python/ingestd_vectors.py [path/to/test-vectors.json]

Exit status 0 when every case matches, 1 otherwise.
"""

import json
import re
import struct
import sys
from fractions import Fraction
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ENVELOPE_PREFIX = b"ingestd/envelope/v1\n"
CONNECT_PREFIX = b"ingestd/connect/v1\n"
MAX_READINGS = 32
KINDS = {
    1: "co2_ppm", 2: "temperature_c", 3: "humidity_rh_pct", 4: "pm1_ugm3", 5: "pm2_5_ugm3",
    6: "pm10_ugm3", 7: "battery_pct", 8: "battery_v", 9: "pressure_hpa", 10: "voc_index",
    11: "noise_dba",
}
NAMES = {name: code for code, name in KINDS.items()}
DEVICE_ID_RE = re.compile(rb"[A-Za-z0-9._-]{1,64}\Z")
HEX128_RE = re.compile(r"[0-9a-fA-F]{128}\Z")
U64_RE = re.compile(r"(0|[1-9][0-9]*)\Z")
PASSWORD_RE = re.compile(rb"v1\.(0|[1-9][0-9]{0,19})\.([0-9a-f]{32})\.([0-9a-f]{128})\Z")


class Reject(Exception):
    """A rejection with its PROTOCOL.md reason code."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------- helpers

def kind_name(code):
    return KINDS.get(code, "kind_%d" % code)


def kind_from_name(name):
    if name in NAMES:
        return NAMES[name]
    m = re.fullmatch(r"kind_([1-9][0-9]{0,4})", name)
    if not m:
        raise Reject("bad_kind")
    code = int(m.group(1))
    if code > 0xFFFF or code in KINDS:  # registered codes must use their name
        raise Reject("bad_kind")
    return code


def is_finite_bits(bits):
    return (bits >> 23) & 0xFF != 0xFF


def f32_bits_from_decimal(text):
    """Exact round-to-nearest-even of a decimal string to IEEE 754 binary32.

    Deliberately not float(text) followed by a binary32 conversion: going through binary64
    rounds twice and can land on the neighbouring binary32 (see the vectors case
    json_valid_direct_binary32_rounding). Returns None on overflow to infinity.
    """
    negative = text.startswith("-")
    q = abs(Fraction(text))
    sign = 0x80000000 if negative else 0
    if q == 0:
        return sign
    e = q.numerator.bit_length() - q.denominator.bit_length()  # 2^e <= q < 2^(e+2)
    if Fraction(2) ** e > q:
        e -= 1
    if Fraction(2) ** (e + 1) <= q:
        e += 1
    e = max(e, -126)  # below that: subnormal, fixed quantum 2^-149
    n = round(q / Fraction(2) ** (e - 23))  # Fraction.__round__ rounds half to even
    if n >= 1 << 24:  # rounding carried into the next binade
        n >>= 1
        e += 1
    if e > 127:
        return None
    if n < 1 << 23:  # subnormal
        return sign | n
    return sign | ((e + 127) << 23) | (n - (1 << 23))


# ---------------------------------------------------------------------------- envelope

def canonical_body(device, seq, ts, readings):
    """readings: list of (kind, bits), already sorted."""
    out = bytearray([1, 0, len(device)]) + device
    out += struct.pack(">QQB", seq, ts, len(readings))
    for kind, bits in readings:
        out += struct.pack(">HI", kind, bits)
    return bytes(out)


def signed_message(topic, body):
    t = topic.encode("utf-8")
    return ENVELOPE_PREFIX + struct.pack(">H", len(t)) + t + body


def decode_binary(p, max_bytes):
    if len(p) > max_bytes:
        raise Reject("oversize")
    pos = 0

    def take(n):
        nonlocal pos
        if pos + n > len(p):
            raise Reject("truncated")
        pos += n
        return p[pos - n:pos]

    version = take(1)[0]
    if version != 1:
        raise Reject("unknown_version")
    if take(1)[0] != 0:
        raise Reject("bad_flags")
    id_len = take(1)[0]
    if not 1 <= id_len <= 64:
        raise Reject("bad_device_id")
    device = take(id_len)
    if not DEVICE_ID_RE.match(device):
        raise Reject("bad_device_id")
    seq, ts, count = struct.unpack(">QQB", take(17))
    if count == 0:
        raise Reject("no_readings")
    if count > MAX_READINGS:
        raise Reject("too_many_readings")
    readings = []
    for _ in range(count):
        kind, bits = struct.unpack(">HI", take(6))
        if kind == 0:
            raise Reject("bad_kind")
        if readings and kind == readings[-1][0]:
            raise Reject("duplicate_kind")
        if readings and kind < readings[-1][0]:
            raise Reject("unsorted_readings")
        if not is_finite_bits(bits):
            raise Reject("non_finite_value")
        readings.append((kind, bits))
    sig = take(64)
    if pos != len(p):
        raise Reject("trailing_bytes")
    return device, seq, ts, readings, sig


class Num:
    """A JSON number kept as its exact source text."""

    def __init__(self, text):
        self.text = text


class Obj:
    """A JSON object kept as its ordered (key, value) pairs, duplicates included."""

    def __init__(self, pairs):
        self.pairs = pairs


def _bad_constant(_name):
    raise ValueError("NaN/Infinity are not JSON")


def decode_json(p, max_bytes):
    if len(p) > max_bytes:
        raise Reject("oversize")
    try:
        top = json.loads(p.decode("utf-8"), object_pairs_hook=Obj, parse_float=Num,
                         parse_int=Num, parse_constant=_bad_constant)
    except (ValueError, UnicodeDecodeError):
        raise Reject("bad_json")
    if not isinstance(top, Obj):
        raise Reject("bad_json")
    keys = [k for k, _ in top.pairs]
    if len(set(keys)) != len(keys):
        raise Reject("bad_json")
    fields = dict(top.pairs)
    v = fields.get("v")
    if not isinstance(v, Num) or not U64_RE.match(v.text):
        raise Reject("bad_json")
    if int(v.text) != 1:
        raise Reject("unknown_version")
    if set(keys) - {"v", "device", "seq", "ts", "readings", "sig"}:
        raise Reject("bad_json")
    if set(keys) != {"v", "device", "seq", "ts", "readings", "sig"}:
        raise Reject("bad_json")
    device = fields["device"]
    if not isinstance(device, str):
        raise Reject("bad_json")
    device = device.encode("utf-8")
    if not DEVICE_ID_RE.match(device):
        raise Reject("bad_device_id")
    ints = []
    for name in ("seq", "ts"):
        x = fields[name]
        if not isinstance(x, Num) or not U64_RE.match(x.text) or int(x.text) >= 1 << 64:
            raise Reject("bad_json")
        ints.append(int(x.text))
    if not isinstance(fields["readings"], Obj):
        raise Reject("bad_json")
    readings = {}
    for name, value in fields["readings"].pairs:
        if len(readings) >= MAX_READINGS:
            raise Reject("too_many_readings")
        kind = kind_from_name(name)
        if not isinstance(value, Num):
            raise Reject("bad_json")
        bits = f32_bits_from_decimal(value.text)
        if bits is None or not is_finite_bits(bits):
            raise Reject("non_finite_value")
        if kind in readings:
            raise Reject("duplicate_kind")
        readings[kind] = bits
    if not readings:
        raise Reject("no_readings")
    sig = fields["sig"]
    if not isinstance(sig, str) or not HEX128_RE.match(sig):
        raise Reject("bad_signature_encoding")
    return device, ints[0], ints[1], sorted(readings.items()), bytes.fromhex(sig)


def device_from_topic(topic, prefix):
    head = prefix + "/"
    if not (topic.startswith(head) and topic.endswith("/telemetry")):
        return None
    dev = topic[len(head):len(topic) - len("/telemetry")]
    return dev if DEVICE_ID_RE.match(dev.encode("utf-8")) else None


def verify(public_key, message, sig):
    try:
        public_key.verify(sig, message)
    except InvalidSignature:
        raise Reject("bad_signature")


def check_envelope(case, form, prefix, max_bytes, keys):
    """Server order: size, topic, decode, device match, key, signature."""
    payload = bytes.fromhex(case["payload"]) if form == "binary" else case["payload"].encode("utf-8")
    if len(payload) > max_bytes:
        raise Reject("oversize")
    topic = case["topic"]
    topic_dev = device_from_topic(topic, prefix)
    if topic_dev is None:
        raise Reject("bad_topic")
    decoder = decode_binary if form == "binary" else decode_json
    device, seq, ts, readings, sig = decoder(payload, max_bytes)
    if device.decode() != topic_dev:
        raise Reject("wrong_device")
    if topic_dev not in keys:
        raise Reject("unknown_device")
    body = canonical_body(device, seq, ts, readings)
    message = signed_message(topic, body)
    verify(keys[topic_dev], message, sig)
    return dict(device=device.decode(), seq=seq, ts=ts, readings=readings, sig=sig, body=body, message=message)


# ---------------------------------------------------------------------------- credential

def connect_message(device_id, client_id, ts_ms, nonce):
    d, c = device_id.encode("utf-8"), client_id.encode("utf-8")
    return (CONNECT_PREFIX + struct.pack(">H", len(d)) + d + struct.pack(">H", len(c)) + c
            + struct.pack(">Q", ts_ms) + nonce)


def check_credential(case, keys):
    password = case["password"].encode("utf-8")
    m = PASSWORD_RE.match(password)
    if not m or int(m.group(1)) >= 1 << 64:
        if re.match(rb"v[0-9]+\.", password) and not password.startswith(b"v1."):
            raise Reject("unknown_version")
        raise Reject("malformed")
    ts_ms, nonce, sig = int(m.group(1)), bytes.fromhex(m.group(2).decode()), bytes.fromhex(m.group(3).decode())
    user, client = case["username"], case["client_id"]
    if not DEVICE_ID_RE.match(user.encode("utf-8")):
        raise Reject("bad_device_id")
    if user not in keys:
        raise Reject("unknown_device")
    now, window = case["now_ms"], case["window_ms"]
    if abs(now - ts_ms) > window:
        raise Reject("expired" if ts_ms < now else "not_yet_valid")
    message = connect_message(user, client, ts_ms, nonce)
    verify(keys[user], message, sig)
    return dict(message=message)


# ---------------------------------------------------------------------------- driver

def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "test-vectors.json"
    vectors = json.loads(path.read_text(encoding="utf-8"))
    keys = {}
    for k in vectors["keys"]:
        public = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(k["seed"])).public_key()
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        if raw.hex() != k["public_key"]:
            print("FAIL key %s: seed does not give the listed public key" % k["device_id"])
            return 1
        keys[k["device_id"]] = Ed25519PublicKey.from_public_bytes(raw)
    prefix, max_bytes = vectors["topic_prefix"], vectors["limits"]["max_bytes"]
    failures, counts = [], {}
    for case in vectors["cases"]:
        form, name, expected = case["form"], case["name"], case["expected"]
        counts[form] = counts.get(form, 0) + 1
        try:
            if form == "credential":
                result = check_credential(case, keys)
            else:
                result = check_envelope(case, form, prefix, max_bytes, keys)
            verdict = "valid"
        except Reject as r:
            verdict, result = r.reason, None
        problems = []
        if verdict != expected:
            problems.append("verdict %s, expected %s" % (verdict, expected))
        elif result is not None and form != "credential":
            d = case["decoded"]
            want = [(r["kind"], int(r["bits"], 16)) for r in d["readings"]]
            names = [r["name"] for r in d["readings"]]
            checks = [
                ("device", result["device"], d["device"]),
                ("seq", result["seq"], d["seq"]),
                ("ts", result["ts"], d["ts"]),
                ("readings", result["readings"], want),
                ("kind names", [kind_name(k) for k, _ in result["readings"]], names),
                ("sig", result["sig"].hex(), d["sig"]),
                ("canonical_body", result["body"].hex(), case["canonical_body"]),
                ("signed_message", result["message"].hex(), case["signed_message"]),
            ]
            problems += ["%s: got %r, expected %r" % (n, g, w) for n, g, w in checks if g != w]
        elif result is not None and "signed_message" in case and result["message"].hex() != case["signed_message"]:
            problems.append("signed_message differs")
        if problems:
            failures.append(name)
            for p in problems:
                print("FAIL %s: %s" % (name, p))
    total = sum(counts.values())
    summary = ", ".join("%d %s" % (n, f) for f, n in sorted(counts.items()))
    print("%d/%d cases match (%s)" % (total - len(failures), total, summary))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
