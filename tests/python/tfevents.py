#!/usr/bin/env python3
"""tfevents.py: the tests' own reader and checker of TensorBoard event files.

Python's standard library only, written from the format descriptions and
sharing no code with trainloop's C++ writer (src/tensorboard/), so the tests
get a second opinion on what that writer produces.

    tfevents.py [--strict] [--tsv] PATH...
    tfevents.py --selftest

PATH is an event file or a directory searched for event files (names that
contain "tfevents"), each directory's files in name order. A file's run is its
directory relative to the directory argument, "." for a file directly in it
or for a file argument.

With --tsv, stdout gets one line per Summary.Value:
    run <TAB> tag <TAB> step <TAB> wall_time <TAB> value
numbers as Python's repr; value is the simple_value, or the element of a
one-element numeric tensor, else None (histograms, text). Damage and warnings
go to stderr, then a one-line verdict.

Exit status: 0 clean; 1 a damaged record (bad CRC, truncation inside a
record, undecodable protobuf), or any warning under --strict; 2 a usage
error, an unreadable path or no event files. The records before damage are
still printed; a file cut exactly at a record boundary is clean.

Formats
-------
TFRecord, repeated to the end of the file, integers little-endian:
    uint64 length, uint32 masked_crc(length), data[length], uint32 masked_crc(data)
    masked_crc(x) = (((c >> 15) | (c << 17)) + 0xa282ead8) mod 2**32, c = CRC-32C(x)
    CRC-32C: Castagnoli, reflected polynomial 0x82f63b78, init and final xor ~0.
Protobuf: key = varint(field << 3 | wire type); wire types 0 varint,
1 64-bit, 2 length-delimited, 5 32-bit (3 and 4, groups, are not used here).
    Event: 1 wall_time double, 2 step int64, 3 file_version string,
        5 summary Summary (4, 6-10: other payloads, not decoded)
    Summary: 1 value Value (repeated)
    Value: 1 tag, 7 node_name, 2 simple_value float, 5 histo HistogramProto,
        8 tensor TensorProto, 9 metadata SummaryMetadata (3, 4, 6: others)
    SummaryMetadata: 1 plugin_data {1 plugin_name, 2 content}, 2 display_name,
        3 summary_description, 4 data_class enum
    HistogramProto: 1 min, 2 max, 3 num, 4 sum, 5 sum_squares (doubles),
        6 bucket_limit, 7 bucket (repeated doubles, packed)
    TensorProto: 1 dtype enum, 2 tensor_shape {2 dim {1 size, 2 name},
        3 unknown_rank}, 3 version_number, 4 tensor_content (raw elements),
        5 float_val, 6 double_val, 7 int_val, 8 string_val, 10 int64_val,
        11 bool_val, 13 half_val, 16 uint32_val, 17 uint64_val
"""

import argparse
import math
import os
import struct
import sys

PROG = "tfevents.py"


# ---- CRC-32C ----

def _crc_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---- TFRecord framing ----

class Damage(Exception):
    """Data that cannot be read: framing, checksum or protobuf."""


def records(data):
    """Yields (index, offset, payload); raises Damage where the data stops
    being whole records. Data ending exactly after a record is clean."""
    at = 0
    index = 0
    while at < len(data):
        left = len(data) - at
        where = "record #%d at byte %d" % (index, at)
        if left < 12:
            raise Damage("%s: truncated record header: %d byte(s), a header is 12"
                         % (where, left))
        (length,) = struct.unpack_from("<Q", data, at)
        (length_crc,) = struct.unpack_from("<I", data, at + 8)
        if masked_crc(data[at:at + 8]) != length_crc:
            raise Damage("%s: CRC of the length field does not match" % where)
        if left - 12 < length + 4:
            raise Damage("%s: truncated record: length field says %d byte(s) of data "
                         "and a 4-byte CRC, %d byte(s) follow the header"
                         % (where, length, left - 12))
        payload = data[at + 12:at + 12 + length]
        (data_crc,) = struct.unpack_from("<I", data, at + 12 + length)
        if masked_crc(payload) != data_crc:
            raise Damage("%s: CRC of the data does not match" % where)
        yield index, at, payload
        at += 16 + length
        index += 1


# ---- protobuf wire format ----

def read_varint(buf, at):
    value = 0
    for shift in range(0, 70, 7):
        if at >= len(buf):
            raise Damage("varint runs past the end of its message")
        byte = buf[at]
        at += 1
        if shift == 63 and byte > 1:
            raise Damage("varint does not fit 64 bits")
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    raise Damage("varint longer than 10 bytes")  # not reached: shift 63 stops it


def read_fields(buf):
    """Yields (field number, wire type, value): an int for varints, the raw
    bytes for the other wire types."""
    at = 0
    while at < len(buf):
        key, at = read_varint(buf, at)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise Damage("field number 0")
        if wire == 0:
            value, at = read_varint(buf, at)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if at + size > len(buf):
                raise Damage("field %d: fixed value runs past the end of its message" % number)
            value, at = buf[at:at + size], at + size
        elif wire == 2:
            size, at = read_varint(buf, at)
            if at + size > len(buf):
                raise Damage("field %d: %d byte(s) run past the end of its message"
                             % (number, size))
            value, at = buf[at:at + size], at + size
        else:
            raise Damage("field %d: unknown wire type %d" % (number, wire))
        yield number, wire, value


REPEATED = "repeated"

# message -> field number -> (name, type[, REPEATED]). Types: scalar kinds
# below, or another message's name. Fields not listed are skipped, as
# protobuf skips unknown fields.
SCHEMA = {
    "Event": {1: ("wall_time", "double"), 2: ("step", "int64"),
              3: ("file_version", "string"), 5: ("summary", "Summary")},
    "Summary": {1: ("value", "Value", REPEATED)},
    "Value": {1: ("tag", "string"), 7: ("node_name", "string"),
              2: ("simple_value", "float"), 5: ("histo", "Histogram"),
              8: ("tensor", "Tensor"), 9: ("metadata", "Metadata"),
              3: ("obsolete_histogram", "bytes"), 4: ("image", "bytes"),
              6: ("audio", "bytes")},
    "Metadata": {1: ("plugin_data", "PluginData"), 2: ("display_name", "string"),
                 3: ("summary_description", "string"), 4: ("data_class", "int32")},
    "PluginData": {1: ("plugin_name", "string"), 2: ("content", "bytes")},
    "Histogram": {1: ("min", "double"), 2: ("max", "double"), 3: ("num", "double"),
                  4: ("sum", "double"), 5: ("sum_squares", "double"),
                  6: ("bucket_limit", "double", REPEATED),
                  7: ("bucket", "double", REPEATED)},
    "Tensor": {1: ("dtype", "int32"), 2: ("tensor_shape", "Shape"),
               3: ("version_number", "int32"), 4: ("tensor_content", "bytes"),
               5: ("float_val", "float", REPEATED), 6: ("double_val", "double", REPEATED),
               7: ("int_val", "int32", REPEATED), 8: ("string_val", "bytes", REPEATED),
               10: ("int64_val", "int64", REPEATED), 11: ("bool_val", "bool", REPEATED),
               13: ("half_val", "int32", REPEATED), 16: ("uint32_val", "uint64", REPEATED),
               17: ("uint64_val", "uint64", REPEATED)},
    "Shape": {2: ("dim", "Dim", REPEATED), 3: ("unknown_rank", "bool")},
    "Dim": {1: ("size", "int64"), 2: ("name", "string")},
}

# Only one of these may be set (a oneof).
ONEOF = {"Value": ("simple_value", "histo", "tensor", "obsolete_histogram", "image", "audio")}

FIXED = {"double": (1, "<d"), "float": (5, "<f")}
VARINT = ("int64", "int32", "uint64", "bool")


def _varint_as(kind, value):
    if kind == "int64":
        return value - (1 << 64) if value >= 1 << 63 else value
    if kind == "int32":  # negative int32s are sign-extended to 64 bits
        value &= 0xFFFFFFFF
        return value - (1 << 32) if value >= 1 << 31 else value
    if kind == "bool":
        return value != 0
    return value


def _scalar(kind, wire, value, name):
    if kind in FIXED:
        if wire != FIXED[kind][0]:
            raise Damage("%s: wire type %d, expected %d for a %s"
                         % (name, wire, FIXED[kind][0], kind))
        return struct.unpack(FIXED[kind][1], value)[0]
    if kind in VARINT:
        if wire != 0:
            raise Damage("%s: wire type %d, expected 0 for a %s" % (name, wire, kind))
        return _varint_as(kind, value)
    if wire != 2:
        raise Damage("%s: wire type %d, expected 2 for %s" % (name, wire, kind))
    if kind == "string":
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Damage("%s: not UTF-8: %s" % (name, e))
    if kind == "bytes":
        return value
    return decode(kind, value)


def _packed(kind, value, name):
    """A packed repeated numeric field's elements."""
    if kind in FIXED:
        size = struct.calcsize(FIXED[kind][1])
        if len(value) % size:
            raise Damage("%s: packed %ss in %d byte(s), not a multiple of %d"
                         % (name, kind, len(value), size))
        return list(struct.unpack("<%d%s" % (len(value) // size, FIXED[kind][1][1]), value))
    out = []
    at = 0
    while at < len(value):
        number, at = read_varint(value, at)
        out.append(_varint_as(kind, number))
    return out


def decode(message, buf):
    """The message's known fields as a dict; "_warnings" lists oddities that
    are not damage (a field given twice, two members of a oneof)."""
    schema = SCHEMA[message]
    out = {"_warnings": []}
    for number, wire, value in read_fields(buf):
        if number not in schema:
            continue
        entry = schema[number]
        name, kind = entry[0], entry[1]
        where = "%s.%s" % (message, name)
        if len(entry) > 2:
            items = out.setdefault(name, [])
            numeric = kind in FIXED or kind in VARINT
            if numeric and wire == 2:
                items.extend(_packed(kind, value, where))
            else:
                items.append(_scalar(kind, wire, value, where))
            continue
        if name in out:
            out["_warnings"].append("%s is set twice" % where)
        out[name] = _scalar(kind, wire, value, where)
    set_members = [name for name in ONEOF.get(message, ()) if name in out]
    if len(set_members) > 1:
        out["_warnings"].append("%s has %s set: only one may be"
                                % (message, " and ".join(set_members)))
    return out


# ---- tensors and histograms ----

# dtype enum -> (name, struct code of one element, typed list field)
DTYPES = {1: ("float", "f", "float_val"), 2: ("double", "d", "double_val"),
          3: ("int32", "i", "int_val"), 4: ("uint8", "B", "int_val"),
          5: ("int16", "h", "int_val"), 6: ("int8", "b", "int_val"),
          7: ("string", None, "string_val"), 9: ("int64", "q", "int64_val"),
          10: ("bool", "?", "bool_val"), 17: ("uint16", "H", "int_val"),
          19: ("half", "e", "half_val"), 22: ("uint32", "I", "uint32_val"),
          23: ("uint64", "Q", "uint64_val")}


def tensor_value(tensor, problems):
    """The element of a one-element numeric tensor, else None; inconsistent
    tensors add to `problems`."""
    dtype = tensor.get("dtype", 0)
    if dtype not in DTYPES:
        problems.append("tensor dtype %d is not one this reader knows" % dtype)
        return None
    name, code, typed = DTYPES[dtype]
    shape = tensor.get("tensor_shape", {})
    if shape.get("unknown_rank"):
        problems.append("tensor of unknown rank")
        return None
    sizes = [dim.get("size", 0) for dim in shape.get("dim", [])]
    if any(size < 0 for size in sizes):
        problems.append("tensor shape %r has a negative size" % sizes)
        return None
    count = 1
    for size in sizes:
        count *= size
    if "tensor_content" in tensor:
        if code is None:
            problems.append("string tensor with tensor_content")
            return None
        content = tensor["tensor_content"]
        if len(content) != count * struct.calcsize(code):
            problems.append("%s tensor of shape %r has %d byte(s) of tensor_content"
                            % (name, sizes, len(content)))
            return None
        values = list(struct.unpack("<%d%s" % (count, code), content))
    else:
        values = tensor.get(typed, [])
        if len(values) not in (0, 1, count):  # one value stands for every element
            problems.append("%s tensor of shape %r has %d %s element(s)"
                            % (name, sizes, len(values), typed))
            return None
        if name == "half":
            values = [struct.unpack("<e", struct.pack("<H", bits & 0xFFFF))[0]
                      for bits in values]
    if count != 1 or code is None:
        return None
    value = values[0] if values else 0
    return int(value) if name == "bool" else value


def histogram_problems(histo):
    limits = histo.get("bucket_limit", [])
    counts = histo.get("bucket", [])
    problems = []
    if len(limits) != len(counts):
        problems.append("histogram has %d bucket_limit(s) and %d bucket(s)"
                        % (len(limits), len(counts)))
    if any(not b >= a for a, b in zip(limits, limits[1:])):
        problems.append("histogram bucket_limits go down (or are NaN)")
    if any(not c >= 0 for c in counts):
        problems.append("histogram has a negative or NaN bucket count")
    if sum(counts) != histo.get("num", 0.0):
        problems.append("histogram buckets hold %r value(s), num says %r"
                        % (sum(counts), histo.get("num", 0.0)))
    return problems


# ---- checking files ----

class Checker:
    def __init__(self, tsv):
        self.tsv = tsv
        self.errors = 0
        self.warnings = 0
        self.files = 0
        self.records = 0
        self.values = 0
        self.last_step = {}  # (run, tag) -> step

    def error(self, path, message):
        self.errors += 1
        sys.stderr.write("%s: error: %s: %s\n" % (PROG, path, message))

    def warn(self, path, message):
        self.warnings += 1
        sys.stderr.write("%s: warning: %s: %s\n" % (PROG, path, message))

    def check_file(self, path, run):
        self.files += 1
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            self.error(path, "cannot read: %s" % e)
            return
        if not data:
            self.warn(path, "empty file: not even the file_version record")
        try:
            for index, offset, payload in records(data):
                self.records += 1
                where = "record #%d at byte %d" % (index, offset)
                try:
                    event = decode("Event", payload)
                except Damage as e:
                    self.error(path, "%s: the Event does not decode: %s" % (where, e))
                    continue
                self.event(path, run, index, where, event)
        except Damage as e:
            self.error(path, str(e))

    def event(self, path, run, index, where, event):
        for problem in event["_warnings"]:
            self.warn(path, "%s: %s" % (where, problem))
        wall_time = event.get("wall_time", 0.0)
        step = event.get("step", 0)
        if not (math.isfinite(wall_time) and wall_time > 0):
            self.warn(path, "%s: wall_time %r is not a time" % (where, wall_time))
        if index == 0 and "file_version" not in event:
            self.warn(path, "%s: the first record is not the file_version event" % where)
        if "file_version" in event:
            if index != 0:
                self.warn(path, "%s: file_version after the first record" % where)
            if not event["file_version"].startswith("brain.Event:"):
                self.warn(path, "%s: file_version %r is not brain.Event:N"
                          % (where, event["file_version"]))
        summary = event.get("summary")
        if summary is None:
            return
        for problem in summary["_warnings"]:
            self.warn(path, "%s: %s" % (where, problem))
        for value in summary.get("value", []):
            self.value(path, run, where, wall_time, step, value)

    def value(self, path, run, where, wall_time, step, value):
        problems = list(value["_warnings"])
        tag = value.get("tag", "")
        if not tag:
            problems.append("a Summary.Value without a tag")
        number = None
        if "simple_value" in value:
            number = value["simple_value"]
        elif "tensor" in value:
            problems += value["tensor"]["_warnings"]
            number = tensor_value(value["tensor"], problems)
        elif "histo" in value:
            problems += value["histo"]["_warnings"] + histogram_problems(value["histo"])
        elif not any(k in value for k in ONEOF["Value"]):
            problems.append("a Summary.Value without a value")
        previous = self.last_step.get((run, tag))
        if previous is not None and step < previous:
            problems.append("step %d after step %d" % (step, previous))
        self.last_step[(run, tag)] = step
        for problem in problems:
            self.warn(path, "%s: tag %r: %s" % (where, tag, problem))
        self.values += 1
        if self.tsv:
            sys.stdout.write("%s\t%s\t%d\t%r\t%r\n" % (run, tag, step, wall_time, number))


def event_files(path):
    """[(file, run)] under `path`, each directory's files in name order."""
    if os.path.isfile(path):
        return [(path, ".")]
    if not os.path.isdir(path):
        raise OSError("%s: no such file or directory" % path)
    found = []
    for directory, subdirectories, files in os.walk(path):
        subdirectories.sort()
        run = os.path.relpath(directory, path).replace(os.sep, "/")
        found += [(os.path.join(directory, name), run)
                  for name in sorted(files) if "tfevents" in name]
    return found


def check(paths, strict, tsv):
    try:
        files = [entry for path in paths for entry in event_files(path)]
    except OSError as e:
        sys.stderr.write("%s: %s\n" % (PROG, e))
        return 2
    if not files:
        sys.stderr.write("%s: no event files (names containing \"tfevents\") in %s\n"
                         % (PROG, ", ".join(paths)))
        return 2
    checker = Checker(tsv)
    for path, run in files:
        checker.check_file(path, run)
    sys.stdout.flush()
    failed = checker.errors > 0 or (strict and checker.warnings > 0)
    sys.stderr.write("%s: %s: %d file(s), %d record(s), %d value(s), %d error(s), "
                     "%d warning(s)%s\n"
                     % (PROG, "FAILED" if failed else "OK", checker.files, checker.records,
                        checker.values, checker.errors, checker.warnings,
                        " (errors under --strict)" if strict and checker.warnings else ""))
    return 1 if failed else 0


# ---- self test: hand-made records, then damage ----

def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, wire, payload):
    key = _varint(number << 3 | wire)
    if wire == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def _frame(payload):
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", masked_crc(length)) + payload
            + struct.pack("<I", masked_crc(payload)))


def selftest():
    import io
    import tempfile
    failures = []

    def expect(condition, what):
        if not condition:
            failures.append(what)

    expect(crc32c(b"123456789") == 0xE3069283, "crc32c check value")
    expect(crc32c(b"") == 0, "crc32c of nothing")
    expect(read_varint(b"\xff" * 9 + b"\x01", 0) == ((1 << 64) - 1, 10), "10-byte varint")
    for bad in (b"\xff" * 9 + b"\x02", b"\x80" * 11, b"\x80"):
        try:
            read_varint(bad, 0)
            failures.append("varint %r accepted" % bad)
        except Damage:
            pass
    try:
        list(read_fields(_varint(1 << 3 | 3)))
        failures.append("wire type 3 accepted")
    except Damage:
        pass

    version = _field(1, 1, struct.pack("<d", 1.5e9)) + _field(3, 2, b"brain.Event:2")
    scalar = (_field(1, 1, struct.pack("<d", 1.5e9 + 1)) + _field(2, 0, _varint((1 << 64) - 3))
              + _field(5, 2, _field(1, 2, _field(1, 2, b"loss")
                                    + _field(2, 5, struct.pack("<f", 0.25)))))
    tensor = _field(1, 0, _varint(2)) + _field(2, 2, b"") + _field(6, 2, struct.pack("<d", 0.1))
    tensor_event = (_field(1, 1, struct.pack("<d", 1.5e9 + 2)) + _field(2, 0, _varint(4))
                    + _field(5, 2, _field(1, 2, _field(1, 2, b"lr") + _field(8, 2, tensor))))
    data = _frame(version) + _frame(scalar) + _frame(tensor_event)
    boundaries = {0, len(_frame(version)), len(_frame(version) + _frame(scalar)), len(data)}

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "events.out.tfevents.selftest")

        def run(content, strict=True):
            with open(path, "wb") as f:
                f.write(content)
            stdout, stderr = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
            try:
                status = check([path], strict, True)
                return status, sys.stdout.getvalue(), sys.stderr.getvalue()
            finally:
                sys.stdout, sys.stderr = stdout, stderr

        status, out, err = run(data)
        expect(status == 0, "the good file: %s" % err)
        expect(out == ".\tloss\t-3\t1500000001.0\t0.25\n.\tlr\t4\t1500000002.0\t0.1\n",
               "the good file's values: %r" % out)
        for at in range(len(data)):
            damaged = bytearray(data)
            damaged[at] ^= 0x20
            if run(bytes(damaged))[0] != 1:
                failures.append("a flipped bit in byte %d passed" % at)
        for cut in range(1, len(data)):
            if (run(data[:cut], strict=False)[0] == 0) != (cut in boundaries):
                failures.append("the cut at byte %d" % cut)
        expect(run(_frame(scalar))[0] == 1, "no file_version record passes --strict")
        expect(run(_frame(scalar), strict=False)[0] == 0, "no file_version is only a warning")

    for failure in failures:
        sys.stderr.write("%s: selftest: FAILED: %s\n" % (PROG, failure))
    if not failures:
        sys.stderr.write("%s: selftest: OK\n" % PROG)
    return 1 if failures else 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=PROG, description="Check TensorBoard event files; exit 0 clean, 1 damaged "
        "(or warnings under --strict), 2 usage error or no event files.")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="an event file, or a directory searched for *tfevents* files")
    parser.add_argument("--tsv", action="store_true",
                        help="print run, tag, step, wall_time, value lines, tab-separated")
    parser.add_argument("--strict", action="store_true", help="warnings are errors")
    parser.add_argument("--selftest", action="store_true",
                        help="check this reader on hand-made records and damaged copies")
    args = parser.parse_args(argv)
    if args.selftest:
        return selftest()
    if not args.paths:
        parser.error("give a PATH, or --selftest")
    return check(args.paths, args.strict, args.tsv)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # stdout closed early (| head): quietly, not clean
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
