"""benchmarks/gpu_summary.py: issue 18's goals judged from what benchmarks/gpu_server.sh wrote."""

from benchmarks.gpu_summary import evaluate_goals, read_loads


def _load(size, clients, throughput=50.0, p99=20.0, codes=None, missing_retry_after=0):
    return {"size": size, "clients": clients, "format": "jpeg", "throughput": throughput, "ok": 100,
            "latency_ms": {"p50": p99 / 2, "p99": p99}, "codes": codes or {"200": 100},
            "busy_without_retry_after": missing_retry_after}


RAW = {"network": {"sizes": {"1024": {"network": {"gpu_ms": {"median": 1.2}, "wall_ms": {"median": 1.4}}}}},
       "pipeline": {"sizes": {"1024": {"best_images_per_s": 50.0, "threads": {"16": {"images_per_s": 40.0}}}}}}


def verdicts(raw, loads):
    return [g["verdict"] for g in evaluate_goals(raw, loads)]


def test_all_goals_met():
    loads = [_load(1024, 1, throughput=60, p99=25), _load(1024, 16, throughput=45),
             _load(1024, 64, codes={"200": 90, "503": 40})]
    goals = evaluate_goals(RAW, loads)
    assert [g["verdict"] for g in goals] == ["met"] * 4
    assert goals[0]["timer"] == "cuda events" and goals[0]["ms"] == 1.2  # the GPU's time, not the wall clock
    assert goals[1]["ratio"] == 45 / 50  # against the raw pipeline's best thread count
    assert goals[3]["busy_503"] == 40


def test_each_goal_can_fail():
    raw = {**RAW, "network": {"sizes": {"1024": {"network": {"gpu_ms": {"median": 2.6}}}}}}
    loads = [_load(1024, 1, p99=31), _load(1024, 16, throughput=42)]
    assert verdicts(raw, loads)[:3] == ["NOT met"] * 3


def test_any_5xx_but_503_or_a_503_without_retry_after_fails():
    for bad in ({"codes": {"200": 10, "504": 1}}, {"codes": {"200": 10, "500": 1}}, {"codes": {"200": 10, "-1": 1}},
                {"codes": {"200": 10, "503": 3}, "missing_retry_after": 1}):
        goal = evaluate_goals(RAW, [_load(512, 64, **bad)])[3]
        assert goal["verdict"] == "NOT met" and goal["errors"], bad


def test_missing_measurements_are_not_measured_never_met(tmp_path):
    # A QUICK run (512 px only) or a run whose phases failed: nothing at 1024 px, no load at all.
    assert verdicts({}, []) == ["not measured"] * 4
    assert verdicts({"pipeline": {"sizes": {"512": {"best_images_per_s": 9.0}}}}, [_load(512, 4)])[:3] == \
        ["not measured"] * 3
    path = tmp_path / "load.jsonl"
    path.write_text('{"size": 512, "clients": 1}\n{"size": 512, "cli')  # a line cut by a killed run
    assert read_loads(path) == [{"size": 512, "clients": 1}]


def test_the_server_profile_is_summarized_by_frame_and_by_the_projects_frames(tmp_path):
    from benchmarks.gpu_summary import profile_table

    path = tmp_path / "server_profile.txt"
    path.write_text("\n".join([
        "<module> (server/__main__.py:25);run (server/inference.py:400);decode (PIL/Image.py:10) 30",
        "<module> (server/__main__.py:25);run (server/inference.py:400);launch (torch/nn.py:5) 50",
        "select (selectors.py:468) 20",
        "garbage line",
    ]))
    lines = profile_table(path)
    text = "\n".join(lines)
    assert "100 samples" in text
    assert "| 50.0 | launch (torch/nn.py:5) |" in text and "| 20.0 | select (selectors.py:468) |" in text
    # The project's frames count each sample once however deep: 80 of 100 ran inside the worker's run().
    assert "| 80.0 | run (server/inference.py:400) |" in text
    assert lines.index("| 50.0 | launch (torch/nn.py:5) |") < lines.index("| 30.0 | decode (PIL/Image.py:10) |")
    (tmp_path / "empty.txt").write_text("")
    assert profile_table(tmp_path / "empty.txt") == []
