"""Transports: one adapter per channel behind one small interface (send bytes + metadata)."""

from meldingstjener.transport.base import Delivery, Transport, TransportFailure, TransportResult

__all__ = ["Delivery", "Transport", "TransportFailure", "TransportResult"]
