"""The demo catalog `foretell up` sets up in the background: three models of different
shapes, each a valid bundle, one giving probabilities and predicted returns."""

from __future__ import annotations

import datetime
import math
import tempfile
import types
from pathlib import Path

from foretell.bundle import pack_dir
from foretell.bundle import scaffold as _scaffold
from foretell.demo import DEMO_MODELS, DemoModel


def test_three_models_of_different_shapes() -> None:
    assert len(DEMO_MODELS) == 3
    assert len({spec.name for spec in DEMO_MODELS}) == 3
    shapes = {
        (spec.symbol, spec.manifest.resolution, spec.manifest.horizon) for spec in DEMO_MODELS
    }
    assert shapes == {("EURUSD", "1h", 1), ("GOOG", "1d", 1), ("EURUSD", "1h", 4)}
    # Plans with and without a trial.
    assert {spec.trial_days > 0 for spec in DEMO_MODELS} == {True, False}
    for spec in DEMO_MODELS:
        assert spec.fields["visibility"] == "public"
        assert list(spec.fields["symbols"]) == list(spec.manifest.symbols)
        assert spec.fields["resolution"] == spec.manifest.resolution
        assert spec.fields["horizon"] == spec.manifest.horizon


def _bundle(spec: DemoModel, folder: Path) -> None:
    _scaffold.write(folder, spec.name, spec.manifest, pushes_by_folder=False)
    if spec.code is not None:
        (folder / "model.py").write_text(spec.code)


def test_each_is_a_bundle_that_predicts() -> None:
    as_of = datetime.datetime(2018, 1, 10, 12, tzinfo=datetime.UTC)
    for spec in DEMO_MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            _bundle(spec, folder)
            assert pack_dir(folder).digest.startswith("sha256:")
            namespace: dict[str, object] = {"__name__": "demo_model"}
            exec(compile((folder / "model.py").read_text(), "model.py", "exec"), namespace)  # noqa: S102
        lookback = spec.manifest.lookback
        closes = [1.1 + 0.01 * math.sin(i / 5) for i in range(lookback)]
        ctx = types.SimpleNamespace(
            symbols=list(spec.manifest.symbols),
            as_of=as_of,
            target_time=as_of + datetime.timedelta(hours=spec.manifest.horizon),
            bars=lambda _symbol, lookback, closes=closes: types.SimpleNamespace(
                close=closes[-lookback:]
            ),
        )
        predict = namespace["predict"]
        assert callable(predict)
        forecasts = predict(ctx)
        assert len(forecasts) == 1
        assert 0.5 <= forecasts[0]["probability"] <= 1.0
        if spec.name == "demo-eurusd-reversion":
            assert isinstance(forecasts[0]["predicted_return"], float)
