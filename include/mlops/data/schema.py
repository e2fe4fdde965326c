"""The transactions table: columns, types, categorical vocabularies and the label.

One definition shared by the generator, the expectation suite's reference
checks, the feature encoder (training, evaluation, serving).
"""

from __future__ import annotations

ID_COLUMN = "transaction_id"
TIME_COLUMN = "event_ts"
LABEL_COLUMN = "is_fraud"

# numeric feature -> (pandas dtype, inclusive valid range)
NUMERIC_FEATURES: dict[str, tuple[str, tuple[float, float]]] = {
    "amount": ("float64", (0.0, 50_000.0)),
    "customer_age": ("int64", (18, 100)),
    "account_age_days": ("int64", (0, 20_000)),
    "tx_count_24h": ("int64", (0, 500)),
    "distance_from_home_km": ("float64", (0.0, 20_000.0)),
    "hour_of_day": ("int64", (0, 23)),
}

BOOLEAN_FEATURES: tuple[str, ...] = ("card_present", "is_online")

CATEGORICAL_FEATURES: dict[str, tuple[str, ...]] = {
    "merchant_category": (
        "grocery",
        "fuel",
        "restaurant",
        "travel",
        "electronics",
        "fashion",
        "gaming",
        "health",
        "utilities",
        "cash_withdrawal",
    ),
    "channel": ("pos", "web", "app", "atm"),
    "country": ("DE", "FR", "ES", "IT", "NL", "PL", "GB", "US", "OTHER"),
}

COLUMNS: tuple[str, ...] = (
    ID_COLUMN,
    TIME_COLUMN,
    *NUMERIC_FEATURES,
    *BOOLEAN_FEATURES,
    *CATEGORICAL_FEATURES,
    LABEL_COLUMN,
)

FEATURE_NAMES: tuple[str, ...] = (
    *NUMERIC_FEATURES,
    *BOOLEAN_FEATURES,
    *(f"{col}={val}" for col, vocab in CATEGORICAL_FEATURES.items() for val in vocab),
)
N_FEATURES = len(FEATURE_NAMES)
