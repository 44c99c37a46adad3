"""The epoch's value classes, one module per part of the configuration (clusters,
routes, TLS, listeners, the epoch itself) and the wire form. Import them from
:mod:`proxyd.epoch`, which re-exports every one."""
