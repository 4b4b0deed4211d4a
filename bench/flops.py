"""FLOP accounting of the dense CNN pass: work done, work needed, and the machine's peak.

FLOPs follow ``noduleflow.trainer.models.summary``: 2 x the multiply-adds of the
convolutions (a multiply-add is 2 FLOPs); pooling, activations, crops and concatenations
count 0. A convolution's cost is ``2 * kz*ky*kx * Cin/group * Cout`` per output position,
over every position it computes, including positions a later crop or floor pooling discards.

- `layers_from_onnx`: the spatial layers of a dense graph (Conv, MaxPool/AveragePool, Slice
  crops, Concat/Add joins) in graph order, enough to map output regions back to input regions.
- `region_flops`: FLOPs of one dense output block (the graph run on the smallest input giving it).
- `work_done`: FLOPs of what `engine.scoring.score_dense` runs for a set of candidate centres: one
  graph run per tile on the bounding box of the tile's output points (the engine's own tiling,
  `engine.scoring.dense_tiles`).
- `needed_work`: FLOPs of only what the needed output points require, each layer's positions
  computed once however many needed points share them.
- `peak`: float32 FLOP/s of a large numpy matmul and of a 64 -> 64 3^3 convolution (and the dense
  graph's heaviest, when it differs) in ONNX Runtime and OpenVINO, measured now; `accounting` sets
  achieved FLOP/s against them.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from noduleflow.engine.errors import ConfigError
from noduleflow.engine.scoring import dense_tiles

# ops that keep every spatial position where it is (elementwise, per position across channels)
POINTWISE = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Erf", "Mish", "Clip", "Identity", "Dropout", "Cast", "BatchNormalization",
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal",
    "Pow", "Floor", "Ceil", "Round", "Sign", "Not", "Equal", "Greater", "Less", "Where"})
# ops that act along one axis: accepted when it is not a spatial one
AXIS_OPS = frozenset({"Gather", "Squeeze", "Unsqueeze", "Softmax", "LogSoftmax"})
POOLS = frozenset({"MaxPool", "AveragePool"})
_INT64_MAX = 2 ** 63 - 1


@dataclass(frozen=True)
class Layer:
    """One spatial layer: ``op`` is "Conv", "MaxPool", "AveragePool", "Slice" (a crop: drops
    ``crop_begin`` voxels at the start of each axis and keeps up to ``crop_end``, an ONNX end
    index, None when it is computed at run time) or "Concat"/"Add" (a join of equally sized
    inputs). ``inputs``/``output``: tensor names, after size-keeping ops are looked through.
    Per-axis tuples are (z, y, x); ``pads`` are (begin zyx, end zyx)."""
    op: str
    name: str
    inputs: tuple[str, ...]
    output: str
    kernel: tuple[int, int, int] = (1, 1, 1)
    stride: tuple[int, int, int] = (1, 1, 1)
    dilation: tuple[int, int, int] = (1, 1, 1)
    pads: tuple[tuple[int, int, int], tuple[int, int, int]] = ((0, 0, 0), (0, 0, 0))
    ceil_mode: bool = False
    crop_begin: tuple[int, int, int] = (0, 0, 0)
    crop_end: tuple[int | None, int | None, int | None] = (None, None, None)
    cin: int = 0
    cout: int = 0
    group: int = 1

    @property
    def flops_per_position(self) -> int:
        """FLOPs per output position: 2 * k^3 * Cin/group * Cout for a Conv, 0 otherwise."""
        if self.op != "Conv":
            return 0
        return 2 * int(np.prod(self.kernel)) * (self.cin // self.group) * self.cout


@dataclass(frozen=True)
class DenseLayers:
    """The spatial layers of a dense graph in graph order (a producer before its consumers);
    ``input``/``output``: the names of the graph's image input and of the tensor its output is
    read from. ``tile``: the dense contract's (patch size, stride) when known (`layers_from_onnx`'s
    ``contract``): the input the engine feeds for n output points is then (n - 1) stride + patch
    (`input_shape_for`). Iterates over the layers."""
    layers: tuple[Layer, ...]
    input: str
    output: str
    source: str = field(default="", compare=False)
    tile: tuple[int, int] | None = field(default=None, compare=False)

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    @property
    def convs(self) -> tuple[Layer, ...]:
        return tuple(x for x in self.layers if x.op == "Conv")


# -- reading the graph ------------------------------------------------------------------------------
def layers_from_onnx(path, contract=None) -> DenseLayers:
    """The spatial layers of the dense graph at ``path`` (an ONNX file, (N, C, D, H, W) input);
    ``contract`` (the package's `InputContract`, optional): its patch size and dense stride set the
    input that `input_shape_for` takes for an output block, the engine's tile.

    Tensors computed from the image input are followed through the graph; ops that keep every
    position (`POINTWISE`, and `AXIS_OPS` on a non-spatial axis) are looked through; Conv,
    MaxPool/AveragePool, Slice (constant starts >= 0, step 1 on spatial axes), Concat on a
    non-spatial axis and Add/Sum/... of two image tensors become layers. Shape arithmetic (Shape
    and what is computed from it) is skipped; a Slice whose ends are computed at run time (the
    dense graphs' leading trim to (n - patch) // stride * stride + patch) is taken to keep every
    voxel from its start on, which it does on the tiles the engine feeds ((n - 1) stride + patch).
    Any other op on an image tensor (ConvTranspose,
    Resize, Pad, Reshape, global pooling, ...) or an unsupported setting (auto_pad, a spatial
    step) is a ConfigError naming the op."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    where = path.name
    const = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    dims = {i.name: tuple(i.dims) for i in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in const]
    if not graph_inputs:
        raise ConfigError(f"{where}: the graph has no input")
    image = graph_inputs[0]
    rank0 = len(image.type.tensor_type.shape.dim)
    if rank0 != 5:
        raise ConfigError(f"{where}: input {image.name!r} has rank {rank0}, not (N, C, D, H, W)")
    rank = {image.name: 5}  # image tensors -> rank; spatial axes are the last three
    alias = {image.name: image.name}  # image tensor -> the layer output (or input) it equals spatially
    layers: list[Layer] = []

    def attrs(node):
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def value(name):
        return None if name == "" else const.get(name)

    def spatial_axis(axis, r):
        a = int(axis) + r if int(axis) < 0 else int(axis)
        return a >= r - 3

    def refuse(node, why):
        raise ConfigError(f"{where}: op {node.op_type} ({node.name or node.output[0]}) {why}; "
                          "bench.flops handles Conv, MaxPool/AveragePool, crops, joins and position-wise ops")

    for node in g.node:
        op, a = node.op_type, attrs(node)
        if op == "Constant":
            if "value" in a:
                const[node.output[0]] = numpy_helper.to_array(a["value"])
            elif "value_ints" in a or "value_int" in a:
                const[node.output[0]] = np.asarray(a.get("value_ints", a.get("value_int")), np.int64)
            continue
        img = [x for x in node.input if x in rank]
        if not img:
            continue  # weights, constants, shape arithmetic
        if op in ("Shape", "Size"):
            continue  # a shape, not an image
        out, r = node.output[0], rank[img[0]]
        if op == "Conv" or op in POOLS:
            if node.input[0] not in rank or len(img) != 1:
                refuse(node, "takes a computed tensor as weights")
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
                refuse(node, f"uses auto_pad {a['auto_pad']!r}")
            cin = cout = 0
            if op == "Conv":
                w = dims.get(node.input[1]) or (tuple(const[node.input[1]].shape) if node.input[1] in const
                                                  else None)
                if w is None:
                    refuse(node, "has weights that are not a constant")
                kernel = tuple(a.get("kernel_shape", w[2:]))
                group = int(a.get("group", 1))
                cin, cout = int(w[1]) * group, int(w[0])
            else:
                kernel, group = tuple(a["kernel_shape"]), 1
            if len(kernel) != 3 or r != 5:
                refuse(node, f"is not 3-D (kernel {kernel}, rank {r})")
            pads = tuple(int(v) for v in a.get("pads", (0,) * 6))
            layers.append(Layer(op=op, name=node.name or out, inputs=(alias[node.input[0]],), output=out,
                                kernel=tuple(int(k) for k in kernel),
                                stride=tuple(int(v) for v in a.get("strides", (1, 1, 1))),
                                dilation=tuple(int(v) for v in a.get("dilations", (1, 1, 1))),
                                pads=(pads[:3], pads[3:]), ceil_mode=bool(a.get("ceil_mode", 0)),
                                cin=cin, cout=cout, group=group))
            rank[out], alias[out] = 5, out
        elif op == "Slice":
            if node.input[0] not in rank or len(img) != 1:
                refuse(node, "slices with computed bounds of an image tensor")
            if len(node.input) > 1:  # opset >= 10: starts, ends, axes, steps as inputs
                starts, ends = value(node.input[1]), value(node.input[2])
                axes = value(node.input[3]) if len(node.input) > 3 else None
                steps = value(node.input[4]) if len(node.input) > 4 else None
                if len(node.input) > 3 and node.input[3] and axes is None or \
                        len(node.input) > 4 and node.input[4] and steps is None:
                    refuse(node, "has axes or steps computed at run time")
            else:
                starts, ends, axes, steps = a.get("starts"), a.get("ends"), a.get("axes"), None
            if starts is None:
                refuse(node, "has starts computed at run time")
            starts = np.atleast_1d(starts).astype(np.int64)
            axes = np.arange(len(starts)) if axes is None else np.atleast_1d(axes).astype(np.int64)
            steps = np.ones(len(starts), np.int64) if steps is None else np.atleast_1d(steps).astype(np.int64)
            ends_v = None if ends is None else np.atleast_1d(ends).astype(np.int64)
            begin, end = [0, 0, 0], [None, None, None]
            for j, ax in enumerate(axes):
                if not spatial_axis(ax, r):
                    continue
                s = int(ax) % r - (r - 3)
                if steps[j] != 1 or starts[j] < 0:
                    refuse(node, f"slices spatial axis {int(ax)} with start {int(starts[j])}, step {int(steps[j])}")
                begin[s] = int(starts[j])
                end[s] = None if ends_v is None or int(ends_v[j]) >= _INT64_MAX // 2 else int(ends_v[j])
            if begin == [0, 0, 0] and end == [None, None, None]:
                rank[out], alias[out] = r, alias[node.input[0]]
            else:
                layers.append(Layer(op="Slice", name=node.name or out, inputs=(alias[node.input[0]],), output=out,
                                    crop_begin=tuple(begin), crop_end=tuple(end)))
                rank[out], alias[out] = r, out
        elif op == "Concat":
            if spatial_axis(a.get("axis", 0), r):
                refuse(node, f"concatenates along spatial axis {a.get('axis')}")
            if len(img) == 1:
                rank[out], alias[out] = r, alias[img[0]]
            else:
                layers.append(Layer(op="Concat", name=node.name or out, inputs=tuple(alias[x] for x in img),
                                    output=out))
                rank[out], alias[out] = r, out
        elif op in POINTWISE:
            if len({rank[x] for x in img}) != 1:
                refuse(node, "mixes image tensors of different ranks")
            srcs = tuple(dict.fromkeys(alias[x] for x in img))
            if len(srcs) == 1:
                rank[out], alias[out] = r, srcs[0]
            else:
                layers.append(Layer(op="Add", name=node.name or out, inputs=srcs, output=out))
                rank[out], alias[out] = r, out
        elif op in AXIS_OPS:
            if node.input[0] not in rank or len(img) != 1:
                refuse(node, "indexes with an image tensor")
            if op == "Gather":
                idx = value(node.input[1])
                if idx is None:
                    refuse(node, "gathers with indices computed at run time")
                ax = a.get("axis", 0)
                if spatial_axis(ax, r):
                    refuse(node, f"gathers along spatial axis {ax}")
                new_r = r - 1 + np.ndim(idx)
            elif op in ("Squeeze", "Unsqueeze"):
                ax = a.get("axes") if "axes" in a else value(node.input[1]) if len(node.input) > 1 else None
                if ax is None:
                    refuse(node, "has axes computed at run time or none")
                ax = np.atleast_1d(ax)
                new_r = r - len(ax) if op == "Squeeze" else r + len(ax)
                check_r = r if op == "Squeeze" else new_r
                if any(spatial_axis(v, check_r) for v in ax):
                    refuse(node, f"changes spatial axes {ax.tolist()}")
            else:
                if spatial_axis(a.get("axis", -1), r):
                    refuse(node, f"normalises along spatial axis {a.get('axis', -1)}")
                new_r = r
            if new_r < 3:
                refuse(node, f"leaves rank {new_r}")
            rank[out], alias[out] = new_r, alias[node.input[0]]
        else:
            refuse(node, "reads an image tensor and may change its spatial size or mix positions")
        for extra in node.output[1:]:  # e.g. MaxPool's indices, Dropout's mask: not followed
            rank.pop(extra, None)
    outs = [o.name for o in g.output if o.name in alias]
    if not outs:
        raise ConfigError(f"{where}: no graph output is computed from the input {image.name!r}")
    if not any(x.op == "Conv" for x in layers):
        raise ConfigError(f"{where}: no Conv on the path from the input to the output")
    tile = (int(contract.patch_size), int(contract.dense_stride)) if contract is not None and contract.dense_stride \
        else None
    return DenseLayers(tuple(layers), image.name, alias[outs[0]], str(path), tile)


# -- geometry (per axis; every handled layer acts on each spatial axis separately) ----------------------
def _arr(v) -> np.ndarray:
    return np.asarray(v, dtype=np.int64)


def _layer_out(layer: Layer, n_in: list[np.ndarray]) -> np.ndarray:
    """Output size (3,) of ``layer`` on inputs of sizes ``n_in``; entries < 1 mean no output."""
    n = n_in[0]
    if layer.op == "Conv" or layer.op in POOLS:
        k, s, d = _arr(layer.kernel), _arr(layer.stride), _arr(layer.dilation)
        span = n + _arr(layer.pads[0]) + _arr(layer.pads[1]) - d * (k - 1) - 1
        q = -((-span) // s) if layer.ceil_mode else span // s
        return np.where(span >= 0, q + 1, 0)
    if layer.op == "Slice":
        b = np.minimum(_arr(layer.crop_begin), n)
        e = np.array([n[i] if v is None else (v + n[i] if v < 0 else v) for i, v in enumerate(layer.crop_end)])
        return np.maximum(np.clip(e, 0, n) - b, 0)
    return np.min(np.stack(n_in), axis=0)  # joins: equal sizes (checked by the caller)


def _forward(graph: DenseLayers, in_shape, strict: bool = True) -> dict[str, np.ndarray]:
    """Spatial size of every tensor when the graph runs on ``in_shape``."""
    sizes = {graph.input: _arr(in_shape)}
    for layer in graph:
        n_in = [sizes[x] for x in layer.inputs]
        out = _layer_out(layer, n_in)
        if strict:
            if len(n_in) > 1 and any((x != n_in[0]).any() for x in n_in):
                raise ConfigError(f"{layer.op} {layer.name} joins sizes {[x.tolist() for x in n_in]} on a "
                                  f"{list(in_shape)} input")
            if (out < 1).any():
                raise ConfigError(f"{layer.op} {layer.name} has no output on a {list(in_shape)} input")
        sizes[layer.output] = out
    return sizes


def _smallest_input(graph: DenseLayers, want: np.ndarray) -> np.ndarray:
    """Per axis, the smallest input on which the graph gives at least ``want`` output points."""
    def out(n):  # non-decreasing in n
        return _forward(graph, n, strict=False)[graph.output]

    hi = np.ones(3, np.int64)
    while (out(hi) < want).any():
        hi = np.where(out(hi) < want, hi * 2, hi)
        if (hi > 1 << 24).any():
            raise ConfigError(f"no input gives a {want.tolist()} output")
    lo = np.zeros(3, np.int64)  # out(lo) < want <= out(hi)
    while (hi - lo > 1).any():
        mid = (lo + hi) // 2
        ok = out(mid) >= want
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return hi


def input_shape_for(graph: DenseLayers, out_shape_zyx) -> np.ndarray:
    """The input (3,) the graph runs on for an ``out_shape_zyx`` output block: with the graph's
    contract (``graph.tile``), (n - 1) stride + patch per axis, the tile `engine.scoring.score_dense` feeds
    (checked to give exactly that block); without it, the largest input giving exactly that block
    (for 3D-1 the same tile: its floor poolings give the same block on a few voxels less, which it
    would not read; a network whose receptive field is shorter than the patch, as 3D-E's, gives the
    block on up to stride - 1 voxels more, so pass the contract)."""
    want = _arr(out_shape_zyx)
    if want.shape != (3,) or (want < 1).any():
        raise ConfigError(f"output block must be 3 sizes >= 1, got {out_shape_zyx!r}")
    if graph.tile is not None:
        patch, stride = graph.tile
        n = (want - 1) * stride + patch
    else:
        n = _smallest_input(graph, want + 1) - 1
    got = _forward(graph, n, strict=False)[graph.output]
    if (got != want).any():
        raise ConfigError(f"no input gives a {want.tolist()} output (nearest {got.tolist()})")
    return n


def layer_flops(graph: DenseLayers, in_shape_zyx) -> dict[str, int]:
    """FLOPs of each Conv (by layer name) when the graph runs once on an ``in_shape_zyx`` input."""
    sizes = _forward(graph, in_shape_zyx)
    return {x.name: x.flops_per_position * int(np.prod(sizes[x.output])) for x in graph.convs}


def block_flops(graph: DenseLayers, in_shape_zyx) -> int:
    """FLOPs of one graph run on an ``in_shape_zyx`` input."""
    return int(sum(layer_flops(graph, in_shape_zyx).values()))


def region_flops(graph: DenseLayers, out_shape_zyx) -> int:
    """FLOPs of computing a dense output block of ``out_shape_zyx`` points: the graph run once on
    the smallest input giving that block (`input_shape_for`; for the dense graphs (n - 1) stride +
    patch per axis), each layer's block the size the graph gives it. Convolutions only, at 2 FLOPs
    per multiply-add over every position each computes; pooling and activations count 0.
    (1, 1, 1): the per-patch FLOPs."""
    return block_flops(graph, input_shape_for(graph, out_shape_zyx))


# -- the engine's tiles ---------------------------------------------------------------------------------
def work_done(graph: DenseLayers, contract, centres_zyx, volume_shape, tile_out: int) -> int:
    """FLOPs `engine.scoring.score_dense` runs for ``centres_zyx`` on a ``volume_shape`` lung box: the
    sum over its tiles (`dense_tiles`) of one graph run on the tile's input box, i.e. every
    output point of each tile's bounding box and each tile's own halo, overlaps with neighbouring
    tiles computed again."""
    total, cache = 0, {}
    for _, o0, o1, a0, a1 in dense_tiles(contract, centres_zyx, volume_shape, tile_out):
        shape = tuple(int(v) for v in a1 - a0)
        if shape not in cache:
            got = _forward(graph, shape)[graph.output]
            if (got != o1 - o0).any():
                raise ConfigError(f"the graph gives {got.tolist()} points on a {list(shape)} tile; the contract "
                                  f"says {(o1 - o0).tolist()}")
            cache[shape] = block_flops(graph, shape)
        total += cache[shape]
    return int(total)


# -- needed work: occupancy propagated backwards ----------------------------------------------------------------
def _interval_back(layer: Layer, lo: np.ndarray, hi: np.ndarray, n_in: np.ndarray):
    """Input positions [lo', hi') the layer reads for output positions [lo, hi), clipped to the input."""
    if layer.op == "Conv" or layer.op in POOLS:
        s, d, k, pb = _arr(layer.stride), _arr(layer.dilation), _arr(layer.kernel), _arr(layer.pads[0])
        a, b = s * lo - pb, s * (hi - 1) - pb + d * (k - 1) + 1
    elif layer.op == "Slice":
        a, b = lo + _arr(layer.crop_begin), hi + _arr(layer.crop_begin)
    else:
        a, b = lo, hi
    return np.clip(a, 0, n_in), np.clip(b, 0, n_in)


def _slack(graph: DenseLayers) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tensor, the positions one patch's run computes but none of the tensor's consumers read
    (before, after; per axis): what a crop or a floor pooling throws away."""
    sizes = _forward(graph, input_shape_for(graph, (1, 1, 1)))
    reads: dict[str, tuple[np.ndarray, np.ndarray]] = {graph.output: (np.zeros(3, np.int64), sizes[graph.output])}
    for layer in reversed(graph.layers):
        for x in layer.inputs:
            a, b = _interval_back(layer, np.zeros(3, np.int64), sizes[layer.output], sizes[x])
            if x in reads:
                a, b = np.minimum(a, reads[x][0]), np.maximum(b, reads[x][1])
            reads[x] = (a, b)
    return {t: (a, sizes[t] - b) for t, (a, b) in reads.items()}


def _or_shifted(dst: np.ndarray, src: np.ndarray, axis: int, start: int, step: int) -> None:
    """dst[start + step * j] |= src[j] along ``axis`` (indices outside dst dropped)."""
    n_src, n_dst = src.shape[axis], dst.shape[axis]
    j0 = 0 if start >= 0 else (-start + step - 1) // step
    j1 = min(n_src, (n_dst - 1 - start) // step + 1)
    if j1 <= j0:
        return
    d = [slice(None)] * dst.ndim
    sidx = [slice(None)] * src.ndim
    d[axis] = slice(start + step * j0, start + step * (j1 - 1) + 1, step)
    sidx[axis] = slice(j0, j1)
    dst[tuple(d)] |= src[tuple(sidx)]


def _occ_back(layer: Layer, occ: np.ndarray, n_in: np.ndarray) -> np.ndarray:
    """Input positions (bool, ``n_in``) the layer reads for the output positions ``occ``."""
    if layer.op == "Conv" or layer.op in POOLS:
        cur = occ
        for ax in range(3):  # a box kernel: one axis at a time
            shape = list(cur.shape)
            shape[ax] = int(n_in[ax])
            nxt = np.zeros(shape, bool)
            for i in range(layer.kernel[ax]):
                _or_shifted(nxt, cur, ax, layer.dilation[ax] * i - layer.pads[0][ax], layer.stride[ax])
            cur = nxt
        return cur
    out = np.zeros(tuple(int(v) for v in n_in), bool)
    if layer.op == "Slice":
        b = layer.crop_begin
        out[b[0]:b[0] + occ.shape[0], b[1]:b[1] + occ.shape[1], b[2]:b[2] + occ.shape[2]] = occ
        return out
    out[...] = occ
    return out


def _dilate(occ: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Each position of ``occ`` widened by ``before``/``after`` positions per axis (clipped)."""
    for ax in range(3):
        if before[ax] == 0 and after[ax] == 0:
            continue
        src, occ = occ, occ.copy()
        for t in range(-int(before[ax]), int(after[ax]) + 1):
            if t:
                _or_shifted(occ, src, ax, t, 1)
    return occ


def needed_layer_flops(graph: DenseLayers, out_occupancy: np.ndarray, discarded: bool = True) -> dict[str, int]:
    """Per Conv (by name): FLOPs of the positions needed for the True points of the dense output
    block ``out_occupancy`` (bool (d, h, w)), each counted once.

    Walking the layers backwards, each tensor's needed positions are the union over its consumers
    of the positions they read for theirs (a Conv or pooling: every kernel tap of each needed
    output position, through its stride; a crop: shifted by its start). ``discarded`` True: each
    tensor's needed positions also take in, around each one, the positions one patch's run
    computes there and then discards (a crop's margins, the rows a floor pooling leaves): what the
    graph itself computes for the needed points, so one point costs exactly `region_flops` (1, 1, 1)
    and a full block exactly its `region_flops`. False: receptive fields only, the least any graph
    with these layers could compute."""
    occ_out = np.asarray(out_occupancy, bool)
    sizes = _forward(graph, input_shape_for(graph, occ_out.shape))
    if tuple(sizes[graph.output]) != occ_out.shape:
        raise ConfigError(f"output block {occ_out.shape} does not match the graph ({sizes[graph.output].tolist()})")
    slack = _slack(graph) if discarded else {}
    occ = {graph.output: occ_out}
    out = {}
    for layer in reversed(graph.layers):
        o = occ.pop(layer.output, None)
        if o is None:
            o = np.zeros(tuple(sizes[layer.output]), bool)
        if layer.output in slack:
            o = _dilate(o, *slack[layer.output])
        if layer.op == "Conv":
            out[layer.name] = layer.flops_per_position * int(np.count_nonzero(o))
        for x in layer.inputs:
            if x == graph.input:
                continue
            b = _occ_back(layer, o, sizes[x])
            occ[x] = b if x not in occ else occ[x] | b
    return out


def _grid_block(contract, centres_zyx, volume_shape):
    """Output-grid indices of ``centres_zyx`` -> (block origin (3,), bool block with them True)."""
    s, off = contract.dense_stride, contract.dense_offset
    n_out = np.asarray(contract.dense_output_shape(np.asarray(volume_shape)))
    idx = (np.asarray(centres_zyx, dtype=np.int64).reshape(-1, 3) - off) // s
    if not len(idx):
        return None
    if (idx < 0).any() or (idx >= n_out).any():
        raise ConfigError(f"centres outside the dense output grid {n_out.tolist()} (see engine.scoring.grid_centres)")
    o0 = idx.min(0)
    block = np.zeros(tuple(idx.max(0) - o0 + 1), bool)
    local = idx - o0
    block[local[:, 0], local[:, 1], local[:, 2]] = True
    return o0, block


def needed_work(graph: DenseLayers, contract, centres_zyx, volume_shape, discarded: bool = True) -> int:
    """FLOPs of only what the output points of ``centres_zyx`` need (`needed_layer_flops` on
    their block of the output grid): each layer's needed positions counted once, however many
    points share them; no tile halo computed twice, no point outside the set. With the default
    ``discarded`` True, needed <= `work_done` whatever the tiling, one point costs the per-patch
    FLOPs and a full block its `region_flops`."""
    got = _grid_block(contract, centres_zyx, volume_shape)
    if got is None:
        return 0
    return int(sum(needed_layer_flops(graph, got[1], discarded).values()))


# -- the machine's peak ------------------------------------------------------------------------------------------
def heaviest_conv(graph: DenseLayers, block_out: int = 24) -> Layer:
    """The Conv with the most FLOPs in a dense ``block_out``^3 output block (the engine's default
    tile)."""
    per = layer_flops(graph, input_shape_for(graph, (block_out,) * 3))
    return max(graph.convs, key=lambda x: per[x.name])


def _conv_model(layer: Layer, side: int, rng):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (rng.standard_normal((layer.cout, layer.cin // layer.group, *layer.kernel)) * 0.05).astype(np.float32)
    b = np.zeros(layer.cout, np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(layer.kernel),
                            strides=list(layer.stride), dilations=list(layer.dilation),
                            pads=list(layer.pads[0]) + list(layer.pads[1]), group=layer.group)
    out = [int(v) for v in _layer_out(layer, [_arr((side,) * 3)])]
    g = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                        [1, layer.cin, side, side, side])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, layer.cout, *out])],
                          initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _best_of(fn, budget_s: float, max_runs: int = 20) -> float:
    """Shortest time of ``fn()``: at least one run, more while the budget lasts."""
    best, t_start = math.inf, time.perf_counter()
    for _ in range(max_runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - t_start + best > budget_s:
            break
    return best


def _blas_threads():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    n = [i.get("num_threads") for i in threadpool_info() if i.get("user_api") == "blas"]
    return n[0] if n else None


# The machine's reference convolution: 64 -> 64 channels, 3^3 (3D-1's heaviest layer, fc1). The conv3d
# peak is measured on it whatever the graph, so that a network of narrower layers is not set
# against a lower peak than a wider one (and runs stay comparable across models).
REFERENCE_CONV = Layer("Conv", "reference 64->64 3^3", ("x",), "y", kernel=(3, 3, 3), cin=64, cout=64)


def _same_conv(a: Layer, b: Layer) -> bool:
    return (a.cin, a.cout, a.kernel, a.stride, a.dilation, a.group, a.pads) == \
        (b.cin, b.cout, b.kernel, b.stride, b.dilation, b.group, b.pads)


def peak(seconds_budget: float = 8.0, graph: DenseLayers | None = None, *, matmul_n: int = 4096,
         conv_side: int = 48, threads: int | None = None) -> dict:
    """The machine's practical float32 peak, measured now, in about ``seconds_budget`` (a part per
    measurement; each runs at least once after a warm-up, then again while its part lasts, best kept):

    - matmul: numpy ``matmul_n`` x ``matmul_n`` @ ``matmul_n`` x ``matmul_n`` float32 (2 n^3 FLOPs);
    - conv3d: one Conv node on a (1, Cin, ``conv_side``^3) input, random weights (FLOPs as
      `Layer.flops_per_position`), in ONNX Runtime with the engine's CPU session options and, when
      installed, in OpenVINO's CPU plugin in float32 (the same threads): the reference convolution
      (`REFERENCE_CONV`, 64 -> 64 channels, 3^3) and, when its shape differs, the dense graph's
      heaviest convolution (`heaviest_conv`); the fastest figure is the conv3d peak, each runtime's
      best kept;
    - conv3d in bfloat16 (``conv3d_bf16_gflops``): the conv3d peak's Conv in OpenVINO with its bf16
      arithmetic, where the CPU has it (else None): the peak for ``--precision bf16``.

    ``graph``: default the shipped model's dense.onnx. ``threads``: ONNX Runtime intra-op threads
    (default all cores, as the engine). -> GFLOP/s of both, the threads used, the conv described."""
    import onnxruntime as ort

    from noduleflow.engine.backends.onnxruntime import session_options

    if graph is None:
        from noduleflow.engine.package import default_package_path

        graph = layers_from_onnx(Path(default_package_path()) / "dense.onnx")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    has_ov = importlib.util.find_spec("openvino") is not None
    has_bf16 = False
    if has_ov:
        from noduleflow.engine.backends.openvino import cpu_capabilities

        has_bf16 = "BF16" in cpu_capabilities()
    heaviest = heaviest_conv(graph)
    layers = [heaviest] if _same_conv(heaviest, REFERENCE_CONV) else [REFERENCE_CONV, heaviest]
    part = max(float(seconds_budget), 0.0) / (1 + len(layers) * (1 + has_ov) + has_bf16)  # a part per measurement
    a = rng.standard_normal((matmul_n, matmul_n), dtype=np.float32)
    b = rng.standard_normal((matmul_n, matmul_n), dtype=np.float32)
    c = np.empty_like(a)
    np.matmul(a[:256, :256], b[:256, :256])  # BLAS threads up
    t_mm = _best_of(functools.partial(np.matmul, a, b, out=c), part)
    del a, b, c
    so = session_options(threads)
    core = None
    if has_ov:
        import openvino as ov

        core = ov.Core()
    by_runtime, convs = {}, []
    for layer in layers:
        conv_onnx = _conv_model(layer, conv_side, rng).SerializeToString()  # one graph, both runtimes
        sess = ort.InferenceSession(conv_onnx, sess_options=so, providers=["CPUExecutionProvider"])
        x = rng.uniform(size=(1, layer.cin, conv_side, conv_side, conv_side)).astype(np.float32)
        y = sess.run(None, {"x": x})[0]  # warm-up: allocations, kernel choice
        conv_flops = layer.flops_per_position * int(np.prod(y.shape[2:]))
        t_conv = _best_of(lambda sess=sess, x=x: sess.run(None, {"x": x}), part)
        rates = {"onnxruntime": conv_flops / t_conv / 1e9}
        if has_ov:  # the other CPU backend: the faster one is the peak
            model = core.read_model(conv_onnx, b"")

            def ov_conv(hint, model=model, x=x, conv_flops=conv_flops):
                # float32 arithmetic asked for: OpenVINO's default is bf16 where the CPU has it
                req = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint,
                                                        "INFERENCE_NUM_THREADS": so.intra_op_num_threads}
                                         ).create_infer_request()
                req.infer({0: x})  # warm-up
                return conv_flops / _best_of(lambda: req.infer({0: x}), part) / 1e9

            rates["openvino"] = ov_conv("f32")
        for k, v in rates.items():
            by_runtime[k] = max(by_runtime.get(k, 0.0), v)
        convs.append({"layer": layer.name, "conv": _conv_text(layer, conv_side), "gflop_per_run": conv_flops / 1e9,
                      "best_s": t_conv, "gflops_by_runtime": rates, "ov_conv": ov_conv if has_ov else None})
    top = max(convs, key=lambda d: max(d["gflops_by_runtime"].values()))
    bf16 = top["ov_conv"]("bf16") if has_bf16 else None  # the peak of `--precision bf16`'s arithmetic, apart
    best = max(by_runtime, key=by_runtime.get)
    return {"matmul_gflops": 2 * matmul_n ** 3 / t_mm / 1e9, "matmul_n": matmul_n, "matmul_best_s": t_mm,
            "conv3d_gflops": by_runtime[best], "conv3d_runtime": best, "conv3d_gflops_by_runtime": by_runtime,
            "conv3d_bf16_gflops": bf16,
            "conv3d_best_s": top["best_s"],
            "conv3d_layer": top["layer"],
            "conv3d": top["conv"],
            "conv3d_gflop_per_run": top["gflop_per_run"],
            "conv3d_measured": [{k: v for k, v in d.items() if k != "ov_conv"} for d in convs],
            "threads": so.intra_op_num_threads,
            "blas_threads": _blas_threads(), "seconds": time.perf_counter() - t0}


def _conv_text(layer: Layer, side: int) -> str:
    stride = "" if layer.stride == (1, 1, 1) else f" stride {'x'.join(map(str, layer.stride))}"
    return f"{layer.cin}->{layer.cout} {'x'.join(map(str, layer.kernel))}{stride} on {side}^3"


def merge_peaks(peaks: list[dict]) -> dict:
    """Several `peak` measurements of one run -> one: each GFLOP/s figure the highest measured (on a
    shared machine a transient load only lowers a measurement, and a low peak would inflate every
    achieved/peak share), the conv3d peak the faster runtime's of the merged figures; the
    measurements themselves under ``"measurements"`` (matmul, conv3d by runtime, bf16)."""
    if not peaks:
        raise ConfigError("merge_peaks needs at least one peak measurement")
    out = dict(peaks[-1])
    out["matmul_gflops"] = max(p["matmul_gflops"] for p in peaks)
    by = {}
    for p in peaks:
        for k, v in p["conv3d_gflops_by_runtime"].items():
            by[k] = max(by.get(k, 0.0), v)
    out["conv3d_gflops_by_runtime"] = by
    out["conv3d_runtime"] = max(by, key=by.get)
    out["conv3d_gflops"] = by[out["conv3d_runtime"]]
    top = max(peaks, key=lambda p: max(p["conv3d_gflops_by_runtime"].values()))
    for k in ("conv3d", "conv3d_layer", "conv3d_gflop_per_run", "conv3d_best_s"):  # the Conv the peak was measured on
        if k in top:
            out[k] = top[k]
    bf = [p["conv3d_bf16_gflops"] for p in peaks if p.get("conv3d_bf16_gflops")]
    out["conv3d_bf16_gflops"] = max(bf) if bf else None
    out["seconds"] = sum(p["seconds"] for p in peaks)
    out["measurements"] = [{"matmul_gflops": p["matmul_gflops"],
                             "conv3d_gflops_by_runtime": p["conv3d_gflops_by_runtime"],
                             "conv3d_bf16_gflops": p.get("conv3d_bf16_gflops")} for p in peaks]
    return out


def accounting(done_flops: float, needed_flops: float, seconds: float, peak: dict) -> dict:
    """Achieved FLOP/s of a dense pass that ran ``done_flops`` (needing ``needed_flops``) in
    ``seconds``, against `peak`'s matmul and conv3d GFLOP/s."""
    if seconds <= 0:
        raise ConfigError(f"seconds must be > 0, got {seconds!r}")
    done_rate, need_rate = done_flops / seconds / 1e9, needed_flops / seconds / 1e9
    mm, cv = peak["matmul_gflops"], peak["conv3d_gflops"]
    return {"gflop_done": done_flops / 1e9, "gflop_needed": needed_flops / 1e9,
            "needed_over_done": needed_flops / done_flops if done_flops else float("nan"), "seconds": seconds,
            "gflops_done": done_rate, "gflops_needed": need_rate,
            "done_over_matmul_peak": done_rate / mm, "done_over_conv3d_peak": done_rate / cv,
            "needed_over_matmul_peak": need_rate / mm, "needed_over_conv3d_peak": need_rate / cv}


def patch_graph_flops(path, input_shape) -> int:
    """Convolution FLOPs (2 per multiply-add) of one run of an ONNX graph on one input of
    ``input_shape`` (e.g. a patch graph's (1, C, 41, 41, 41)), from ONNX shape inference: for each
    Conv node, 2 x output elements x (Cin / group) x prod(kernel). Pooling, activations and the
    final reshape count 0, as in `region_flops`."""
    return int(sum(conv_flops_by_node(path, input_shape).values()))


def conv_flops_by_node(path, input_shape) -> dict[str, int]:
    """`patch_graph_flops` per Conv node (by node name)."""
    import onnx
    from onnx import shape_inference

    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if not inputs:
        raise ConfigError(f"{Path(path).name}: no graph input")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != len(input_shape):
        raise ConfigError(f"{Path(path).name}: input has {len(dims)} dimensions, shape {tuple(input_shape)} given")
    for d, v in zip(dims, input_shape):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    m = shape_inference.infer_shapes(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    weights = {i.name: list(i.dims) for i in m.graph.initializer}
    out_flops = {}
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        w = weights.get(n.input[1])
        out = shapes.get(n.output[0])
        if w is None or not out or 0 in out:
            raise ConfigError(f"{Path(path).name}: cannot size Conv {n.name!r} (weights or output shape unknown)")
        out_flops[n.name or n.output[0]] = 2 * int(np.prod(out)) * int(np.prod(w[1:]))
    return out_flops
