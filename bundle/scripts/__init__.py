"""Bundle glue lives in the ``maht_net`` package (``maht_net.bundle_support``, ``maht_net.engine``,
``maht_net.data``, ``maht_net.inference``), which the configs import; the bundle keeps no copy."""
