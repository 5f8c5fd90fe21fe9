"""Figures drawn without plotting libraries: edge lists read as m2g and lite write them,
heatmap pixels that are the adjacency matrix, time-axis ticks."""

from __future__ import annotations

import struct
import zlib

import pytest

from ndmg_cloud.report.figures import (
    NO_EDGE,
    GraphError,
    colour_index,
    elapsed,
    heatmap,
    parse_connectome,
    time_ticks,
)


def decode_png(data: bytes) -> tuple[list[tuple[int, int, int]], list[list[int]]]:
    """(palette, rows of palette indices) of an 8-bit indexed, unfiltered PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour_type) == (8, 3)
    plte = chunks[b"PLTE"]
    palette = [tuple(plte[k : k + 3]) for k in range(0, len(plte), 3)]
    raw = zlib.decompress(chunks[b"IDAT"])
    rows = []
    for r in range(height):
        line = raw[r * (width + 1) : (r + 1) * (width + 1)]
        assert line[0] == 0  # no filter
        rows.append(list(line[1:]))
    return palette, rows


def data_uri_png(uri: str) -> bytes:
    import base64

    assert uri.startswith("data:image/png;base64,")
    return base64.b64decode(uri.split(",", 1)[1])


# m2g: networkx write_weighted_edgelist, node 0 = background (no edges), float weights
M2G_EDGES = b"1 2 5.0\n1 4 1.0\n2 3 120.0\n3 4 2.0\n4 4 3.0\n"
# lite: i < j, nodes from 0, integer streamline counts
LITE_EDGES = b"0 1 7\n0 2 1\n1 2 30\n2 5 2\n"


def test_m2g_edge_list_stats():
    graph = parse_connectome(M2G_EDGES)
    stats = graph.stats()
    assert stats == {
        "nodes": 4,  # nodes 1..4 (background 0 has no edges)
        "first_node": 1,
        "connected_nodes": 4,
        "edges": 5,
        "self_loops": 1,
        "density": round(4 / 6, 4),  # 4 edges between distinct nodes of 6 pairs
        "total_weight": 131,
        "max_weight": 120,
    }


def test_lite_edge_list_stats_and_heatmap_pixels_are_the_adjacency_matrix():
    graph = parse_connectome(LITE_EDGES)
    assert graph.stats()["nodes"] == 6 and graph.stats()["connected_nodes"] == 4
    assert graph.stats()["density"] == round(4 / 15, 4)
    drawn = heatmap(graph)
    assert (drawn.side, drawn.nodes_per_pixel, drawn.first_node, drawn.last_node) == (6, 1, 0, 5)
    palette, pixels = decode_png(drawn.png)
    assert palette[0] == NO_EDGE
    weights = {(i, j): w for i, j, w in graph.edges}
    for i in range(6):
        for j in range(6):
            w = weights.get((min(i, j), max(i, j)), 0)
            assert pixels[i][j] == colour_index(w, 30), (i, j)
            assert (pixels[i][j] == 0) == (w == 0)  # white exactly where there is no edge
    assert pixels[1][2] == 255 and pixels[1][2] > pixels[0][1] > pixels[2][5] > pixels[0][2] > 0
    assert palette[pixels[1][2]] == (253, 231, 37)  # the strongest edge: viridis' yellow


def test_the_pipelines_first_node_and_a_matrixs_size_set_the_node_count():
    assert parse_connectome(b"1 2 1\n").stats()["nodes"] == 2
    lite = parse_connectome(b"1 2 1\n", first_node=0)  # lite numbers nodes from 0
    assert (lite.stats()["nodes"], lite.stats()["density"], heatmap(lite).side) == (3, round(1 / 3, 4), 3)
    assert parse_connectome(M2G_EDGES, first_node=1).stats()["nodes"] == 4  # m2g: 0 is background
    matrix = parse_connectome(b"0 1 0 0\n1 0 0 0\n0 0 0 0\n0 0 0 0\n")  # isolated nodes 2, 3 count
    assert (matrix.stats()["nodes"], matrix.stats()["connected_nodes"], heatmap(matrix).side) == (4, 2, 4)


def test_large_graphs_are_binned():
    edges = "".join(f"{i} {i + 1} 1\n" for i in range(299)).encode()
    drawn = heatmap(parse_connectome(edges), max_pixels=100)
    assert (drawn.side, drawn.nodes_per_pixel) == (100, 3)
    _, pixels = decode_png(drawn.png)
    assert len(pixels) == 100 and all(len(r) == 100 for r in pixels)
    assert pixels[0][0] > 0 and pixels[0][1] > 0 and pixels[0][2] == 0  # a chain: near the diagonal only


def test_square_matrix_empty_and_garbage():
    # legacy ndmg's _adj.ssv: a dense matrix (upper triangle and diagonal kept)
    assert parse_connectome(b"0 2 0 0\n2 0 1 0\n0 1 4 0\n0 0 0 0\n").edges == [(0, 1, 2.0), (1, 2, 1.0), (2, 2, 4.0)]
    assert parse_connectome(b"3 1 2\n1 3 2\n2 1\n").edges == [(1, 2, 1.0), (1, 3, 2.0)]  # listed both ways: one edge
    assert parse_connectome(b"\n# comment\n").stats()["edges"] == 0
    assert heatmap(parse_connectome(b"")).side == 1
    with pytest.raises(GraphError, match="not numbers"):
        parse_connectome(b"1111111111 x\n")
    with pytest.raises(GraphError, match="binary"):
        parse_connectome(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(GraphError, match="neither"):
        parse_connectome(b"1 2 3 4\n5 6\n")


def test_time_axis_ticks_are_clock_times_at_round_elapsed_steps():
    start = 1795514400.0  # 2026-11-24 10:00:00 UTC
    ticks = time_ticks(start, start + 37 * 60)
    assert [t[0] for t in ticks] == [k * 300.0 for k in range(8)]
    assert ticks[0][1:] == ("10:00:00", "0") and ticks[1][1:] == ("10:05:00", "+5 min")
    assert len(time_ticks(start, start + 4.2)) == 5
    assert time_ticks(start, start + 3 * 86400)[1][1] == "11-24 22:00"  # 12-hour steps
    assert [elapsed(s) for s in (0, 45, 90, 3600, 5400, 93600)] == ["0", "+45 s", "+1 min 30 s", "+1 h", "+1 h 30 min", "+1 d 2 h"]
