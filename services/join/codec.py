"""Conversions between the join's protobuf messages and its core types (one place)."""

from __future__ import annotations

from riskmesh.v1 import common_pb2, join_pb2
from services.join.core.columns import ColumnSpec
from services.join.core.errors import WireFormatError
from services.join.core.packing import SlotLayout
from services.join.core.paillier import PublicKey


def layout_to_proto(layout: SlotLayout) -> join_pb2.SlotLayout:
    return join_pb2.SlotLayout(
        fractional_bits=layout.fractional_bits,
        value_bits=layout.value_bits,
        sigma_bits=layout.sigma_bits,
        slot_bits=layout.slot_bits,
        slots_per_ciphertext=layout.slots_per_ciphertext,
        ciphertexts_per_row=layout.ciphertexts_per_row,
    )


def layout_from_proto(message: join_pb2.SlotLayout) -> SlotLayout:
    return SlotLayout(
        fractional_bits=message.fractional_bits,
        value_bits=message.value_bits,
        sigma_bits=message.sigma_bits,
        slot_bits=message.slot_bits,
        slots_per_ciphertext=message.slots_per_ciphertext,
        ciphertexts_per_row=message.ciphertexts_per_row,
    )


def public_key_to_proto(key: PublicKey) -> common_pb2.PaillierPublicKey:
    return common_pb2.PaillierPublicKey(n=key.to_bytes(), h_s=key.h_s_bytes(), key_id=key.key_id)


def public_key_from_proto(message: common_pb2.PaillierPublicKey) -> PublicKey:
    if not message.n or not message.h_s:
        raise WireFormatError("the Paillier public key is missing")
    return PublicKey.from_bytes(message.n, message.h_s, message.key_id or None)


def column_from_proto(message: common_pb2.ColumnSpec) -> ColumnSpec:
    return ColumnSpec(message.name, message.min, message.max)


def column_names(owner: common_pb2.OwnerColumns) -> tuple[str, ...]:
    """An owner's columns in slot order: features, then the target if it holds it."""
    names = [c.name for c in owner.features]
    if owner.HasField("target") and owner.target.name:
        names.append(owner.target.name)
    return tuple(names)
