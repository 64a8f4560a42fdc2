"""runtime speed settings (kdlib.train.Speed): channels_last and bf16 autocast change the layout or the
precision, not the result beyond rounding; on CPU the default is plain fp32 and compile is refused."""
import pytest
import torch

from kdlib.config import AugmentConfig, ScheduleConfig
from kdlib.models import build_model
from kdlib.train import Speed, fit
from tests.helpers.methods import build


def test_speed_on_cpu_is_plain_fp32_and_compile_is_refused():
    assert Speed.for_device(torch.device("cpu")) == Speed()
    with pytest.raises(ValueError, match="runtime.compile: true needs a CUDA device"):
        Speed.for_device(torch.device("cpu"), compile=True)


def fit_tiny(tiny_ds, speed):
    """One epoch of KD for resnet8 on the tiny data set from fixed teacher logits, with `speed`."""
    torch.manual_seed(0)
    model = build_model("resnet8", tiny_ds.num_classes, tiny_ds.num_channels, tiny_ds.image_size)
    teacher = torch.randn(len(tiny_ds.x_train), tiny_ds.num_classes, generator=torch.Generator().manual_seed(1))
    result = fit(
        model, build("kd"), tiny_ds, ScheduleConfig(epochs=1, batch_size=16, lr=0.05), 0, AugmentConfig(),
        teacher_views=lambda epoch, idx: teacher[idx], log=lambda _: None, speed=speed,
    )
    return model, result.history[0]


def test_channels_last_changes_the_layout_not_the_result(tiny_ds):
    plain, plain_record = fit_tiny(tiny_ds, Speed())
    nhwc, nhwc_record = fit_tiny(tiny_ds, Speed(channels_last=True))
    assert nhwc.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for (name, a), b in zip(plain.state_dict().items(), nhwc.state_dict().values()):
        torch.testing.assert_close(b.contiguous(), a, rtol=1e-4, atol=1e-5, msg=name)
    assert nhwc_record["loss"] == pytest.approx(plain_record["loss"], rel=1e-5)


def test_bf16_autocast_runs_the_forward_in_bfloat16(tiny_ds):
    plain, plain_record = fit_tiny(tiny_ds, Speed())
    bf16, bf16_record = fit_tiny(tiny_ds, Speed(bf16=True))
    # the weights stay float32 (autocast casts per op); the losses move by bfloat16 rounding
    # (8 mantissa bits: ~0.4% per op), so they differ from fp32 but not by more than a few percent
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert bf16_record["loss"] != plain_record["loss"]
    assert bf16_record["loss"] == pytest.approx(plain_record["loss"], rel=0.03)
