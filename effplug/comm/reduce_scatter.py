"""The compressed reduce-scatter then all-gather that natural compression and CGX share."""

from __future__ import annotations

import logging

import torch

from effplug.codecs import SeedStream
from effplug.comm.base import GradientCompressor

log = logging.getLogger("effplug.comm")


class ReduceScatterAllGather(GradientCompressor):
    """Compressed reduce-scatter (all-to-all of encoded chunks, owner averages) then compressed all-gather.

    Every parameter is encoded on its own: padded to a multiple of ``world * chunk_multiple`` and split into
    one slice per rank, with random draws from its own seed stream (keyed by name, like top-k's residuals).
    So what a parameter's gradient becomes does not depend on which DDP bucket holds it, and a resumed run
    (whose first step uses DDP's initial buckets, not the rebuilt ones) repeats the uninterrupted run exactly.
    """

    chunk_multiple = 1
    agrees_on_nonfinite = True

    def __init__(self, seed: int | None, min_compress_size: int, compress_1d: bool):
        super().__init__(min_compress_size, compress_1d)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed={seed!r}: use an int, or None to derive it from the framework's seed")
        self.seed = seed

    # subclasses: ``self.codec`` (its seed streams keyed by parameter name); every parameter's ``parts`` equal
    # byte slices; one slice decoded; a slice's bytes
    def _encode_many(self, vectors: list[torch.Tensor], parts: int, keys: list[str]) -> list[list[torch.Tensor]]: ...

    def _decode_part(self, payload: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor: ...

    def _part_nbytes(self, numel: int) -> int: ...

    def _average_compressed(self, flat, segments, comm):
        world, rank = comm.world_size, comm.rank
        multiple = world * self.chunk_multiple
        layout, offset = [], 0  # (segment, offset in flat, slice length per rank)
        for seg in segments:
            layout.append((seg, offset, -(-seg.numel // multiple) * multiple // world))
            offset += seg.numel
        padded_segments = []
        for seg, start, length in layout:
            padded = flat.new_zeros(length * world)
            padded[:seg.numel] = flat[start:start + seg.numel]
            padded_segments.append(padded)
        self.codec.seeds.set_scope(f"rank{rank}")  # every rank draws its own streams
        keys = [s.key for s, _, _ in layout]
        encoded = self._encode_many(padded_segments, world, keys)
        send = torch.cat([parts[j] for j in range(world) for parts in encoded])
        received = comm.all_to_all(send).view(world, -1)
        sizes = [self._part_nbytes(length) for _, _, length in layout]
        parts = [row.split(sizes) for row in received]
        own = []  # this rank's slice of every parameter, averaged over ranks (rank order, as a ring would sum)
        for i, (_, _, length) in enumerate(layout):
            total = self._decode_part(parts[0][i], length, flat.dtype)
            for r in range(1, world):
                total = total + self._decode_part(parts[r][i], length, flat.dtype)
            own.append(total.div_(world))
        reencoded = [parts[0] for parts in self._encode_many(own, 1, keys)]
        gathered = [g.split(sizes) for g in comm.all_gather(torch.cat(reencoded))]
        out = []
        for i, (seg, _, length) in enumerate(layout):
            whole = torch.cat([self._decode_part(gathered[r][i], length, flat.dtype) for r in range(world)])
            out.append(whole[:seg.numel])
        return torch.cat(out)

    def state_dict(self) -> dict:
        return self.codec.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if not state:  # another world size (merge_rank_states): the streams restart
            return
        if "next_seed" in state:  # effplug before the codec core: {"next_seed": {name: position}}
            streams = state["next_seed"]
            if not isinstance(streams, dict):  # older still: one stream per rank, no way to map it
                log.warning("effplug.comm %s: this checkpoint keeps one seed stream per rank (an older effplug); "
                            "per-parameter streams restart", self.name)
                return
            self.codec.seeds.streams = {k: SeedStream.from_state({"next_seed": v}) for k, v in streams.items()}
            return
        self.codec.load_state_dict(state)
