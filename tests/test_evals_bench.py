"""`medsam3-agent bench` on real shared images: every number is measured and written (timings are not asserted)."""

from __future__ import annotations

import json

from agent.cli import main as cli_main


def test_bench_measures_and_writes_json(data_root, segmenter, tmp_path, capsys):
    for part in ("encoder", "gate", "draw", "box"):  # converted and cached (the first use converts them)
        segmenter.backend.runtime_of(part)
    out = tmp_path / "bench.json"
    # one dataset's folder keeps --dice short: one val case, scored by both paths
    argv = ["bench", "--data", str(data_root / "kvasir_seg"), "--images", "1", "--questions", "1", "--dice", "1",
            "--volume-slices", "2"]  # kvasir holds no volume: two drawn slices through segment_volume
    assert cli_main([*argv, "--out", str(out)]) == 0
    numbers = json.loads(out.read_text(encoding="utf-8"))
    assert numbers["images"] == 1 and numbers["backend"] == "medsam3-lite"
    # building the facade without PyTorch can take under a millisecond: a load time of 0.0 is a measurement
    for key in ("model_load_s", "model_ready_s"):
        assert isinstance(numbers[key], float) and numbers[key] >= 0, key
    for key in ("volume_s_per_100_slices",
                "encoder_ms_per_image", "decoder_ms_per_prompt", "eval_direct_images_per_s",
                "peak_rss_mb", "enc_ref_ms_median", "enc_fast_ms_median", "enc_ref_ms_p90", "dec_fast_ms_median",
                "enc_speedup", "fresh_load_s", "fresh_question_s", "fresh_peak_rss_mb"):
        assert isinstance(numbers[key], float) and numbers[key] > 0, key
    # a new process, the session's parts cached by now: the fast runtime alone, no PyTorch
    assert numbers["fresh_imported_torch"] is (numbers["encoder_runtime"] == "torch")
    assert numbers["volume_slices"] == 2 and numbers["volume_source"] == "drawn"
    assert numbers["model_ready_s"] >= numbers["model_load_s"]
    [row] = numbers["dice"]
    assert row["dataset"] == "kvasir_seg" and row["cases"] == 1 and 0 <= row["dice_reference"] <= 1
    assert abs(row["delta"] - (row["dice_fast"] - row["dice_reference"])) < 1e-3
    # the agent is measured when agent.Agent exists, otherwise the JSON says why not
    assert (numbers["agent_s_per_question"] or 0) > 0 or "not importable" in numbers["agent_note"]
    printed = capsys.readouterr().out
    assert "encoder ms / image (median)" in printed and str(out) in printed
    assert "volume s / 100 slices" in printed and "2 slices timed, scaled to 100" in printed
    assert "new process: peak RSS (MB)" in printed and "vs reference (PyTorch)" in printed
    assert "Dice, fast vs reference path (1 cases)" in printed


def test_bench_refuses_a_missing_data_root(tmp_path, capsys):
    assert cli_main(["bench", "--data", str(tmp_path / "nowhere")]) == 2
    assert "no data root" in capsys.readouterr().err
