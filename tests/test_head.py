"""The detection head after the camera branch: shapes, MIT's state-dict layout, seeded weights, box targets and
decoding on hand-made maps, and the head graph's ONNX Runtime parity."""

from __future__ import annotations

import math
from dataclasses import replace

import onnx
import pytest
import torch

from bevnb.config import CLASS_NAMES, R50
from bevnb.model.box_coder import (
    BoxCoder,
    TaskTargets,
    centerhead_loss,
    decode,
    encode_targets,
    find_peaks,
    gaussian_radius,
)
from bevnb.model.head import (
    MIT_WIDTHS,
    NUSCENES_TASKS,
    SMALL_WIDTHS,
    DetectionHead,
    HeadConfig,
    build_head,
    select_tasks,
)
from bevnb.scene import random_scene
from bevnb.subclass import HEAD_FILE, head_io, head_io_shapes

CAR, PEDESTRIAN = CLASS_NAMES.index("car"), CLASS_NAMES.index("pedestrian")
HEADS = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}


@pytest.fixture(scope="module")
def head():
    return build_head(seed=0)


def test_head_maps_have_the_bev_size_and_the_task_channels(head):
    bev = torch.relu(torch.randn(1, 80, 180, 180, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        out = head(bev)
    assert len(out) == 2
    for maps in out:
        assert {k: list(v.shape) for k, v in maps.items()} == {
            **{k: [1, c, 180, 180] for k, c in HEADS.items()},
            "heatmap": [1, 1, 180, 180],
        }
        assert all(torch.isfinite(v).all() for v in maps.values())
    assert SMALL_WIDTHS.output_size((180, 180)) == (180, 180) and SMALL_WIDTHS.output_size((128, 64)) == (128, 64)
    with torch.no_grad():  # the decoder's intermediate sizes: strides 2, 2, 1, then the neck back to 90 and ×2
        stages = head.decoder["backbone"](bev)
        assert [list(s.shape) for s in stages] == [[1, 32, 90, 90], [1, 64, 45, 45], [1, 128, 45, 45]]
        assert list(head.decoder["neck"](stages).shape) == [1, 64, 180, 180]


def _mmdet3d_state_shapes(in_channels: int, blocks, neck: int, share: int, head_conv: int, tasks) -> dict:
    """The parameter and buffer shapes of MIT BEVFusion's camera-only decoder and CenterHead, written from mmcv's
    BasicBlock / make_res_layer, mmdet3d's LSSFPN and CenterHead/SeparateHead (ConvModule = conv + bn)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    c_in = in_channels
    for s, (num, c, stride) in enumerate(blocks):
        for b in range(num):
            p = f"decoder.backbone.{s}.{b}"
            shapes[f"{p}.conv1.weight"] = (c, c_in if b == 0 else c, 3, 3)
            bn(f"{p}.bn1", c)
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            bn(f"{p}.bn2", c)
            if b == 0 and (stride != 1 or c_in != c):
                shapes[f"{p}.downsample.0.weight"] = (c, c_in, 1, 1)
                bn(f"{p}.downsample.1", c)
        c_in = c
    shapes["decoder.neck.fuse.0.weight"] = (neck, blocks[-1][1] + blocks[0][1], 1, 1)
    bn("decoder.neck.fuse.1", neck)
    shapes["decoder.neck.fuse.3.weight"] = (neck, neck, 3, 3)
    bn("decoder.neck.fuse.4", neck)
    shapes["decoder.neck.upsample.1.weight"] = (neck, neck, 3, 3)
    bn("decoder.neck.upsample.2", neck)
    shapes["heads.object.shared_conv.conv.weight"] = (share, neck, 3, 3)
    bn("heads.object.shared_conv.bn", share)
    for t, classes in enumerate(tasks):
        for name, c in {**HEADS, "heatmap": len(classes)}.items():
            p = f"heads.object.task_heads.{t}.{name}"
            shapes[f"{p}.0.conv.weight"] = (head_conv, share, 3, 3)
            bn(f"{p}.0.bn", head_conv)
            shapes[f"{p}.1.weight"] = (c, head_conv, 3, 3)
            shapes[f"{p}.1.bias"] = (c,)
    return shapes


def test_state_dict_keys_are_mit_bevfusions_layout():
    expected = _mmdet3d_state_shapes(
        80, [(2, 128, 2), (2, 256, 2), (2, 512, 1)], 256, 64, 64, [["car"], ["pedestrian"]]
    )
    state = DetectionHead(MIT_WIDTHS).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert list(state) == list(expected)  # mmdet3d's registration order too
    small = DetectionHead(SMALL_WIDTHS).state_dict()
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in small} == {
        "decoder.backbone",
        "decoder.neck",
        "heads.object",
    }
    assert set(small) == set(expected)  # narrower, same keys


def test_an_mit_checkpoints_decoder_and_head_load_into_the_two_tasks():
    shapes = _mmdet3d_state_shapes(80, [(2, 128, 2), (2, 256, 2), (2, 512, 1)], 256, 64, 64, NUSCENES_TASKS)
    g = torch.Generator().manual_seed(0)
    mit = {k: torch.randn(s, generator=g) for k, s in shapes.items()} | {"encoders.camera.backbone.conv1.weight": 0}
    head = DetectionHead(MIT_WIDTHS)
    head.load_state_dict(select_tasks(mit, MIT_WIDTHS.tasks), strict=True)
    state = head.state_dict()
    assert torch.equal(state["decoder.neck.fuse.0.weight"], mit["decoder.neck.fuse.0.weight"])
    assert torch.equal(state["heads.object.task_heads.0.reg.1.weight"], mit["heads.object.task_heads.0.reg.1.weight"])
    assert torch.equal(
        state["heads.object.task_heads.1.dim.0.conv.weight"], mit["heads.object.task_heads.5.dim.0.conv.weight"]
    )
    # pedestrian is the first class of MIT's [pedestrian, traffic_cone] task: row 0 of its heatmap conv
    assert torch.equal(
        state["heads.object.task_heads.1.heatmap.1.bias"], mit["heads.object.task_heads.5.heatmap.1.bias"][:1]
    )
    with pytest.raises(ValueError, match=r"task \['car', 'pedestrian'\] must take all its classes from one"):
        select_tasks(mit, (("car", "pedestrian"),))


def test_default_weights_are_seeded_and_the_heatmap_prior_is_mits():
    state, again = (
        build_head(seed=0, bev_size=(48, 48)).state_dict(),
        build_head(seed=0, bev_size=(48, 48)).state_dict(),
    )
    other = build_head(seed=1, bev_size=(48, 48)).state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(state["decoder.backbone.0.0.conv1.weight"], other["decoder.backbone.0.0.conv1.weight"])
    for t in range(2):
        assert torch.all(state[f"heads.object.task_heads.{t}.heatmap.1.bias"] == -2.19)
        assert torch.all(state[f"heads.object.task_heads.{t}.reg.1.bias"] == 0)
    assert state["decoder.neck.fuse.1.num_batches_tracked"] == 0


def _maps(coder: BoxCoder, fill: dict[str, list[float]], cells: list[tuple[int, int]], logit: float = 3.0) -> dict:
    """One task's maps ``[1, c, X, Y]``: heatmap logits −10 except ``logit`` at ``cells``, every other map ``fill``
    at those cells."""
    X, Y = coder.map_size
    maps = {"heatmap": torch.full((1, 1, X, Y), -10.0)}
    for name, values in fill.items():
        maps[name] = torch.zeros(1, len(values), X, Y)
    for i, j in cells:
        maps["heatmap"][0, 0, i, j] = logit
        for name, values in fill.items():
            maps[name][0, :, i, j] = torch.tensor(values)
    return maps


FILL = {
    "reg": [0.25, 0.75],
    "height": [0.8],
    "dim": [math.log(4.0), math.log(2.0), math.log(1.5)],
    "rot": [math.sin(0.3), math.cos(0.3)],
    "vel": [1.0, -2.0],
}


def test_a_peak_at_a_known_cell_decodes_to_a_box_at_known_metres():
    coder = BoxCoder.for_config(R50)
    assert coder.cell_size == pytest.approx((0.6, 0.6)) and coder.map_size == (180, 180)
    cars = _maps(coder, FILL, [(100, 50)])
    pedestrians = _maps(coder, FILL, [(10, 170)], logit=0.0)
    (found,) = decode([cars, pedestrians], coder)
    # cell (100, 50) + offset (0.25, 0.75) → x = -54 + 100.25·0.6, y = -54 + 50.75·0.6; z = 0.8 - 1.5 / 2
    car = [6.15, -23.55, 0.05, 4.0, 2.0, 1.5, 0.3, 1.0, -2.0]
    pedestrian = [-54 + 10.25 * 0.6, -54 + 170.75 * 0.6, 0.05, 4.0, 2.0, 1.5, 0.3, 1.0, -2.0]
    torch.testing.assert_close(found["boxes"], torch.tensor([car, pedestrian]), rtol=0, atol=2e-5)
    torch.testing.assert_close(found["scores"], torch.tensor([torch.sigmoid(torch.tensor(3.0)), 0.5]))
    assert found["labels"].tolist() == [CAR, PEDESTRIAN]


def test_decoding_keeps_local_maxima_above_the_threshold_inside_the_range():
    coder = BoxCoder.for_config(R50)
    heat = torch.full((1, 1, 8, 8), 0.05)
    heat[0, 0, 2, 2], heat[0, 0, 2, 3], heat[0, 0, 6, 6] = 0.9, 0.8, 0.7  # (2, 3) is beside a higher peak
    scores, channels, cells = find_peaks(heat, 3)
    assert cells[0, :2].tolist() == [2 * 8 + 2, 6 * 8 + 6] and scores[0, :2].tolist() == pytest.approx([0.9, 0.7])
    assert channels.tolist() == [[0, 0, 0]]
    # below the threshold (sigmoid(-2.5) = 0.076 < 0.1) and a centre 20 m above the range are dropped
    maps = _maps(coder, FILL, [(30, 30), (60, 60), (90, 90)])
    maps["heatmap"][0, 0, 60, 60] = -2.5
    maps["height"][0, 0, 90, 90] = 20.0
    (found,) = decode([maps], BoxCoder.for_config(R50, head=HeadConfig(tasks=(("car",),))))
    assert found["boxes"][:, :2].flatten().tolist() == pytest.approx([-54 + 30.25 * 0.6, -54 + 30.75 * 0.6])
    assert len(decode([maps], BoxCoder.for_config(R50, head=HeadConfig(tasks=(("car",),)), max_num=1))[0]["boxes"]) == 1


def test_targets_are_gaussians_with_mmdet3ds_radius():
    coder = BoxCoder.for_config(R50)
    # CenterNet's radius as mmdet3d computes it (the smallest of its three roots), for overlap 0.1: a car of
    # 7.5 × 3 cells gets 1.98 → min_radius 2, a 12 × 2.5 m truck-sized box (20 × 4.17 cells) 3.57 → 3
    assert gaussian_radius(torch.tensor([7.5, 3.0])).item() == pytest.approx(1.98356, abs=1e-5)
    assert gaussian_radius(torch.tensor([20.0, 2.5 / 0.6])).item() == pytest.approx(3.5700, abs=1e-4)
    boxes = torch.tensor([[0.1, 0.1, -1.8, 12.0, 2.5, 3.0, 0.0], [6.1, 6.1, -1.8, 0.6, 0.6, 1.7, 0.0]])
    car, pedestrian = encode_targets(boxes, torch.tensor([CAR, PEDESTRIAN]), coder)
    # x = 0.1 m → cell 90.1666 → row 90; the Gaussian has sigma (2·3 + 1) / 6
    assert car.indices.tolist() == [90 * 180 + 90] and pedestrian.indices.tolist() == [100 * 180 + 100]
    assert car.heatmap[0, 90, 90] == 1 and car.heatmap[0, 90, 93] == pytest.approx(math.exp(-9 / (2 * (7 / 6) ** 2)))
    assert car.heatmap[0, 90, 94] == 0 and car.heatmap.count_nonzero() == 7 * 7
    assert pedestrian.heatmap.count_nonzero() == 5 * 5  # min_radius 2 for a 1-cell pedestrian
    torch.testing.assert_close(
        car.boxes,
        torch.tensor([[0.1 / 0.6, 0.1 / 0.6, -0.3, math.log(12.0), math.log(2.5), math.log(3.0), 0, 1, 0, 0]]),
    )


def _perfect_maps(boxes: torch.Tensor, labels: torch.Tensor, coder: BoxCoder) -> list[dict]:
    """The maps a perfect head would output: the target heatmaps as logits, the box targets at their cells."""
    X, Y = coder.map_size
    outputs = []
    for targets in encode_targets(boxes, labels, coder):
        maps = {"heatmap": torch.logit(targets.heatmap.clamp(1e-4, 1 - 1e-4))[None]}
        dense = torch.zeros(10, X * Y)
        dense[:, targets.indices] = targets.boxes.T
        for name, part in zip(HEADS, dense.view(1, 10, X, Y).split(list(HEADS.values()), dim=1), strict=True):
            maps[name] = part
        outputs.append(maps)
    return outputs


@pytest.mark.parametrize("rig", ["nuscenes", "five_camera"])
def test_encoding_then_decoding_gives_the_boxes_back(rig, five_rig):
    config = R50 if rig == "nuscenes" else five_rig.config
    coder = BoxCoder.for_config(config)
    scene = random_scene(3, rig=None if rig == "nuscenes" else five_rig)
    inside = (scene.boxes[:, 0].abs() < 38) & (scene.boxes[:, 1] > -12) if rig == "five_camera" else slice(None)
    boxes, labels = scene.boxes[inside], scene.labels[inside]
    hand_made = torch.tensor([[-53.9, 53.9, -1.0, 2.0, 1.0, 1.0, 3.1, 0.5, -0.5]])  # in a corner cell, with velocity
    if rig == "nuscenes":
        boxes, labels = torch.cat((torch.nn.functional.pad(boxes, (0, 2)), hand_made)), torch.cat((labels, labels[:1]))
    (found,) = decode(_perfect_maps(boxes, labels, coder), coder)
    assert len(found["boxes"]) == len(boxes) >= 8
    order = torch.cdist(boxes[:, :2], found["boxes"][:, :2]).argmin(dim=1)
    assert sorted(order.tolist()) == list(range(len(boxes)))
    got = found["boxes"][order]
    wrapped = torch.remainder(got[:, 6] - boxes[:, 6] + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(got[:, :6], boxes[:, :6], rtol=0, atol=1e-4)
    assert wrapped.abs().max() < 1e-5
    torch.testing.assert_close(got[:, 7:], torch.nn.functional.pad(boxes, (0, 9 - boxes.shape[1]))[:, 7:])
    assert torch.equal(found["labels"][order], labels)


def test_the_loss_is_mmdet3ds_focal_and_weighted_l1():
    # a 4×4 heatmap at p = 0.5 with one peak: every cell costs -log(0.5)·0.5² (the peak as a positive, the others
    # as negatives with (1 - 0)^4 = 1), divided by one peak
    maps = {name: torch.zeros(1, c, 4, 4) for name, c in HEADS.items()} | {"heatmap": torch.zeros(1, 1, 4, 4)}
    target = TaskTargets(torch.zeros(1, 4, 4), torch.zeros(0, 10), torch.zeros(0, dtype=torch.int64))
    target.heatmap[0, 1, 2] = 1
    losses = centerhead_loss([maps], [[target]])
    assert losses["heatmap/task0"].item() == pytest.approx(16 * math.log(2) * 0.25, rel=1e-6)
    assert losses["bbox/task0"].item() == 0
    # perfect maps: no box loss; reg off by 0.5 and velocity off by 1 (code weight 0.2): 0.25 · (0.5 + 2·0.2) a box
    coder = BoxCoder.for_config(R50)
    scene = random_scene(0)
    targets = encode_targets(scene.boxes, scene.labels, coder)
    outputs = _perfect_maps(scene.boxes, scene.labels, coder)
    assert all(v.item() == 0 for k, v in centerhead_loss(outputs, [targets]).items() if k.startswith("bbox"))
    for maps in outputs:
        maps["reg"][:, 0] += 0.5
        maps["vel"] += 1.0
    outputs = [{k: v.expand(2, -1, -1, -1) for k, v in maps.items()} for maps in outputs]
    losses = centerhead_loss(outputs, [targets, targets])  # a batch of two
    for t, m in enumerate(len(t.boxes) for t in targets):
        assert losses[f"bbox/task{t}"].item() == pytest.approx(0.25 * 2 * m * 0.9 / (2 * m + 1e-4), rel=1e-5)
    # gradients reach the head's last layers (on a 9.6 m grid, so that the backward pass is quick)
    small = BoxCoder.for_config(replace(R50, xbound=(-9.6, 9.6, 0.3), ybound=(-9.6, 9.6, 0.3)))
    targets = encode_targets(torch.tensor([[1.0, 2.0, -1.8, 4.5, 1.9, 1.6, 0.3]]), torch.tensor([CAR]), small)
    head = build_head(bev_size=(32, 32)).train()
    sum(centerhead_loss(head(torch.rand(1, 80, 32, 32)), [targets]).values()).backward()
    assert head.heads["object"].task_heads[1].heatmap[1].weight.grad.abs().sum() > 0


def test_the_coder_follows_the_rigs_grid(five_rig):
    coder = BoxCoder.for_config(five_rig.config)
    assert coder.map_size == (128, 64) and coder.cell_size == pytest.approx((0.6, 1.2))
    assert coder.pc_range == (-38.4, -12.8) and coder.post_center_range == (-38.4, -12.8, -10.0, 38.4, 64.0, 10.0)
    xy = torch.tensor([[-38.4, -12.8], [0.3, 1.0]])
    torch.testing.assert_close(coder.to_metres(coder.to_cells(xy)), xy)
    assert coder.to_cells(xy)[1].tolist() == pytest.approx([64.5, 11.5])


@pytest.fixture(scope="module")
def head_graph(head, tmp_path_factory):
    from bevnb.export import export_head

    out = tmp_path_factory.mktemp("head_onnx")
    export_head(head, out, verbose=False)
    return out / HEAD_FILE


def test_head_graph_io_names_and_static_shapes(head_graph):
    graph = onnx.load(head_graph)
    onnx.checker.check_model(graph, full_check=True)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*graph.graph.input, *graph.graph.output)
    }
    names = [f"{m}_{t}" for t in (0, 1) for m in ("reg", "height", "dim", "rot", "vel", "heatmap")]
    assert list(shapes) == ["camera_bev", *names] == [*head_io()[0], *head_io()[1]]
    assert shapes == {k: list(v) for k, v in head_io_shapes().items()}
    assert shapes["camera_bev"] == [1, 80, 180, 180] and shapes["heatmap_1"] == [1, 1, 180, 180]
    assert shapes["dim_0"] == [1, 3, 180, 180]
    # BN folded into the convs, resize sizes constant, no TopK/NonZero (the decoding is outside the graph)
    assert {n.op_type for n in graph.graph.node} == {"Conv", "Relu", "Add", "Resize", "Concat"}
    assert sum(n.op_type == "Conv" for n in graph.graph.node) == 15 + 3 + 1 + 2 * 6 * 2
    for node in graph.graph.node:
        if node.op_type == "Resize":
            assert {node.input[-1]} <= {init.name for init in graph.graph.initializer}
    # scope names follow the modules below the ModuleDicts (a ModuleDict adds no scope level)
    assert {n.name.split("/")[1] for n in graph.graph.node if n.name.startswith("/")} == {"backbone", "neck", "object"}


def test_head_graph_onnx_runtime_matches_pytorch(head, head_graph):
    from bevnb.metrics import compare
    from bevnb.pipeline import OnnxGraph

    bev = torch.relu(torch.randn(1, 80, 180, 180, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        reference = [t for maps in head(bev) for t in maps.values()]
    outputs = OnnxGraph(head_graph)(bev)
    assert len(outputs) == len(reference) == 12
    for ref, out in zip(reference, outputs, strict=True):
        m = compare(ref, out)
        assert m["rel"] < 1e-4 and m["cosine"] > 0.999999, m


def test_head_io_follows_the_rig(five_rig):
    shapes = head_io_shapes(five_rig.config, MIT_WIDTHS)
    assert shapes["camera_bev"] == (1, 80, 128, 64) and shapes["heatmap_0"] == (1, 1, 128, 64)
    assert shapes["vel_1"] == (1, 2, 128, 64) and len(shapes) == 13
