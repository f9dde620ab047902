"""Bundle glue lives in the ``maht_net`` package (``maht_net.engine.bundle``, ``maht_net.engine.handlers``,
``maht_net.datasets.pipeline``, ``maht_net.inference.predictor``), which the configs import; the bundle keeps no copy."""
