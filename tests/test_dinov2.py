"""FD_DINOv2: torch-fidelity's DINOv2 extractor fed a ViT-S/14 from a local weights file, with the network cut."""
import pytest
import torch

from scorelab.core.errors import UserError
from scorelab.metrics import FeatureStats, SampleEvaluator
from scorelab.metrics.dinov2 import DinoV2Features, interpolate_position_embedding


@pytest.fixture(scope="module")
def dinov2_weights(tmp_path_factory):
    """A weights file in the released format (518-pixel position embeddings, a mask token), random values."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 384)
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return path


def test_dinov2_loads_a_local_weights_file_with_the_network_unreachable(offline, dinov2_weights):
    ex = DinoV2Features(weights_path=dinov2_weights)
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    features = ex(images)
    assert features.shape == (3, 384) and features.dtype == torch.float32 and torch.isfinite(features).all()
    torch.testing.assert_close(features, ex(images.expand(-1, 3, -1, -1)))  # gray is RGB with three equal channels
    assert ex.extractor_id.startswith("dinov2-vit-s-14-224:") and ex.metric_name == "fd_dinov2"
    # the same images through the evaluator: FD_DINOv2 of a set against itself is 0, precision and recall 1
    many = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ref = FeatureStats.from_features(ex(many), keep_features=40, extractor_id=ex.extractor_id,
                                     preprocessing=ex.preprocessing)
    ev = SampleEvaluator(ex, ref, kid_subsets=2, kid_subset_size=20)
    ev.update(many)
    result = ev.compute()
    assert abs(result["fd_dinov2"]) < 1e-6 and result["precision_dinov2"] == result["recall_dinov2"] == 1.0


def test_without_weights_or_network_the_message_names_both_ways_out(offline):
    with pytest.raises(UserError, match="feature_extractor_weights_path=<file>"):
        DinoV2Features()
    with pytest.raises(UserError, match="does not exist"):
        DinoV2Features(weights_path="/nonexistent/dinov2.pth")


def test_a_file_that_is_not_dinov2_weights_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="does not hold DINOv2 vit-s-14 weights"):
        DinoV2Features(weights_path=path)


def test_position_embeddings_follow_dinov2s_interpolation():
    """DINOv2's interpolate_pos_encoding: bicubic, scale (16 + 0.1) / 37, the class token untouched."""
    pos = torch.randn(1, 1 + 37 * 37, 8, generator=torch.Generator().manual_seed(2))
    out = interpolate_position_embedding(pos)
    assert out.shape == (1, 257, 8)
    torch.testing.assert_close(out[:, :1], pos[:, :1])
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic")
    torch.testing.assert_close(out[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 256, 8))
    constant = torch.ones(1, 1 + 37 * 37, 4)
    torch.testing.assert_close(interpolate_position_embedding(constant), torch.ones(1, 257, 4))
