"""The device protocol, version 1: how a host talks to a board that runs a model (docs/protocol.md).

Byte-oriented, little-endian, fixed binary structs. Every message is one frame::

    magic "OS" (0x4F 0x53) | version u8 (1) | type u8 | model id u32 | payload length u32 | payload | CRC-32 u32

The CRC is IEEE 802.3 CRC-32 (:func:`zlib.crc32`) over everything from the magic through the payload.
The host sends INFO requests (empty payload) and INFER requests (the pixels, uint8, in camera order
(H, W, C), exactly C*H*W bytes); the device answers INFO, RESULT (logits, detections or the raw readout
map) or ERROR.

This module is the Python side: the constants, the encoders, the message dataclasses (:class:`Info`,
:class:`Result`, :class:`Error`) and :class:`Parser`, the streaming parser -- the same state machine
as the device's C parser (``boards/mcu/common/protocol.c``), byte for byte: with ``role="device"`` it
takes requests and reports the error a device replies; with ``role="host"`` it takes replies.
:class:`Device` is a reference device (a parser plus an inference callback) for tests and emulators.

Pure stdlib + numpy. Every problem is a :class:`ProtocolError` (a :class:`runtime.errors.UserError`)
with a one-line message naming it; an ERROR reply turned into an exception is a :class:`DeviceError`.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Callable

import numpy as np

from runtime.errors import UserError

MAGIC = b"OS"
VERSION = 1
HEADER_SIZE = 12    # magic 2, version 1, type 1, model id 4, length 4
CRC_SIZE = 4
OVERHEAD = HEADER_SIZE + CRC_SIZE
ANY_MODEL = 0       # the model id of an INFO request that any device answers
NO_CLASS = 0xFFFF   # RESULT class field of a device that does not compute the class (the FPGA's map)
DEFAULT_TIMEOUT_MS = 100
HOST_MAX_PAYLOAD = 1 << 24  # the largest reply payload a host parser accepts by default
_RESERVED_VERSION = MAGIC[0]  # 'O': never a version, so "O S O S ..." resynchronises on the second magic


class MsgType(IntEnum):
    INFO_REQUEST = 0x01  # host -> device, empty payload
    INFER = 0x02         # host -> device, the pixels
    INFO = 0x81          # device -> host, :class:`Info`
    RESULT = 0x82        # device -> host, :class:`Result`
    ERROR = 0xFF         # device -> host, :class:`Error`


REQUEST_TYPES = (MsgType.INFO_REQUEST, MsgType.INFER)
REPLY_TYPES = (MsgType.INFO, MsgType.RESULT, MsgType.ERROR)


class ErrorCode(IntEnum):
    BAD_VERSION = 1   # detail: the version byte received
    BAD_LENGTH = 2    # detail: the payload length the device expects for this type (host parser: its maximum)
    BAD_CHECKSUM = 3  # detail: the CRC-32 the device computed
    WRONG_MODEL = 4   # detail: the model id received (the reply's header carries the device's own)
    UNKNOWN_TYPE = 5  # detail: 0
    TIMEOUT = 6       # detail: how many bytes of the frame had arrived (magic included)
    BUSY = 7          # detail: device-specific (0)
    INTERNAL = 8      # detail: device-specific (0)


ERROR_TEXT = {
    ErrorCode.BAD_VERSION: "unsupported protocol version",
    ErrorCode.BAD_LENGTH: "bad payload length",
    ErrorCode.BAD_CHECKSUM: "bad checksum",
    ErrorCode.WRONG_MODEL: "wrong model id",
    ErrorCode.UNKNOWN_TYPE: "unknown message type",
    ErrorCode.TIMEOUT: "timeout inside a frame",
    ErrorCode.BUSY: "device busy",
    ErrorCode.INTERNAL: "internal device error",
}


class ResultKind(IntEnum):
    LOGITS = 1      # a classifier: class + n int32 logits
    DETECTIONS = 2  # a detector decoded on the device: n detections (os_detection_t)
    MAP = 3         # a detector's raw readout map, n int32 in (C, GH, GW) order; the host decodes


class Task(IntEnum):
    CLASSIFY = 0
    DETECT = 1


class Flag(IntEnum):
    CYCLES = 0x01  # RESULT.cycles counts device cycles (else 0)
    BUSY = 0x02    # the device answers BUSY to frames that arrive during an inference


class ProtocolError(UserError):
    """A malformed, truncated or unexpected message (one line naming the problem)."""


class DeviceError(ProtocolError):
    """The device answered ERROR; ``.error`` is the :class:`Error`."""

    def __init__(self, error: "Error"):
        super().__init__(error.describe())
        self.error = error


def _name(enum, v: int) -> str:
    try:
        return enum(v).name
    except ValueError:
        return f"0x{v:02x}"


def crc32(data: bytes, crc: int = 0) -> int:
    """IEEE 802.3 CRC-32 (``zlib.crc32``): the frame's checksum."""
    return zlib.crc32(data, crc) & 0xFFFFFFFF


def model_id(sha256_hex: str) -> int:
    """The model id of a model file: the first 4 bytes of its sha256, read little-endian (so on the
    wire the id's bytes are the digest's first 4 bytes, in order)."""
    s = str(sha256_hex).strip().lower()
    try:
        digest = bytes.fromhex(s)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise ProtocolError(f"a model sha256 is 64 hex digits, not {str(sha256_hex)[:80]!r}")
    return int.from_bytes(digest[:4], "little")


def image_payload(image, shape: tuple[int, int, int]) -> bytes:
    """An INFER payload: a uint8 image (C, H, W) (or already flat in camera order) as C*H*W bytes in
    camera order (H, W, C)."""
    c, h, w = (int(v) for v in shape)
    a = np.asarray(image)
    if a.dtype != np.uint8:
        if a.size and (a.min() < 0 or a.max() > 255 or not np.issubdtype(a.dtype, np.integer)):
            raise ProtocolError(f"pixels must be integers 0..255, not {a.dtype} in {a.min()}..{a.max()}")
        a = a.astype(np.uint8)
    if a.shape == (c, h, w):
        return a.transpose(1, 2, 0).tobytes()
    if a.ndim == 1 and a.size == c * h * w:
        return a.tobytes()
    raise ProtocolError(f"an image of shape {tuple(a.shape)} is not the model's input ({c}, {h}, {w})")


def payload_image(payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """The inverse of :func:`image_payload`: camera-order bytes -> uint8 (C, H, W)."""
    c, h, w = (int(v) for v in shape)
    if len(payload) != c * h * w:
        raise ProtocolError(f"a payload of {len(payload)} bytes is not a ({c}, {h}, {w}) image ({c * h * w} bytes)")
    return np.frombuffer(bytes(payload), dtype=np.uint8).reshape(h, w, c).transpose(2, 0, 1).copy()


# ---- frames ----------------------------------------------------------------------------------------

def encode_frame(type: int, model_id: int, payload: bytes = b"", version: int = VERSION) -> bytes:
    """One frame of any type (no check of the type or payload: tests build bad frames with it)."""
    payload = bytes(payload)
    head = MAGIC + struct.pack("<BBII", version & 0xFF, type & 0xFF, model_id & 0xFFFFFFFF, len(payload))
    body = head + payload
    return body + struct.pack("<I", crc32(body))


def encode_request(type: int, model_id: int, payload: bytes = b"") -> bytes:
    """A host -> device frame: ``MsgType.INFO_REQUEST`` (empty payload; model id 0 = any device) or
    ``MsgType.INFER`` (the pixels, see :func:`image_payload`)."""
    if type not in REQUEST_TYPES:
        raise ProtocolError(f"{_name(MsgType, type)} is not a request type (INFO_REQUEST or INFER)")
    if type == MsgType.INFO_REQUEST and payload:
        raise ProtocolError(f"an INFO request has an empty payload, not {len(payload)} bytes")
    return encode_frame(type, model_id, payload)


def encode_reply(model_id: int, msg: "Info | Result | Error") -> bytes:
    """A device -> host frame carrying ``msg``; ``model_id`` is the device's own."""
    for cls, t in ((Info, MsgType.INFO), (Result, MsgType.RESULT), (Error, MsgType.ERROR)):
        if isinstance(msg, cls):
            return encode_frame(t, model_id, msg.encode())
    raise ProtocolError(f"cannot send a {type(msg).__name__} as a reply")


@dataclass(frozen=True)
class Message:
    """One complete frame with a good CRC."""

    type: int
    model_id: int
    payload: bytes
    version: int = VERSION

    def encode(self) -> bytes:
        return encode_frame(self.type, self.model_id, self.payload, self.version)

    def decode(self) -> "Info | Result | Error | bytes":
        """The payload as its dataclass (a reply), or the raw bytes (a request)."""
        if self.type == MsgType.INFO:
            return Info.decode(self.payload)
        if self.type == MsgType.RESULT:
            return Result.decode(self.payload)
        if self.type == MsgType.ERROR:
            return Error.decode(self.payload)
        return self.payload

    def expect(self, type: int) -> "Info | Result | bytes":
        """The decoded payload of a reply that must be of ``type``; an ERROR reply raises
        :class:`DeviceError`, another type :class:`ProtocolError`."""
        if self.type == MsgType.ERROR and type != MsgType.ERROR:
            raise DeviceError(Error.decode(self.payload))
        if self.type != type:
            raise ProtocolError(f"expected a {_name(MsgType, type)} message, got {_name(MsgType, self.type)}")
        return self.decode()


def decode_frame(data: bytes) -> Message:
    """Exactly one frame (no leading or trailing bytes) -> :class:`Message`."""
    data = bytes(data)
    if len(data) < OVERHEAD:
        raise ProtocolError(f"a frame has at least {OVERHEAD} bytes, not {len(data)}")
    if data[:2] != MAGIC:
        raise ProtocolError(f"bad magic {data[:2].hex()} (expected 4f53)")
    version, type_, mid, length = struct.unpack_from("<BBII", data, 2)
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this host speaks {VERSION})")
    if len(data) != OVERHEAD + length:
        raise ProtocolError(f"frame of {len(data)} bytes but its header claims a {length}-byte payload "
                            f"({OVERHEAD + length} bytes)")
    got, = struct.unpack_from("<I", data, HEADER_SIZE + length)
    want = crc32(data[:HEADER_SIZE + length])
    if got != want:
        raise ProtocolError(f"bad checksum: frame says {got:08x}, contents give {want:08x}")
    return Message(type_, mid, data[HEADER_SIZE:HEADER_SIZE + length], version)


# ---- payloads --------------------------------------------------------------------------------------

def _fixed_str(s: str, n: int, what: str) -> bytes:
    b = str(s).encode("utf-8")
    if len(b) > n or b"\0" in b:
        raise ProtocolError(f"{what} {str(s)[:60]!r} does not fit {n} bytes (UTF-8, no NUL)")
    return b.ljust(n, b"\0")


def _unfixed_str(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


_INFO = struct.Struct("<BBBB4H4I32s32s16s")
INFO_SIZE = _INFO.size  # 108


@dataclass(frozen=True)
class Info:
    """The INFO reply: what the device runs and how to talk to it.

    Layout (108 bytes): protocol u8, task u8, result kind u8, flags u8, input C, H, W u16,
    max detections u16, outputs u32, clock Hz u32, max payload u32, timeout ms u32, sha256 [32],
    model name [32] (UTF-8, NUL padded), board [16] (NUL padded)."""

    name: str
    sha256: str                       # 64 hex digits
    input_shape: tuple[int, int, int]  # (C, H, W)
    task: int = Task.CLASSIFY
    result_kind: int = ResultKind.LOGITS
    n_outputs: int = 0                # logits of a classifier; the readout map's C*GH*GW of a detector
    board: str = ""
    clock_hz: int = 0
    max_payload: int = 0              # the receive buffer; 0: the input size
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    max_detections: int = 0           # a detector's head.max_detections; 0 for a classifier
    flags: int = 0                    # :class:`Flag` bits
    protocol: int = VERSION

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        if not self.max_payload:
            object.__setattr__(self, "max_payload", self.input_size)

    @property
    def model_id(self) -> int:
        return model_id(self.sha256)

    @property
    def input_size(self) -> int:
        c, h, w = self.input_shape
        return int(c) * int(h) * int(w)

    def encode(self) -> bytes:
        c, h, w = (int(v) for v in self.input_shape)
        for what, v, hi in (("input C", c, 0xFFFF), ("input H", h, 0xFFFF), ("input W", w, 0xFFFF),
                            ("max detections", self.max_detections, 0xFFFF), ("outputs", self.n_outputs, 0xFFFFFFFF),
                            ("clock Hz", self.clock_hz, 0xFFFFFFFF), ("max payload", self.max_payload, 0xFFFFFFFF),
                            ("timeout ms", self.timeout_ms, 0xFFFFFFFF), ("flags", self.flags, 0xFF),
                            ("task", self.task, 0xFF), ("result kind", self.result_kind, 0xFF)):
            if not 0 <= int(v) <= hi:
                raise ProtocolError(f"INFO {what} {v} is outside 0..{hi}")
        model_id(self.sha256)  # checks the digest
        return _INFO.pack(self.protocol, int(self.task), int(self.result_kind), int(self.flags), c, h, w,
                          int(self.max_detections), int(self.n_outputs), int(self.clock_hz), int(self.max_payload),
                          int(self.timeout_ms), bytes.fromhex(self.sha256),
                          _fixed_str(self.name, 32, "model name"), _fixed_str(self.board, 16, "board name"))

    @classmethod
    def decode(cls, payload: bytes) -> "Info":
        if len(payload) != INFO_SIZE:
            raise ProtocolError(f"an INFO reply has {INFO_SIZE} payload bytes, not {len(payload)}")
        (proto, task, kind, flags, c, h, w, maxd, nout, clk, maxp, tmo, sha, name, board) = _INFO.unpack(payload)
        return cls(name=_unfixed_str(name), sha256=sha.hex(), input_shape=(c, h, w), task=task, result_kind=kind,
                   n_outputs=nout, board=_unfixed_str(board), clock_hz=clk, max_payload=maxp, timeout_ms=tmo,
                   max_detections=maxd, flags=flags, protocol=proto)

    @classmethod
    def for_model(cls, path, board: str = "", clock_hz: int = 0, result_kind: int | None = None,
                  max_payload: int = 0, timeout_ms: int = DEFAULT_TIMEOUT_MS, flags: int = 0) -> "Info":
        """The INFO a device running the model file ``path`` answers (the host compares it with the
        device's). ``result_kind`` defaults to LOGITS for a classifier and DETECTIONS for a detector."""
        from pathlib import Path

        from runtime import modelfile  # lazy: loading a model file needs torch
        m = modelfile.load(path)
        detect = m.task == "detect"
        kind = result_kind if result_kind is not None else (ResultKind.DETECTIONS if detect else ResultKind.LOGITS)
        return cls(name=Path(path).name.removesuffix(".pt"), sha256=modelfile.file_sha256(path),
                   input_shape=tuple(int(v) for v in m.input_shape), task=Task.DETECT if detect else Task.CLASSIFY,
                   result_kind=kind, n_outputs=int(np.prod(m.layers[-1].out_shape)), board=board, clock_hz=clock_hz,
                   max_payload=max_payload, timeout_ms=timeout_ms,
                   max_detections=int(m.head.max_detections) if detect else 0, flags=flags)


_RESULT = struct.Struct("<BBHII")  # kind, reserved (0), class, cycles, n
_DET = struct.Struct("<5iq")       # cls, x0, y0, x1, y1, score: os_detection_t without its padding
DET_SIZE = _DET.size              # 28


class Result:
    """The RESULT reply. Layout: kind u8, reserved u8 (0), class u16 (:data:`NO_CLASS` = none),
    cycles u32, n u32, then n int32 (LOGITS, MAP) or n detections of 28 bytes (DETECTIONS: cls, x0, y0,
    x1, y1 int32, score int64).

    ``logits``: int32 (n,) for LOGITS and MAP; ``detections``: int64 (n, 6) rows (class, x0, y0, x1,
    y1, score) for DETECTIONS, as :func:`runtime.spec.decode_detections` returns them."""

    def __init__(self, kind: int, cls: int | None = None, logits=None, detections=None, cycles: int = 0):
        self.kind = ResultKind(kind) if kind in ResultKind._value2member_map_ else kind
        self.cls = cls
        self.cycles = int(cycles)
        if kind == ResultKind.DETECTIONS:
            if logits is not None:
                raise ProtocolError("a DETECTIONS result carries detections, not logits")
            self.logits = None
            self.detections = np.asarray(detections if detections is not None else [], dtype=np.int64).reshape(-1, 6)
        elif kind in (ResultKind.LOGITS, ResultKind.MAP):
            if detections is not None:
                raise ProtocolError(f"a {ResultKind(kind).name} result carries int32 values, not detections")
            v = np.asarray(logits if logits is not None else [], dtype=np.int64).reshape(-1)
            if v.size and (v.min() < -(1 << 31) or v.max() >= 1 << 31):
                raise ProtocolError("RESULT logits must fit int32")
            self.logits = v.astype(np.int32)
            self.detections = None
        else:
            raise ProtocolError(f"unknown RESULT kind {kind}")

    @property
    def n(self) -> int:
        return len(self.detections) if self.kind == ResultKind.DETECTIONS else len(self.logits)

    def encode(self) -> bytes:
        cls = NO_CLASS if self.cls is None else int(self.cls)
        if not 0 <= cls <= 0xFFFF:
            raise ProtocolError(f"RESULT class {cls} is outside 0..65535")
        head = _RESULT.pack(int(self.kind), 0, cls, self.cycles & 0xFFFFFFFF, self.n)
        if self.kind == ResultKind.DETECTIONS:
            d = self.detections
            if d.size and (d[:, :5].min() < -(1 << 31) or d[:, :5].max() >= 1 << 31):
                raise ProtocolError("RESULT detection class and box must fit int32")
            return head + b"".join(_DET.pack(*(int(v) for v in row)) for row in d)
        return head + self.logits.astype("<i4").tobytes()

    @classmethod
    def decode(cls, payload: bytes) -> "Result":
        payload = bytes(payload)
        if len(payload) < _RESULT.size:
            raise ProtocolError(f"a RESULT reply has at least {_RESULT.size} payload bytes, not {len(payload)}")
        kind, _, c, cycles, n = _RESULT.unpack_from(payload)
        item = {ResultKind.LOGITS: 4, ResultKind.MAP: 4, ResultKind.DETECTIONS: DET_SIZE}.get(kind)
        if item is None:
            raise ProtocolError(f"unknown RESULT kind {kind}")
        if len(payload) != _RESULT.size + item * n:
            raise ProtocolError(f"a {ResultKind(kind).name} result of {n} entries has {_RESULT.size + item * n} "
                                f"payload bytes, not {len(payload)}")
        body = payload[_RESULT.size:]
        c = None if c == NO_CLASS else c
        if kind == ResultKind.DETECTIONS:
            rows = [_DET.unpack_from(body, k * DET_SIZE) for k in range(n)]
            return cls(kind, c, detections=np.array(rows, dtype=np.int64).reshape(-1, 6), cycles=cycles)
        return cls(kind, c, logits=np.frombuffer(body, dtype="<i4").astype(np.int32), cycles=cycles)

    def decoded_detections(self, head=None, input_hw=None, map_shape=None) -> np.ndarray:
        """The detections, int64 (n, 6): as sent (DETECTIONS), or decoded here from the readout map
        (MAP: needs the model's ``head`` (runtime.spec.DetectHead), ``input_hw`` and ``map_shape``
        (C, GH, GW))."""
        if self.kind == ResultKind.DETECTIONS:
            return self.detections
        if self.kind != ResultKind.MAP:
            raise ProtocolError("a classifier's RESULT has no detections")
        if head is None or input_hw is None or map_shape is None:
            raise ProtocolError("decoding a readout map needs the model's detection head, input size and map shape")
        if int(np.prod(map_shape)) != len(self.logits):
            raise ProtocolError(f"a readout map of {len(self.logits)} values is not {tuple(map_shape)}")
        from runtime.spec import decode_detections
        return decode_detections(self.logits.reshape(tuple(map_shape)), head, input_hw)

    def __eq__(self, other):
        return isinstance(other, Result) and self.encode() == other.encode()

    def __repr__(self):
        vals = self.detections.tolist() if self.kind == ResultKind.DETECTIONS else self.logits.tolist()
        return f"Result({_name(ResultKind, self.kind)}, cls={self.cls}, cycles={self.cycles}, {vals})"


_ERROR = struct.Struct("<BBHI")  # code, request type, reserved (0), detail
ERROR_SIZE = _ERROR.size         # 8


@dataclass(frozen=True)
class Error:
    """The ERROR reply (and what :class:`Parser` reports): code u8, request type u8 (0 when the frame
    ended before its type byte), reserved u16 (0), detail u32 (see :class:`ErrorCode`)."""

    code: int
    request_type: int = 0
    detail: int = 0

    def encode(self) -> bytes:
        return _ERROR.pack(self.code & 0xFF, self.request_type & 0xFF, 0, self.detail & 0xFFFFFFFF)

    @classmethod
    def decode(cls, payload: bytes) -> "Error":
        if len(payload) != ERROR_SIZE:
            raise ProtocolError(f"an ERROR reply has {ERROR_SIZE} payload bytes, not {len(payload)}")
        code, t, _, detail = _ERROR.unpack(payload)
        return cls(code, t, detail)

    def describe(self) -> str:
        """One line: what went wrong, for which request."""
        text = ERROR_TEXT.get(self.code, f"error code {self.code}")
        req = _name(MsgType, self.request_type) if self.request_type else "a frame"
        more = {ErrorCode.BAD_VERSION: f"version {self.detail} (the device speaks {VERSION})",
                ErrorCode.BAD_LENGTH: f"the device expects {self.detail} payload bytes",
                ErrorCode.BAD_CHECKSUM: f"the device computed {self.detail:08x}",
                ErrorCode.WRONG_MODEL: f"the frame named model {self.detail:08x}",
                ErrorCode.TIMEOUT: f"{self.detail} bytes arrived, then silence"}.get(self.code)
        return f"device error: {text} in {req}" + (f": {more}" if more else "")


# ---- the parser ------------------------------------------------------------------------------------

HUNT, MAGIC1, HEADER, PAYLOAD, CHECK = range(5)


class Parser:
    """The streaming frame parser: feed bytes (with a millisecond clock), get complete
    :class:`Message` s and :class:`Error` s. The same state machine as the C device
    (docs/protocol.md, "The receiver"):

    * HUNT: skip bytes (counted in ``discarded``) until 0x4F; MAGIC1: 0x53 starts a frame (0x4F stays).
    * HEADER: the next 10 bytes (a version byte of 0x4F is a false start: back to MAGIC1). Then the
      header is checked, in this order: version, type, model id, length. A bad header still
      consumes its claimed payload and CRC (nothing stored), then reports its error.
    * PAYLOAD, CHECK: the payload, then the CRC; a mismatch is BAD_CHECKSUM.
    * a gap of more than ``timeout_ms`` between two bytes of a frame (seen by the next byte or by
      :meth:`tick`) ends it: TIMEOUT, or the bad header's own error. A lone 0x4F is just dropped.

    ``role="device"``: requests only (INFO_REQUEST with an empty payload and model id 0 or
    ``model_id``; INFER with ``model_id`` and exactly ``input_size`` bytes). ``role="host"``:
    replies only (INFO, RESULT, ERROR), any model id, payloads up to ``max_payload``.
    """

    def __init__(self, role: str = "device", model_id: int = 0, input_size: int = 0, max_payload: int = 0,
                 timeout_ms: int = DEFAULT_TIMEOUT_MS):
        if role not in ("device", "host"):
            raise ProtocolError(f"a parser's role is 'device' or 'host', not {role!r}")
        self.role = role
        self.model_id = int(model_id) & 0xFFFFFFFF
        self.input_size = int(input_size)
        self.max_payload = int(max_payload) or (self.input_size if role == "device" else HOST_MAX_PAYLOAD)
        if role == "device" and self.input_size > self.max_payload:
            raise ProtocolError(f"input size {self.input_size} exceeds the maximum payload {self.max_payload}")
        self.timeout_ms = int(timeout_ms)
        self.discarded = 0
        self.last_ms = 0
        self._reset()

    def _reset(self):
        self.state = HUNT
        self._hdr = bytearray()
        self._payload = bytearray()
        self._crc_in = bytearray()
        self._crc = 0
        self._err: Error | None = None
        self._len = 0
        self._got = 0

    # header checks, in order: version, type, model id, length
    def _check_header(self) -> Error | None:
        version, t, mid, length = struct.unpack_from("<BBII", self._hdr, 2)
        if version != VERSION:
            return Error(ErrorCode.BAD_VERSION, t, version)
        if self.role == "device":
            if t not in REQUEST_TYPES:
                return Error(ErrorCode.UNKNOWN_TYPE, t)
            if mid != self.model_id and not (t == MsgType.INFO_REQUEST and mid == ANY_MODEL):
                return Error(ErrorCode.WRONG_MODEL, t, mid)
            want = self.input_size if t == MsgType.INFER else 0
            if length != want:
                return Error(ErrorCode.BAD_LENGTH, t, want)
        else:
            if t not in REPLY_TYPES:
                return Error(ErrorCode.UNKNOWN_TYPE, t)
            if length > self.max_payload:
                return Error(ErrorCode.BAD_LENGTH, t, self.max_payload)
        return None

    def _expire(self) -> Error | None:
        """The inter-byte timeout fired in the current state."""
        st = self.state
        if st == MAGIC1:
            self.discarded += 1
            self._reset()
            return None
        err = self._err
        if err is None:
            t = self._hdr[3] if len(self._hdr) > 3 else 0
            got = len(self._hdr) + self._got + len(self._crc_in)
            err = Error(ErrorCode.TIMEOUT, t, got & 0xFFFFFFFF)
        self._reset()
        return err

    def _step(self, b: int):
        st = self.state
        if st == HUNT:
            if b == MAGIC[0]:
                self.state = MAGIC1
            else:
                self.discarded += 1
        elif st == MAGIC1:
            if b == MAGIC[1]:
                self.state = HEADER
                self._hdr = bytearray(MAGIC)
                self._crc = crc32(MAGIC)
            elif b == MAGIC[0]:
                self.discarded += 1
            else:
                self.discarded += 2
                self._reset()
        elif st == HEADER:
            if len(self._hdr) == 2 and b == _RESERVED_VERSION:
                self.discarded += 2
                self._reset()
                self.state = MAGIC1
                return None
            self._hdr.append(b)
            self._crc = crc32(bytes((b,)), self._crc)
            if len(self._hdr) == HEADER_SIZE:
                self._err = self._check_header()
                self._len, = struct.unpack_from("<I", self._hdr, 8)
                self.state = PAYLOAD if self._len else CHECK
        elif st == PAYLOAD:
            if self._err is None:  # a bad header's payload is counted, not stored
                self._payload.append(b)
                self._crc = crc32(bytes((b,)), self._crc)
            self._got += 1
            if self._got == self._len:
                self.state = CHECK
        elif st == CHECK:
            self._crc_in.append(b)
            if len(self._crc_in) == CRC_SIZE:
                err, t = self._err, self._hdr[3]
                got, = struct.unpack("<I", self._crc_in)
                if err is None and got != self._crc:
                    err = Error(ErrorCode.BAD_CHECKSUM, t, self._crc)
                out = err or Message(t, struct.unpack_from("<I", self._hdr, 4)[0], bytes(self._payload))
                self._reset()
                return out
        return None

    def feed_byte(self, b: int, now_ms: int = 0) -> "Message | Error | None":
        """One byte at ``now_ms``: a complete message, an error, or None (need more)."""
        ev = None
        if self.state != HUNT and ((int(now_ms) - self.last_ms) & 0xFFFFFFFF) > self.timeout_ms:
            ev = self._expire()
        self.last_ms = int(now_ms) & 0xFFFFFFFF
        out = self._step(b & 0xFF)
        assert ev is None or out is None  # from HUNT one byte completes nothing
        return ev or out

    def feed(self, data: bytes, now_ms: int = 0) -> list:
        """Bytes that all arrive at ``now_ms``: the messages and errors they complete, in order."""
        data, out, i = bytes(data), [], 0
        while i < len(data):
            ev = self.feed_byte(data[i], now_ms)
            i += 1
            if ev is not None:
                out.append(ev)
            if self.state == PAYLOAD and i < len(data):  # the rest of the payload at once (no gap: no timeout)
                chunk = data[i:i + self._len - self._got]
                if self._err is None:
                    self._payload += chunk
                    self._crc = crc32(chunk, self._crc)
                self._got += len(chunk)
                i += len(chunk)
                if self._got == self._len:
                    self.state = CHECK
        return out

    def tick(self, now_ms: int) -> list:
        """No byte, the clock at ``now_ms``: ``[Error]`` when the inter-byte timeout ends a frame, else []."""
        if self.state != HUNT and ((int(now_ms) - self.last_ms) & 0xFFFFFFFF) > self.timeout_ms:
            ev = self._expire()
            return [ev] if ev is not None else []
        return []

    @property
    def idle(self) -> bool:
        """True between frames (nothing of a frame received)."""
        return self.state == HUNT


class Device:
    """A reference device: :class:`Parser` (role device) plus ``infer(payload) -> Result``; every
    request or error gets its reply, as the firmware sends it. For tests and emulators."""

    def __init__(self, info: Info, infer: Callable[[bytes], Result]):
        self.info = info
        self.infer = infer
        self.parser = Parser("device", info.model_id, info.input_size, info.max_payload, info.timeout_ms)

    def _reply(self, ev) -> bytes:
        mid = self.info.model_id
        if isinstance(ev, Error):
            return encode_reply(mid, ev)
        if ev.type == MsgType.INFO_REQUEST:
            return encode_reply(mid, self.info)
        return encode_reply(mid, self.infer(ev.payload))

    def feed(self, data: bytes, now_ms: int = 0) -> bytes:
        return b"".join(self._reply(ev) for ev in self.parser.feed(data, now_ms))

    def tick(self, now_ms: int) -> bytes:
        return b"".join(self._reply(ev) for ev in self.parser.tick(now_ms))
