"""The in-memory flag store of the unit tests (tests/integration/test_flag_store_contract.py
checks it against the control-table and SSM stores)."""

from __future__ import annotations

from dataclasses import replace

from livemigrate.flag import Flag, FlagConflict


class MemoryFlags:
    """A FlagStore in memory; ``script`` maps a read number to a flag to switch to."""

    def __init__(self, flag: Flag) -> None:
        self.flag = flag
        self.reads = 0
        self.script: dict[int, Flag] = {}

    def read(self) -> Flag:
        self.reads += 1
        self.flag = self.script.get(self.reads, self.flag)
        return self.flag

    def write(self, new: Flag, expected_epoch: int) -> Flag:
        if self.flag.epoch != expected_epoch:
            raise FlagConflict("stale epoch")
        self.flag = replace(new, epoch=expected_epoch + 1)
        return self.flag


INITIAL = Flag("source", "orders", source_table="orders", destination_table="orders_v2")
