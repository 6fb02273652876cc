"""The reference model of bench/realmodel.py: what a provider writes, not a trivial one.

The last 48 hourly bars as a pandas frame, lagged returns as features, a scikit-learn logistic
regression fitted on them, and the probability that the next bar closes up."""

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from foretell.sdk import Forecast

LAGS = 3


def predict(ctx):
    out = []
    for symbol in ctx.symbols:
        frame = ctx.frame(symbol, lookback=48)
        returns = frame["close"].pct_change().dropna()
        features = pd.concat({f"lag{k}": returns.shift(k) for k in range(1, LAGS + 1)}, axis=1)
        data = features.assign(up=(returns > 0).astype(int)).dropna()
        if data["up"].nunique() < 2:
            continue
        model = LogisticRegression().fit(data.drop(columns="up").to_numpy(), data["up"])
        latest = np.array([[returns.iloc[-k] for k in range(1, LAGS + 1)]])
        p_up = float(model.predict_proba(latest)[0, 1])
        direction = "up" if p_up >= 0.5 else "down"
        out.append(Forecast(symbol, ctx.target_time, direction, probability=max(p_up, 1 - p_up)))
    return out
