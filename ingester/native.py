"""ClickHouse's Native format for a columnar insert, written a column at a time.

clickhouse-driver writes strings in C but arrays, nulls and offsets in Python, value by value:
with a dozen ``Array(String)`` columns (the key/value pairs that stand in for Map on 18.16) that
was more than half of the ingester's CPU per record. ``BulkInsertClient`` is the driver's
``Client`` with one method replaced, ``send_data``: the same packets, the same bytes, but each
column is packed whole (``array``/``struct`` for numbers, the driver's own C string writer for
strings, offsets with ``itertools.accumulate``).

Invariants:
- Byte for byte what clickhouse-driver 0.2 writes for the same columns and types
  (``tests/integration/ingester/test_native.py`` compares the two on the same batch).
- A value its column cannot hold raises the driver's ``TypeMismatchError`` (code 53) naming the
  column, before the block is complete, as the driver's writer does: never wrapped or rounded.
  Float32 goes through ``struct`` for that reason (``array('f')`` stores 1e39 as inf).
- Only plain column types are packed here (String, [U]Int8-64, Float32/64, DateTime as integer
  seconds, Nullable and Array of those); any other type the server names (LowCardinality on a
  newer server, nested arrays) is written by the driver's own column writer, so a server with a
  different schema still gets a correct block, only a slower one.
- Compressed connections go through the driver's block writer, numpy mode through the driver
  unchanged.
- A columnar insert may be a generator of blocks (each a list of columns): they go out one
  after another in the same INSERT, each written when the generator yields it, so the caller
  holds one block at a time while the server gathers them (``ClickHouseSink.insert_groups``).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate, chain
from types import GeneratorType
from typing import Any

from clickhouse_driver import Client, defines, errors
from clickhouse_driver.block import BlockInfo, ColumnOrientedBlock
from clickhouse_driver.columns.service import write_column
from clickhouse_driver.protocol import ClientPacketTypes
from clickhouse_driver.util.helpers import column_chunks
from clickhouse_driver.varint import write_varint
from clickhouse_driver.writer import write_binary_str, write_binary_uint8

__all__ = ["BulkInsertClient", "write_block"]

Writer = Any  # the driver's BufferedWriter (a Cython class, untyped)
Encoder = Callable[[Sequence[Any], Writer], None]

_SWAP = sys.byteorder != "little"  # Native is little-endian

_TYPECODES = {
    "UInt8": "B",
    "UInt16": "H",
    "UInt32": "I",
    "UInt64": "Q",
    "Int8": "b",
    "Int16": "h",
    "Int32": "i",
    "Int64": "q",
    "Float64": "d",
    "DateTime": "I",  # integer seconds only (the driver would also convert datetime objects)
}
_STRUCT_FORMATS = {"Float32": "f"}  # struct refuses what the type cannot hold; array does not
_NULL_VALUES: dict[str, Any] = {"String": ""}


def _array_encoder(typecode: str) -> Encoder:
    def encode(items: Sequence[Any], out: Writer) -> None:
        packed = array(typecode, items)
        if _SWAP:
            packed.byteswap()
        out.write(packed.tobytes())

    return encode


def _struct_encoder(code: str) -> Encoder:
    def encode(items: Sequence[Any], out: Writer) -> None:
        out.write(struct.pack(f"<{len(items)}{code}", *items))

    return encode


def _strings(items: Sequence[Any], out: Writer) -> None:
    if items.count("") == len(items):  # a column of empty strings (many are): one zero each
        out.write(bytes(len(items)))
    else:
        out.write_strings(items, encoding=defines.STRINGS_ENCODING)


def _scalar_encoder(spec: str) -> Encoder | None:
    if spec == "String":
        return _strings
    if spec in _TYPECODES:
        return _array_encoder(_TYPECODES[spec])
    if spec in _STRUCT_FORMATS:
        return _struct_encoder(_STRUCT_FORMATS[spec])
    return None


def _nullable_encoder(inner_spec: str) -> Encoder | None:
    inner = _scalar_encoder(inner_spec)
    if inner is None:
        return None
    null_value = _NULL_VALUES.get(inner_spec, 0)

    def encode(items: Sequence[Any], out: Writer) -> None:
        out.write(bytes([x is None for x in items]))
        inner([null_value if x is None else x for x in items], out)

    return encode


def _array_of_encoder(inner_spec: str) -> Encoder | None:
    inner = _scalar_encoder(inner_spec)
    if inner is None:
        return None

    def encode(items: Sequence[Any], out: Writer) -> None:
        sizes = list(map(len, items))
        if not any(sizes):  # every array empty (many columns are): offsets 0, no values
            out.write(bytes(8 * len(items)))
            return
        offsets = array("Q", accumulate(sizes))
        if _SWAP:
            offsets.byteswap()
        out.write(offsets.tobytes())
        inner(list(chain.from_iterable(items)), out)

    return encode


def _encoder(spec: str) -> Encoder | None:
    if spec.startswith("Nullable(") and spec.endswith(")"):
        return _nullable_encoder(spec[len("Nullable(") : -1])
    if spec.startswith("Array(") and spec.endswith(")"):
        return _array_of_encoder(spec[len("Array(") : -1])
    return _scalar_encoder(spec)


_ENCODERS: dict[str, Encoder | None] = {}


def _encoder_for(spec: str) -> Encoder | None:
    if spec not in _ENCODERS:
        _ENCODERS[spec] = _encoder(spec)
    return _ENCODERS[spec]


def write_block(
    out: Writer,
    context: Any,
    columns_with_types: Sequence[tuple[str, str]],
    columns: Sequence[Sequence[Any]],
) -> None:
    """One block in Native format (what the driver's ``BlockOutputStream.write`` writes),
    flushed. ``columns`` are as long as each other, one per ``columns_with_types``."""
    if len(columns) != len(columns_with_types):
        raise ValueError(f"Expected {len(columns_with_types)} columns, got {len(columns)}")
    n_rows = len(columns[0]) if columns else 0
    for column in columns:
        if len(column) != n_rows:
            raise ValueError(f"Expected {n_rows} rows, got {len(column)}")
    revision = context.server_info.used_revision
    if revision >= defines.DBMS_MIN_REVISION_WITH_BLOCK_INFO:
        BlockInfo().write(out)
    write_varint(len(columns), out)
    write_varint(n_rows, out)
    for (name, spec), items in zip(columns_with_types, columns, strict=True):
        write_binary_str(name, out)
        write_binary_str(spec, out)
        if revision >= defines.DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION:
            write_binary_uint8(0, out)  # no custom (sparse) serialization, as the driver does
        encode = _encoder_for(spec)
        if encode is None:
            write_column(context, name, spec, list(items), out)
        elif n_rows:
            try:
                encode(items, out)
            except (OverflowError, TypeError, struct.error) as exc:
                # the driver's own wording and error (code 53), naming the column
                raise errors.TypeMismatchError(
                    f"Type mismatch in VALUES section. Column {name} ({spec}): {exc}"
                ) from exc
    out.flush()


def _chunks(columns: Sequence[Sequence[Any]], step: int) -> Iterator[Sequence[Sequence[Any]]]:
    """``columns`` in blocks of at most ``step`` rows (itself when it fits)."""
    n_rows = len(columns[0]) if columns else 0
    if n_rows <= step:
        if n_rows:
            yield columns
        return
    for start in range(0, n_rows, step):
        yield [column[start : start + step] for column in columns]


class BulkInsertClient(Client):  # type: ignore[misc]  # the driver is untyped
    """``Client`` whose columnar inserts are packed by ``write_block`` (or, with ``bulk``
    off, by the driver's own block writer: to compare the two), and whose columnar insert
    may be a stream of blocks, sent in two halves so that another connection can send while
    the server writes this one's part (``ingester.sink.ClickHouseSink.insert_groups``)."""

    bulk = True

    def send_insert(self, query: str, blocks: Iterator[Sequence[Sequence[Any]]]) -> int:
        """The first half of a streamed insert: the query and each block as ``blocks`` yields
        it, then the end of the data; returns the rows sent. On any error the connection is
        dropped (as ``execute`` does)."""
        with self.disconnect_on_error(query, None):
            self.connection.send_query(query)
            self.connection.send_external_tables(None)
            sample_block = self.receive_sample_block()
            stream = (columns for columns in blocks)  # a generator: a stream of blocks
            return self.send_data(sample_block, stream, columnar=True)

    def end_insert(self) -> None:
        """The second half: the server's answer once it stored the rows (or its error)."""
        try:
            self.receive_end_of_insert_query()
        except BaseException:
            self.disconnect()
            raise

    def send_data(
        self,
        sample_block: Any,
        data: Any,
        types_check: bool = False,
        columnar: bool = False,
    ) -> int:
        connection = self.connection
        streamed = isinstance(data, GeneratorType)
        if not columnar or connection.context.client_settings["use_numpy"]:
            if streamed:
                raise TypeError("a stream of blocks is for columnar inserts without numpy")
            return int(super().send_data(sample_block, data, types_check, columnar))
        ours = self.bulk and not types_check and not connection.compression
        step = connection.context.client_settings["insert_block_size"]
        revision = connection.server_info.used_revision
        types = sample_block.columns_with_types
        rows = 0
        for columns in data if streamed else (data,):
            # the driver slices into lists for its own block writer
            slicer = _chunks if ours else column_chunks
            for chunk in slicer(columns, step):
                if ours:
                    write_varint(ClientPacketTypes.DATA, connection.fout)
                    if revision >= defines.DBMS_MIN_REVISION_WITH_TEMPORARY_TABLES:
                        write_binary_str("", connection.fout)  # the table name: none here
                    write_block(connection.fout, connection.context, types, chunk)
                else:
                    connection.send_data(ColumnOrientedBlock(types, chunk, types_check=types_check))
                self.receive_profile_events()
            rows += len(columns[0]) if columns else 0
        connection.send_data(ColumnOrientedBlock())  # an empty block ends the data
        self.receive_profile_events()
        return rows
