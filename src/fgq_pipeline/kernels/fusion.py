"""Epilogue fusion: a conv followed by a residual add and/or a ReLU runs as one node.

The tiled kernels apply the add and the ReLU while they store the conv's outputs (one pass over
memory instead of three); the other kernels apply them right after, with :mod:`.graph_ops`. The
float operations and their order are the graph's, so the values are the unfused graph's bit for bit.
The packed file keeps the plain graph: fusion is how :class:`~.integer_net.IntegerNet` runs it.
"""

from __future__ import annotations

from collections import Counter


def fuse_epilogues(graph: list[dict]) -> list[dict]:
    """The validated ``graph`` with each chain conv -> add -> relu, conv -> add or conv -> relu (every
    intermediate value read by the next node only) replaced by one conv node carrying ``residual``
    (the add's other input, a second entry of ``inputs``) and ``relu``, placed where the chain ended:
    there every input it reads is defined."""
    readers = Counter(name for node in graph for name in node["inputs"])
    reader_of = {name: index for index, node in enumerate(graph) for name in node["inputs"]}
    fused_at: dict[int, dict] = {}  # index of a chain's last node -> the fused node that replaces the chain
    absorbed: set[int] = set()
    for index, node in enumerate(graph):
        if node["op"] != "conv":
            continue
        fused, chain = {**node, "residual": False, "relu": False}, [index]
        follower = _sole_reader(node["output"], readers, reader_of, absorbed)
        if follower is not None and graph[follower]["op"] == "add" and len(set(graph[follower]["inputs"])) == 2:
            residual = next(name for name in graph[follower]["inputs"] if name != node["output"])
            fused.update(inputs=[*node["inputs"], residual], residual=True)
            chain.append(follower)
            follower = _sole_reader(graph[follower]["output"], readers, reader_of, absorbed)
        if follower is not None and graph[follower]["op"] == "relu":
            fused["relu"] = True
            chain.append(follower)
        if len(chain) > 1:
            fused["output"] = graph[chain[-1]]["output"]
            fused_at[chain[-1]] = fused
            absorbed.update(chain)
    return [fused_at.get(index, node) for index, node in enumerate(graph)
            if index in fused_at or index not in absorbed]


def _sole_reader(value: str, readers: Counter, reader_of: dict[str, int], absorbed: set[int]) -> int | None:
    """The index of the one node that reads ``value``, or None if none or several do, or if it is
    already part of another chain (an add of two convs goes to the first)."""
    index = reader_of.get(value) if readers[value] == 1 else None
    return None if index in absorbed else index
