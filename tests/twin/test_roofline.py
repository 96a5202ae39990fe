"""The roofline step-time model and the KV capacity, against DESIGN.md section 8."""

from __future__ import annotations

import pytest

from thunder_middleware.twin import (
    GPUS,
    MODELS,
    BatchShape,
    EngineConfig,
    EngineCore,
    EngineRequest,
    get_gpu,
    get_model,
    num_blocks_for,
    roofline_for,
)


def decode_batch(batch: int, context: int) -> BatchShape:
    shape = BatchShape()
    for _ in range(batch):
        shape.add(context - 1, 1, sampled=True)
    return shape


def prefill(tokens: int, prefix: int = 0) -> BatchShape:
    shape = BatchShape()
    shape.add(prefix, tokens, sampled=True)
    return shape


def test_kv_bytes_per_token_match_the_model_cards() -> None:
    assert get_model("qwen3-8b").kv_bytes_per_token == 147_456
    assert get_model("llama-3.1-8b").kv_bytes_per_token == 131_072
    moe = get_model("qwen3-235b-a22b")
    assert moe.kv_bytes_per_token == 192_512
    assert moe.tensor_parallel == 8
    assert moe.kv_bytes_per_token_per_gpu == 192_512 // 4  # 1 of 4 KV heads per GPU


@pytest.mark.parametrize("model", ["qwen3-8b", "llama-3.1-8b"])
def test_8b_decode_at_batch_1_reads_about_15_gb_in_4_5_to_5_ms(model: str) -> None:
    ideal = roofline_for("h100", model, calibrated=False)
    cost = ideal.explain(decode_batch(1, 1))
    assert 14.5e9 < cost.bytes_weights < 15.5e9
    h100 = get_gpu("h100")
    assert 4.4e-3 < cost.bytes_weights / h100.hbm_bandwidth_peak < 4.7e-3
    assert 4.8e-3 < cost.bytes_weights / h100.hbm_bandwidth < 5.1e-3
    assert cost.bound == "memory"


def test_calibration_adds_the_published_corrections() -> None:
    ideal = roofline_for("h100", "qwen3-8b", calibrated=False)
    real = roofline_for("h100", "qwen3-8b")
    batch = decode_batch(8, 4096)
    a, b = ideal.explain(batch), real.explain(batch)
    assert b.bytes_weights == pytest.approx(1.4 * a.bytes_weights)
    assert b.bytes_kv_read_decode == pytest.approx(1.9 * a.bytes_kv_read_decode)
    assert b.overhead_s == pytest.approx(126e-6 + 36 * 32e-6 + 8 * 4e-6)
    assert a.overhead_s == 0.0
    assert 7e-3 < real.step_time(decode_batch(1, 4096)) < 10e-3


def test_8k_prefill_is_compute_bound_and_decode_is_memory_bound() -> None:
    model = roofline_for("h100", "qwen3-8b")
    cost = model.explain(prefill(8192))
    assert cost.bound == "compute"
    assert 0.10 < cost.total_s < 0.30  # ~134 TFLOP at ~790 TFLOP/s
    assert model.explain(decode_batch(64, 4096)).bound == "memory"


@pytest.mark.parametrize("gpu", sorted(GPUS))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_step_time_is_monotone_in_batch_and_context(gpu: str, model: str) -> None:
    roofline = roofline_for(gpu, model)
    by_batch = [roofline.step_time(decode_batch(b, 2048)) for b in (1, 2, 4, 16, 64, 256)]
    assert by_batch == sorted(by_batch) and by_batch[0] < by_batch[-1]
    by_context = [roofline.step_time(decode_batch(16, c)) for c in (128, 1024, 8192, 65536)]
    assert by_context == sorted(by_context) and by_context[0] < by_context[-1]
    by_chunk = [roofline.step_time(prefill(n)) for n in (16, 512, 2048, 8192)]
    assert by_chunk == sorted(by_chunk)
    # a prefill chunk after a long cached prefix costs more than the same chunk alone
    assert roofline.step_time(prefill(2048, prefix=30_000)) > roofline.step_time(prefill(2048))


def test_a100_is_slower_than_h100() -> None:
    for model in MODELS:
        for shape in (decode_batch(1, 1024), decode_batch(64, 4096), prefill(8192)):
            assert roofline_for("a100", model).step_time(shape) > roofline_for(
                "h100", model
            ).step_time(shape)


def test_moe_reads_more_experts_as_the_batch_grows() -> None:
    moe = roofline_for("h100", "qwen3-235b-a22b", calibrated=False)
    one, many, huge = moe.weight_bytes(1), moe.weight_bytes(64), moe.weight_bytes(8192)
    assert one < many < huge
    assert huge == pytest.approx(235e9 * 2 / 8, rel=0.01)  # every expert, 1/8 per GPU
    assert moe.explain(decode_batch(1, 1)).allreduce_s > 0


def test_block_count_from_memory_left_after_weights() -> None:
    blocks = num_blocks_for("h100", "qwen3-8b")
    tokens = blocks * 16
    assert 300_000 < tokens < 450_000  # ~53 GiB of KV at 144 KiB per token
    assert num_blocks_for("h100", "qwen3-8b", 0.5) < blocks
    assert num_blocks_for("h100", "qwen3-8b", block_size=32) == pytest.approx(blocks / 2, abs=1)
    assert num_blocks_for("h100", "qwen3-235b-a22b") > 0
    with pytest.raises(ValueError, match="no room"):
        num_blocks_for("h100", "qwen3-235b-a22b", 0.7)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="a100, h100"):
        get_gpu("h200")
    with pytest.raises(ValueError, match=r"llama-3\.1-8b, qwen3-235b-a22b, qwen3-8b"):
        roofline_for("h100", "gpt-5")
    with pytest.raises(ValueError, match="valid names"):
        num_blocks_for("tpu", "qwen3-8b")


def test_engine_steps_take_roofline_time() -> None:
    roofline = roofline_for("h100", "qwen3-8b")
    engine = EngineCore(EngineConfig(num_blocks=1000, block_size=16, step_model=roofline))
    engine.add_request(EngineRequest("a", list(range(1, 8193)), 2))
    first = engine.step()
    assert first.duration_s == pytest.approx(roofline.step_time(prefill(8192)))
    second = engine.step()
    assert second.duration_s == pytest.approx(roofline.step_time(decode_batch(1, 8193)))
