"""The provider SDK: what a model's `predict(ctx)` receives and returns.

    from foretell.sdk import Forecast

    def predict(ctx):
        close = ctx.bars("EURUSD", lookback=24).close
        up = close[-1] >= close[0]
        return [Forecast("EURUSD", ctx.target_time, +1 if up else -1, probability=0.6)]

Plain dicts with the same keys work too. Inside the sandbox the SDK talks gRPC over the run's
Unix socket (FORETELL_SOCKET) and nothing else; `python -m foretell.sdk.run` is the runner."""

from foretell.sdk._context import Bars, Context, DataError, Forecast

__all__ = ["Bars", "Context", "DataError", "Forecast"]
