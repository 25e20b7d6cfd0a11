"""Provider wire protocols: each module offers `PROVIDER`, a `base.Provider`."""
